"""Reading a model folder as untrusted input: each file's reader and its checks (:func:`mfvc_gpu.persistence.read_model`
puts them together).

``model.json`` is checked entry by entry against the table of settings; ``weights.pt`` and ``map.pt`` are read
only as zips of tensors (``torch.load(weights_only=True)``) that must fit the networks described; ``arrays.npz``
is read without unpickling and its shapes checked. Anything else is one :class:`MFVCError`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import MFVCError
from .settings import ClusterConfig, ManifoldConfig, TrainConfig, VAEConfig

FORMAT_VERSION = 3  # 3: map.pt and the sample
READS = (2, 3)  # 2: models saved before the learned map (they use UMAP's transform)
K_SEARCH_KEYS = {"criterion", "chosen", "runner_up", "seconds", "sample", "scores"}  # and "favourites", newer

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


class Bad(Exception):
    """One problem in model.json: the message says which entry and why."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def settings_of(meta: dict) -> tuple[dict, VAEConfig, TrainConfig, ManifoldConfig, ClusterConfig]:
    """The parameters and the four stage configs, checked by the same table checks a fit uses."""
    from .resolution import check_params

    sections = {"vae": VAEConfig, "train": TrainConfig, "manifold": ManifoldConfig, "cluster": ClusterConfig}
    for section in ("params", *sections):
        if not isinstance(meta[section], dict):
            raise Bad(f"{section!r} is a {type(meta[section]).__name__}, not a mapping")
    try:
        check_params(meta["params"])
    except MFVCError as exc:
        raise Bad(f"params: {exc}") from None
    configs = []
    for section, cls in sections.items():
        try:
            configs.append(cls(**meta[section]))
        except TypeError as exc:  # an entry the dataclass does not have, or one it lacks
            raise Bad(f"{section}: {str(exc).split('() ')[-1]}") from None
        except MFVCError as exc:
            raise Bad(f"{section}: {exc}") from None
    return meta["params"], *configs


def _check_meta(meta: dict) -> None:
    """Refuse a model.json that was edited into something this version did not write."""
    from .params import BY_NAME

    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise Bad(f"missing {', '.join(repr(k) for k in missing)}")
    unknown = [k for k in meta if k not in META_KEYS]
    if unknown:
        raise Bad(f"unknown entry {unknown[0]!r}")
    for key, setting in (("profile", "profile"), ("backend", "backend"), ("seed", "random_state")):
        try:
            if meta[key] is None or meta[key] == "auto":
                raise MFVCError(f"{key}={meta[key]!r} is not a resolved value")
            BY_NAME[setting].check(meta[key])
        except MFVCError as exc:
            raise Bad(str(exc)) from None
    if not isinstance(meta["device"], str):
        raise Bad(f"device={meta['device']!r} is not a string")
    if not (_is_int(meta["n_clusters_used"]) and meta["n_clusters_used"] >= 1):
        raise Bad(f"n_clusters_used={meta['n_clusters_used']!r} is not an integer >= 1")
    ks = meta["k_search"]
    if ks is not None and not (
        isinstance(ks, dict)
        and _is_int(ks.get("chosen"))
        and isinstance(ks.get("scores"), list)
        and K_SEARCH_KEYS <= set(ks) <= K_SEARCH_KEYS | {"favourites"}
    ):
        raise Bad("k_search is neither null nor a K search record")
    timings = meta["timings"]
    if not isinstance(timings, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in timings.items()):
        raise Bad("'timings' is not a mapping of stage names to seconds")
    history = meta["history"]
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and all(isinstance(k, str) and _is_number(v) for k, v in h.items()) for h in history
    ):
        raise Bad("'history' is not a list of per-epoch records of numbers")


def read_meta(path: Path) -> dict:
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
    if version not in READS:
        raise MFVCError(
            f"{path} has the old model format {version} (this version reads {', '.join(map(str, READS))}); "
            "refused: fit the model again to save it in this format"
        )
    if version == 2 and isinstance(meta.get("manifold"), dict):  # before the learned map: UMAP's own transform
        meta["manifold"].setdefault("out_of_sample", "umap")
        if isinstance(meta.get("params"), dict):
            meta["params"].setdefault("out_of_sample", "umap")
    try:
        _check_meta(meta)
    except Bad as exc:
        raise MFVCError(f"{meta_file} was not written by this mfvc_gpu or was edited: {exc}; refused") from None
    return meta


DAMAGED = "the model folder is damaged or was not written by mfvc_gpu; refused"


def _read_state(file: Path) -> dict:
    """A state dict from ``file``: a zip of tensors read with ``weights_only=True`` (a pickle that names any
    other object, e.g. ``os.system``, is refused before anything runs), every float finite."""
    import zipfile

    import torch

    what = DAMAGED
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
    return state


def load_weights(file: Path, vae_config):
    """The network from ``weights.pt`` (:func:`_read_state`), which must fit the network model.json describes."""
    from .models import BetaVAE

    state, what = _read_state(file), DAMAGED
    model = BetaVAE(vae_config)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0]
        raise MFVCError(f"{file} does not fit the network that model.json describes ({first}); {what}") from exc
    return model


def load_map(file: Path, latent_dim: int, n_components: int):
    """The learned map from ``map.pt`` (:func:`_read_state`): codes of ``latent_dim`` in, ``n_components`` out."""
    from .embedding_map import EmbeddingMap

    try:
        m = EmbeddingMap.from_state(_read_state(file))
    except MFVCError as exc:
        raise MFVCError(f"{file}: {exc}; {DAMAGED}") from None
    if (m.in_dim, m.out_dim) != (latent_dim, n_components):
        raise MFVCError(
            f"{file} maps {m.in_dim} to {m.out_dim} numbers, but the codes have {latent_dim} and the "
            f"embedding {n_components}; {DAMAGED}"
        )
    return m


def load_arrays(file: Path, meta: dict) -> dict[str, np.ndarray]:
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
    allowed = {"latent", "embedding", "labels", "kmeans_centres", "sample"} | {
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
    sample = arrays.get("sample")
    if sample is not None and (
        sample.ndim != 1
        or sample.dtype.kind not in "iu"
        or len(sample) < 2
        or not (np.diff(sample) > 0).all()
        or sample[0] < 0
        or sample[-1] >= len(z)
    ):
        raise MFVCError(f"{file}: the sample {sample.shape} is not a sorted set of rows of the {len(z)} codes; {what}")
    centres = arrays.get("kmeans_centres")
    if centres is not None and (centres.ndim != 2 or centres.shape[1] != emb.shape[1] or len(centres) == 0):
        raise MFVCError(f"{file}: K-Means centres {centres.shape} do not fit the embedding {emb.shape}; {what}")
    return arrays


def expect(file: Path, wanted: bool, why: str, why_not: str) -> None:
    """Refuse a model folder that lacks a file model.json describes, or holds one it does not."""
    if wanted and not file.is_file():
        raise MFVCError(f"{file.parent} has no {file.name}, yet {why}; the model folder is incomplete")
    if not wanted and file.exists():
        raise MFVCError(f"{file.parent} has a {file.name}, yet {why_not}; the model folder was edited; refused")


__all__ = [
    "FORMAT_VERSION",
    "READS",
    "Bad",
    "read_meta",
    "settings_of",
    "load_weights",
    "load_map",
    "load_arrays",
    "expect",
]
