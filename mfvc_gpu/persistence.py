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
from .fileio import atomic_path, make_dirs, publish_dir, temp_name, write_json

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
    """Write ``est`` to folder ``path``: built under a temporary name, then renamed into place."""
    import torch

    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est, "labels_")
    path = Path(path)
    make_dirs(path.parent)
    tmp = temp_name(path)
    make_dirs(tmp)
    try:
        if est.model_ is not None:
            with atomic_path(tmp / "weights.pt") as f:
                torch.save(est.model_.state_dict(), f)
        with atomic_path(tmp / "arrays.npz") as f, open(f, "wb") as fh:
            np.savez(fh, latent=est.latent_, embedding=est.embedding_, labels=est.labels_, **cluster_state(est.cluster_model_))
        write_json(tmp / "model.json", dict(
            format_version=FORMAT_VERSION,
            params={k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in est.resolved_params().items()},
            vae=asdict(est.vae_config_), train=asdict(est.train_config_),
            manifold=asdict(est.manifold_config_), cluster=asdict(est.cluster_config_),
            profile=est.profile_, backend=est.backend_, device=est.device_, seed=est.seed_,
            timings=est.timings_, history=est.history_,
        ))
        publish_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful publish
    return path


def _read_meta(path: Path) -> dict:
    meta_file = path / "model.json"
    if not meta_file.is_file():
        raise MFVCError(f"{path} is not a saved MFVC model (no model.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise MFVCError(f"{meta_file} cannot be read ({exc}); the model folder is damaged") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise MFVCError(f"{path} has model format version {version!r}; this version of mfvc_gpu reads {FORMAT_VERSION}")
    return meta


def load(cls, path: str | os.PathLike, device: str = "auto", backend: str = "auto"):
    """Load a folder written by :func:`save` onto ``device`` / ``backend`` (resolved as for ``fit``)."""
    import torch

    from .models import BetaVAE, VAEConfig
    from .train import TrainConfig

    path = Path(path)
    meta = _read_meta(path)
    try:
        params = dict(meta["params"], device=device, backend=backend, checkpoint=None, resume=False)
        est = cls(**params)
        est.vae_config_, est.train_config_ = VAEConfig(**meta["vae"]), TrainConfig(**meta["train"])
        est.manifold_config_, est.cluster_config_ = ManifoldConfig(**meta["manifold"]), ClusterConfig(**meta["cluster"])
        est.profile_, est.seed_ = meta["profile"], int(meta["seed"])
        est.timings_, est.history_ = meta["timings"], meta["history"]
    except (KeyError, TypeError, ValueError) as exc:
        raise MFVCError(f"{path / 'model.json'} does not describe an MFVC model ({type(exc).__name__}: {exc})") from exc
    placement = backends.resolve(device, backend)
    est.backend_, est.device_, est.placement_note_ = placement.backend, placement.device, placement.note
    est._backend = backends.get_backend(placement.backend)
    est.model_ = None
    if (path / "weights.pt").exists():
        try:
            state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
            est.model_ = BetaVAE(est.vae_config_)
            est.model_.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - any unreadable or foreign file is refused whole
            raise MFVCError(f"{path / 'weights.pt'} cannot be loaded as this model's weights ({type(exc).__name__}); "
                            "the model folder is damaged or was not written by mfvc_gpu") from exc
        est.model_.to(placement.device).eval()
    try:
        with np.load(path / "arrays.npz", allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        est.latent_, est.embedding_, est.labels_ = arrays.pop("latent"), arrays.pop("embedding"), arrays.pop("labels")
    except (OSError, ValueError, KeyError) as exc:
        raise MFVCError(f"{path / 'arrays.npz'} cannot be read ({exc}); the model folder is damaged") from exc
    est.cluster_model_ = cluster_from_state(est._backend, est.cluster_config_, arrays, est.seed_)
    est.manifold_model_ = None  # rebuilt on first use by a new point (rebuild_manifold)
    if est.model_ is None:
        est.n_features_in_ = est.latent_.shape[1]
    est.handoff_ = {}
    return est


__all__ = ["save", "load", "row_index", "cluster_state", "cluster_from_state", "rebuild_manifold", "FORMAT_VERSION"]
