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
*new* point must be transformed; that refit costs what the original manifold stage cost (about
a minute for UMAP on 70k codes on a 2-core CPU, seconds on a GPU). Training points never need it:
they keep the coordinates the fit gave them.

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
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import backends
from .config import ClusterConfig, ManifoldConfig
from .errors import MFVCError
from .fileio import FileSystemError, atomic_path, make_dirs, publish_dir, temp_name, write_json, write_torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 2


def row_index(reference: np.ndarray, rows: np.ndarray, rtol: float = 1e-4) -> np.ndarray:
    """For each row of ``rows``, the index of the row of ``reference`` it equals, or -1.

    "Equals" allows float noise: the encoder's kernels differ with the batch size, so the same
    image encoded in another batch differs in the last bits. A row matches its nearest reference
    row when every coordinate is within ``rtol`` × the spread of the reference codes.
    """
    from sklearn.neighbors import NearestNeighbors

    reference = np.ascontiguousarray(reference, dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != reference.shape[1] or len(reference) == 0 or len(rows) == 0:
        return np.full(len(rows), -1, dtype=np.int64)
    nearest = NearestNeighbors(n_neighbors=1).fit(reference).kneighbors(rows, return_distance=False)[:, 0]
    atol = rtol * max(1.0, float(reference.std()))
    hit = np.abs(reference[nearest] - rows).max(axis=1) <= atol
    return np.where(hit, nearest, -1).astype(np.int64)


def cluster_state(model) -> dict[str, np.ndarray]:
    """The arrays that let the fitted clusterer label new points (empty for DBSCAN)."""
    model = getattr(model, "model", model)  # the rapids backend's OnHost wrapper
    if hasattr(model, "cluster_centers_"):
        c = model.cluster_centers_
        return {"kmeans_centres": np.asarray(c.get() if hasattr(c, "get") else c, dtype=np.float32)}
    if hasattr(model, "means_"):
        return {f"gmm_{k}": np.asarray(getattr(model, f"{k}_")) for k in ("weights", "means", "covariances", "precisions_cholesky")}
    return {}


def cluster_from_state(backend, cfg: ClusterConfig, state: dict[str, np.ndarray], seed: int):
    """The fitted clusterer back from :func:`cluster_state`, on ``backend``."""
    if "kmeans_centres" in state:
        return backend.kmeans_from_centres(state["kmeans_centres"], seed)
    if "gmm_means" in state:
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(n_components=len(state["gmm_means"]), random_state=seed)
        for k in ("weights", "means", "covariances", "precisions_cholesky"):
            setattr(gm, f"{k}_", state[f"gmm_{k}"])
        gm.converged_, gm.n_iter_ = True, 0
        if backend.name == "rapids":
            from .backends.rapids import OnHost

            return OnHost(gm)
        return gm
    return None  # DBSCAN: no predict for new points


def rebuild_manifold(est) -> None:
    """Refit the manifold model on the saved codes with the saved seed, once, when a new point needs it."""
    if getattr(est, "manifold_model_", None) is not None or est.manifold_config_.method == "none":
        return
    b = est._backend
    log.info("rebuilding the %s model from the %d saved latent codes", est.manifold_config_.method, len(est.latent_))
    est.manifold_model_, _ = b.fit_manifold(b.handoff(est.latent_), est.manifold_config_, est._n_components(), est.seed_)


def save(est, path: str | os.PathLike) -> Path:
    """Write ``est`` to folder ``path``: built under a temporary name, then renamed into place
    (an existing model folder is replaced only by the finished new one)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est, "labels_")
    path = Path(path)
    make_dirs(path.parent)
    tmp = temp_name(path)
    if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    make_dirs(tmp)
    try:
        if est.model_ is not None:
            write_torch(tmp / "weights.pt", est.model_.state_dict())
        with atomic_path(tmp / "arrays.npz") as f, open(f, "wb") as fh:
            np.savez(fh, latent=est.latent_, embedding=est.embedding_, labels=est.labels_, **cluster_state(est.cluster_model_))
        write_json(tmp / "model.json", dict(
            format_version=FORMAT_VERSION,
            params={k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in est.resolved_params().items()},
            vae=asdict(est.vae_config_), train=asdict(est.train_config_),
            manifold=asdict(est.manifold_config_), cluster=asdict(est.cluster_config_),
            profile=est.profile_, backend=est.backend_, device=est.device_, seed=est.seed_,
            n_clusters_used=int(est.n_clusters_), k_search=est.k_search_.to_dict() if est.k_search_ else None,
            timings=est.timings_, history=est.history_,
        ))
        publish_dir(tmp, path)
    except FileSystemError as exc:  # name the model folder, not its temporary name
        raise FileSystemError(str(exc).replace(str(tmp), str(path)), exc.path, exc.errno) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful publish
    return path


# ---------------------------------------------------------------- reading an untrusted folder
MAX_JSON_BYTES = 64 << 20  # model.json holds settings and a per-epoch history: far below this
META_KEYS = ("format_version", "params", "vae", "train", "manifold", "cluster", "profile", "backend", "device",
             "seed", "n_clusters_used", "k_search", "timings", "history")


class _Bad(Exception):
    """One problem in model.json: the message says which entry and why."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_params(params) -> dict:
    from .params import BY_NAME, ESTIMATOR_PARAMS

    if not isinstance(params, dict):
        raise _Bad(f"'params' is a {type(params).__name__}, not a mapping")
    known = {p.name for p in ESTIMATOR_PARAMS}
    for key, value in params.items():
        if key not in known:
            raise _Bad(f"unknown setting {key!r} in 'params'")
        if key == "random_state":
            if value is not None and not (_is_int(value) and value >= 0):
                raise _Bad(f"params.random_state={value!r} is not a seed (an integer >= 0)")
        elif key in ("device", "checkpoint"):
            if value is not None and not isinstance(value, str):
                raise _Bad(f"params.{key}={value!r} is not a string")
        elif key in ("resume", "progress"):
            if not isinstance(value, bool):
                raise _Bad(f"params.{key}={value!r} is not true or false")
        else:
            try:
                BY_NAME[key].check(value)
            except MFVCError as exc:
                raise _Bad(f"params: {exc}") from None
    return params


def _check_stage(meta: dict, section: str, cls) -> dict:
    """``meta[section]`` as keyword arguments of the stage dataclass ``cls``, every value checked."""
    import dataclasses

    from .params import PARAMS

    values = meta[section]
    if not isinstance(values, dict):
        raise _Bad(f"{section!r} is a {type(values).__name__}, not a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    by_field = {p.field_name: p for p in PARAMS if p.field_name in fields and
                p.stage == {"vae": "network"}.get(section, section)}
    for key, value in values.items():
        if key not in fields:
            raise _Bad(f"unknown entry {key!r} in {section!r}")
        param = by_field.get(key)
        if param is not None:
            try:
                param.check(value)
            except MFVCError as exc:
                raise _Bad(f"{section}: {exc}") from None
        else:  # a field that is not a setting (the input shape of the network)
            default = fields[key].default
            if _is_int(default) and not (_is_int(value) and 1 <= value <= 4096):
                raise _Bad(f"{section}.{key}={value!r} is not an integer in [1, 4096]")
            if isinstance(default, str) and not isinstance(value, str):
                raise _Bad(f"{section}.{key}={value!r} is not a string")
    return values


def _check_meta(meta: dict) -> None:
    """Refuse a model.json that was edited into something this version did not write."""
    from .config import PROFILES

    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise _Bad(f"missing {', '.join(repr(k) for k in missing)}")
    unknown = [k for k in meta if k not in META_KEYS]
    if unknown:
        raise _Bad(f"unknown entry {unknown[0]!r}")
    _check_params(meta["params"])
    if meta["profile"] not in PROFILES:
        raise _Bad(f"profile={meta['profile']!r} is not one of {', '.join(PROFILES)}")
    if meta["backend"] not in ("cpu", "rapids"):
        raise _Bad(f"backend={meta['backend']!r} is not cpu or rapids")
    if not isinstance(meta["device"], str):
        raise _Bad(f"device={meta['device']!r} is not a string")
    if not (_is_int(meta["seed"]) and meta["seed"] >= 0):
        raise _Bad(f"seed={meta['seed']!r} is not an integer >= 0")
    if not (_is_int(meta["n_clusters_used"]) and meta["n_clusters_used"] >= 1):
        raise _Bad(f"n_clusters_used={meta['n_clusters_used']!r} is not an integer >= 1")
    ks = meta["k_search"]
    if ks is not None and not (isinstance(ks, dict) and _is_int(ks.get("chosen")) and isinstance(ks.get("scores"), list)
                               and set(ks) == {"criterion", "chosen", "runner_up", "seconds", "sample", "scores"}):
        raise _Bad("k_search is neither null nor a K search record")
    timings = meta["timings"]
    if not isinstance(timings, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in timings.items()):
        raise _Bad("'timings' is not a mapping of stage names to seconds")
    history = meta["history"]
    if not isinstance(history, list) or not all(
            isinstance(h, dict) and all(isinstance(k, str) and _is_number(v) for k, v in h.items()) for h in history):
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
        raise MFVCError(f"{meta_file} holds a JSON {type(meta).__name__}, not a model description; the model folder is damaged")
    version = meta.get("format_version")
    if not _is_int(version):
        raise MFVCError(f"{meta_file} has no valid format_version ({version!r}): it was not written by mfvc_gpu or was "
                        "edited; refused")
    if version > FORMAT_VERSION:
        raise MFVCError(f"{path} was written by a newer mfvc_gpu (model format {version}; this version reads "
                        f"{FORMAT_VERSION}); refused: upgrade mfvc_gpu to load it")
    if version != FORMAT_VERSION:
        raise MFVCError(f"{path} has the old model format {version} (this version reads {FORMAT_VERSION}); refused: "
                        "fit the model again to save it in this format")
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
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
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
    allowed = {"latent", "embedding", "labels", "kmeans_centres"} | {f"gmm_{k}" for k in ("weights", "means", "covariances",
                                                                                          "precisions_cholesky")}
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
    if z.ndim != 2 or emb.ndim != 2 or lab.ndim != 1 or not (len(z) == len(emb) == len(lab)) or lab.dtype.kind not in "iu":
        raise MFVCError(f"{file}: latent {z.shape}, embedding {emb.shape} and labels {lab.shape} do not match; {what}")
    if meta["params"].get("encoder", "vae") == "vae" and z.shape[1] != meta["vae"].get("latent_dim", z.shape[1]):
        raise MFVCError(f"{file}: codes of size {z.shape[1]}, but model.json says latent_dim={meta['vae']['latent_dim']}; {what}")
    centres = arrays.get("kmeans_centres")
    if centres is not None and (centres.ndim != 2 or centres.shape[1] != emb.shape[1] or len(centres) == 0):
        raise MFVCError(f"{file}: K-Means centres {centres.shape} do not fit the embedding {emb.shape}; {what}")
    return arrays


def load(cls, path: str | os.PathLike, device: str = "auto", backend: str = "auto"):
    """Load a folder written by :func:`save` onto ``device`` / ``backend`` (resolved as for ``fit``).

    Everything is read as data and checked before use: an edited ``model.json`` (unknown entries,
    wrong types, another format version), a truncated or foreign ``weights.pt`` (a pickle payload
    is refused by ``weights_only=True`` without running) or a damaged ``arrays.npz`` is refused
    with one :class:`MFVCError`."""
    from .models import VAEConfig
    from .train import TrainConfig

    path = Path(path)
    meta = _read_meta(path)
    try:
        vae = VAEConfig(**_check_stage(meta, "vae", VAEConfig))
        train = TrainConfig(**_check_stage(meta, "train", TrainConfig))
        manifold = ManifoldConfig(**_check_stage(meta, "manifold", ManifoldConfig))
        cluster = ClusterConfig(**_check_stage(meta, "cluster", ClusterConfig))
        params = dict(meta["params"], device=device, backend=backend, checkpoint=None, resume=False)
        est = cls(**params)
    except (_Bad, TypeError, ValueError) as exc:
        raise MFVCError(f"{path / 'model.json'} was not written by this mfvc_gpu or was edited: {exc}; refused") from None
    est.vae_config_, est.train_config_ = vae, train
    est.manifold_config_, est.cluster_config_ = manifold, cluster
    est.profile_, est.seed_ = meta["profile"], int(meta["seed"])
    est.n_clusters_ = int(meta["n_clusters_used"])
    est.k_search_ = None
    if meta["k_search"] is not None:
        from .choose_k import KSearch

        est.k_search_ = KSearch(**meta["k_search"])
    est.timings_, est.history_ = meta["timings"], meta["history"]
    weights = path / "weights.pt"
    wants_network = meta["params"].get("encoder", "vae") == "vae"
    if wants_network and not weights.is_file():
        raise MFVCError(f"{path} has no weights.pt, yet model.json describes a trained network; the model folder is incomplete")
    if not wants_network and weights.exists():
        raise MFVCError(f"{path} has a weights.pt, yet model.json says encoder='none'; the model folder was edited; refused")
    arrays = _load_arrays(path / "arrays.npz", meta)
    placement = backends.resolve(device, backend)
    est.backend_, est.device_, est.placement_note_ = placement.backend, placement.device, placement.note
    est._backend = backends.get_backend(placement.backend)
    est.model_ = None
    if wants_network:
        est.model_ = _load_weights(weights, vae)
        est.model_.to(placement.device).eval()
    est.latent_, est.embedding_, est.labels_ = arrays.pop("latent"), arrays.pop("embedding"), arrays.pop("labels")
    est.cluster_model_ = cluster_from_state(est._backend, est.cluster_config_, arrays, est.seed_)
    est.manifold_model_ = None  # rebuilt on first use by a new point (rebuild_manifold)
    if est.model_ is None:
        est.n_features_in_ = est.latent_.shape[1]
    est.handoff_ = {}
    return est


__all__ = ["save", "load", "row_index", "cluster_state", "cluster_from_state", "rebuild_manifold", "FORMAT_VERSION"]
