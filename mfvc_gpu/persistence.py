"""Saving and loading a fitted :class:`~mfvc_gpu.MFVC`: no pickle anywhere.

A model folder holds

* ``model.json``: the format version, the parameters, the resolved stage settings, timings, history;
* ``weights.pt``: the network's state dict (read back with ``torch.load(weights_only=True)``);
* ``arrays.npz``: the training codes, their embedding and labels, and the clustering state
  (K-Means centres, or a Gaussian mixture's weights, means and covariances), read with
  ``allow_pickle=False``.

What ``load`` gives back: the network and the clusterer exactly as fitted, so ``predict`` on the
training images returns ``labels_`` and a new image gets the label the saved model would give.
What it rebuilds: the manifold model (umap-learn's and cuML's UMAP hold nearest-neighbour
indexes that are not saved), refitted on the saved codes with the saved seed the first time a
*new* point must be transformed; that refit costs what the original manifold stage cost
(docs/BENCHMARKS.md). Training points never need it: they keep the coordinates the fit gave them.

A model folder is untrusted input: ``load`` checks every entry of ``model.json`` against the
table of settings (unknown entries, wrong types and other format versions are refused), reads
``weights.pt`` only as a zip of tensors that must fit the described network, and checks the
arrays' types and shapes. Anything else is refused with one :class:`MFVCError`; nothing in the
folder is ever executed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MFVCError
from .fileio import FileSystemError, atomic_path, make_dirs, publish_dir, temp_name, write_json, write_torch
from .settings import ClusterConfig, ManifoldConfig, TrainConfig, VAEConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 2


@dataclass
class SavedModel:
    """What a model folder holds, as plain data: :meth:`mfvc_gpu.MFVC.save` builds one, :func:`read_model`
    gives one back (every entry checked), and :meth:`mfvc_gpu.MFVC.load` builds the estimator from it."""

    params: dict[str, Any]  # the estimator's parameters as the fit ran them (resolved_params)
    vae: VAEConfig
    train: TrainConfig
    manifold: ManifoldConfig
    cluster: ClusterConfig
    profile: str
    backend: str
    device: str
    seed: int
    n_clusters: int
    k_search: Any  # a choose_k.KSearch, or None
    timings: dict[str, float]
    history: list[dict]
    latent: np.ndarray
    embedding: np.ndarray
    labels: np.ndarray
    cluster_state: dict[str, np.ndarray]  # the backend's cluster_state
    network: Any  # the BetaVAE (on the CPU after reading), or None


def write_model(path: str | os.PathLike, m: SavedModel) -> Path:
    """Write ``m`` to folder ``path``: built under a temporary name, then renamed into place
    (an existing model folder is replaced only by the finished new one)."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = temp_name(path)
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    make_dirs(tmp)
    try:
        if m.network is not None:
            write_torch(tmp / "weights.pt", m.network.state_dict())
        with atomic_path(tmp / "arrays.npz") as f, open(f, "wb") as fh:
            np.savez(fh, latent=m.latent, embedding=m.embedding, labels=m.labels, **m.cluster_state)
        write_json(
            tmp / "model.json",
            dict(
                format_version=FORMAT_VERSION,
                params={k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in m.params.items()},
                vae=asdict(m.vae),
                train=asdict(m.train),
                manifold=asdict(m.manifold),
                cluster=asdict(m.cluster),
                profile=m.profile,
                backend=m.backend,
                device=m.device,
                seed=m.seed,
                n_clusters_used=int(m.n_clusters),
                k_search=m.k_search.to_dict() if m.k_search else None,
                timings=m.timings,
                history=m.history,
            ),
        )
        publish_dir(tmp, path)
    except FileSystemError as exc:  # name the model folder, not its temporary name
        raise FileSystemError(str(exc).replace(str(tmp), str(path)), exc.path, exc.errno) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful publish
    return path


# ---------------------------------------------------------------- reading an untrusted folder
MAX_JSON_BYTES = 64 << 20  # model.json holds settings and a per-epoch history: far below this
META_KEYS = (
    "format_version",
    "params",
    "vae",
    "train",
    "manifold",
    "cluster",
    "profile",
    "backend",
    "device",
    "seed",
    "n_clusters_used",
    "k_search",
    "timings",
    "history",
)


class _Bad(Exception):
    """One problem in model.json: the message says which entry and why."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _settings(meta: dict) -> tuple[dict, VAEConfig, TrainConfig, ManifoldConfig, ClusterConfig]:
    """The parameters and the four stage configs, checked by the same table checks a fit uses."""
    from .resolution import check_params

    sections = {"vae": VAEConfig, "train": TrainConfig, "manifold": ManifoldConfig, "cluster": ClusterConfig}
    for section in ("params", *sections):
        if not isinstance(meta[section], dict):
            raise _Bad(f"{section!r} is a {type(meta[section]).__name__}, not a mapping")
    try:
        check_params(meta["params"])
    except MFVCError as exc:
        raise _Bad(f"params: {exc}") from None
    configs = []
    for section, cls in sections.items():
        try:
            configs.append(cls(**meta[section]))
        except TypeError as exc:  # an entry the dataclass does not have, or one it lacks
            raise _Bad(f"{section}: {str(exc).split('() ')[-1]}") from None
        except MFVCError as exc:
            raise _Bad(f"{section}: {exc}") from None
    return meta["params"], *configs


def _check_meta(meta: dict) -> None:
    """Refuse a model.json that was edited into something this version did not write."""
    from .params import BY_NAME

    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise _Bad(f"missing {', '.join(repr(k) for k in missing)}")
    unknown = [k for k in meta if k not in META_KEYS]
    if unknown:
        raise _Bad(f"unknown entry {unknown[0]!r}")
    for key, setting in (("profile", "profile"), ("backend", "backend"), ("seed", "random_state")):
        try:
            if meta[key] is None or meta[key] == "auto":
                raise MFVCError(f"{key}={meta[key]!r} is not a resolved value")
            BY_NAME[setting].check(meta[key])
        except MFVCError as exc:
            raise _Bad(str(exc)) from None
    if not isinstance(meta["device"], str):
        raise _Bad(f"device={meta['device']!r} is not a string")
    if not (_is_int(meta["n_clusters_used"]) and meta["n_clusters_used"] >= 1):
        raise _Bad(f"n_clusters_used={meta['n_clusters_used']!r} is not an integer >= 1")
    ks = meta["k_search"]
    if ks is not None and not (
        isinstance(ks, dict)
        and _is_int(ks.get("chosen"))
        and isinstance(ks.get("scores"), list)
        and set(ks) == {"criterion", "chosen", "runner_up", "seconds", "sample", "scores"}
    ):
        raise _Bad("k_search is neither null nor a K search record")
    timings = meta["timings"]
    if not isinstance(timings, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in timings.items()):
        raise _Bad("'timings' is not a mapping of stage names to seconds")
    history = meta["history"]
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and all(isinstance(k, str) and _is_number(v) for k, v in h.items()) for h in history
    ):
        raise _Bad("'history' is not a list of per-epoch records of numbers")


def _read_meta(path: Path) -> dict:
    meta_file = path / "model.json"
    if not meta_file.is_file():
        raise MFVCError(f"{path} is not a saved MFVC model (no model.json)")
    try:
        if meta_file.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"{meta_file.stat().st_size} bytes, more than a model description holds")
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MFVCError(f"{meta_file} cannot be read ({reason}); the model folder is damaged") from exc
    if not isinstance(meta, dict):
        raise MFVCError(
            f"{meta_file} holds a JSON {type(meta).__name__}, not a model description; the model folder is damaged"
        )
    version = meta.get("format_version")
    if not _is_int(version):
        raise MFVCError(
            f"{meta_file} has no valid format_version ({version!r}): it was not written by mfvc_gpu or was "
            "edited; refused"
        )
    if version > FORMAT_VERSION:
        raise MFVCError(
            f"{path} was written by a newer mfvc_gpu (model format {version}; this version reads "
            f"{FORMAT_VERSION}); refused: upgrade mfvc_gpu to load it"
        )
    if version != FORMAT_VERSION:
        raise MFVCError(
            f"{path} has the old model format {version} (this version reads {FORMAT_VERSION}); refused: "
            "fit the model again to save it in this format"
        )
    try:
        _check_meta(meta)
    except _Bad as exc:
        raise MFVCError(f"{meta_file} was not written by this mfvc_gpu or was edited: {exc}; refused") from None
    return meta


def _load_weights(file: Path, vae_config):
    """The network from ``weights.pt``: a zip of tensors read with ``weights_only=True`` (a pickle that
    names any other object, e.g. ``os.system``, is refused before anything runs), matching the network."""
    import zipfile

    import torch

    from .models import BetaVAE

    what = "the model folder is damaged or was not written by mfvc_gpu; refused"
    if not zipfile.is_zipfile(file):
        raise MFVCError(f"{file} is not a PyTorch weights file (truncated, or another format); {what}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated, corrupt or foreign file is refused whole
        raise MFVCError(f"{file} cannot be loaded as this model's weights ({type(exc).__name__}); {what}") from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise MFVCError(f"{file} does not hold a state dict of tensors; {what}")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise MFVCError(f"{file} holds NaN or infinite weights; {what}")
    model = BetaVAE(vae_config)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0]
        raise MFVCError(f"{file} does not fit the network that model.json describes ({first}); {what}") from exc
    return model


def _load_arrays(file: Path, meta: dict) -> dict[str, np.ndarray]:
    """The arrays of ``arrays.npz``, read without unpickling, with their shapes checked."""
    what = "the model folder is damaged; refused"
    try:
        with np.load(file, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("not an .npz archive")
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, "Object arrays cannot be loaded"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise MFVCError(f"{file} cannot be read ({reason}); {what}") from exc
    allowed = {"latent", "embedding", "labels", "kmeans_centres"} | {
        f"gmm_{k}" for k in ("weights", "means", "covariances", "precisions_cholesky")
    }
    for key in ("latent", "embedding", "labels"):
        if key not in arrays:
            raise MFVCError(f"{file} has no array {key!r}; {what}")
    for key, a in arrays.items():
        if key not in allowed:
            raise MFVCError(f"{file} holds an unknown array {key!r}; {what}")
        if a.dtype.kind not in "biuf":
            raise MFVCError(f"{file}: array {key!r} has type {a.dtype}, not numbers; {what}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise MFVCError(f"{file}: array {key!r} holds NaN or infinite values; {what}")
    z, emb, lab = arrays["latent"], arrays["embedding"], arrays["labels"]
    if (
        z.ndim != 2
        or emb.ndim != 2
        or lab.ndim != 1
        or not (len(z) == len(emb) == len(lab))
        or lab.dtype.kind not in "iu"
    ):
        raise MFVCError(f"{file}: latent {z.shape}, embedding {emb.shape} and labels {lab.shape} do not match; {what}")
    if meta["params"].get("encoder", "vae") == "vae" and z.shape[1] != meta["vae"].get("latent_dim", z.shape[1]):
        raise MFVCError(
            f"{file}: codes of size {z.shape[1]}, but model.json says latent_dim={meta['vae']['latent_dim']}; {what}"
        )
    centres = arrays.get("kmeans_centres")
    if centres is not None and (centres.ndim != 2 or centres.shape[1] != emb.shape[1] or len(centres) == 0):
        raise MFVCError(f"{file}: K-Means centres {centres.shape} do not fit the embedding {emb.shape}; {what}")
    return arrays


def read_model(path: str | os.PathLike) -> SavedModel:
    """Read a folder written by :func:`write_model`, every entry checked before use.

    An edited ``model.json`` (unknown entries, wrong types, another format version), a truncated or
    foreign ``weights.pt`` (a pickle payload is refused by ``weights_only=True`` without running) or a
    damaged ``arrays.npz`` is refused with one :class:`MFVCError`."""
    path = Path(path)
    meta = _read_meta(path)
    try:
        params, vae, train, manifold, cluster = _settings(meta)
    except _Bad as exc:
        raise MFVCError(
            f"{path / 'model.json'} was not written by this mfvc_gpu or was edited: {exc}; refused"
        ) from None
    k_search = None
    if meta["k_search"] is not None:
        from .choose_k import KSearch

        k_search = KSearch(**meta["k_search"])
    weights = path / "weights.pt"
    wants_network = params.get("encoder", "vae") == "vae"
    if wants_network and not weights.is_file():
        raise MFVCError(
            f"{path} has no weights.pt, yet model.json describes a trained network; the model folder is incomplete"
        )
    if not wants_network and weights.exists():
        raise MFVCError(
            f"{path} has a weights.pt, yet model.json says encoder='none'; the model folder was edited; refused"
        )
    arrays = _load_arrays(path / "arrays.npz", meta)
    network = _load_weights(weights, vae) if wants_network else None
    return SavedModel(
        params=params,
        vae=vae,
        train=train,
        manifold=manifold,
        cluster=cluster,
        profile=meta["profile"],
        backend=meta["backend"],
        device=meta["device"],
        seed=int(meta["seed"]),
        n_clusters=int(meta["n_clusters_used"]),
        k_search=k_search,
        timings=meta["timings"],
        history=meta["history"],
        latent=arrays.pop("latent"),
        embedding=arrays.pop("embedding"),
        labels=arrays.pop("labels"),
        cluster_state=arrays,
        network=network,
    )


__all__ = ["SavedModel", "write_model", "read_model", "FORMAT_VERSION"]
