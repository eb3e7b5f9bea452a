"""The stages after the encoder, as plain functions that return records (the estimator alone keeps them).

:func:`run_stages`: handoff → finiteness check → manifold → (choose K) → cluster → the learned map, on one backend,
returning a :class:`Fitted` record; :func:`check_result` refuses a numerically failed fit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import interrupts
from .backends import Backend
from .errors import MFVCError
from .resolution import Resolution, has_map

log = logging.getLogger(__name__)


@dataclass
class Fitted:
    """Everything a fit leaves on the estimator; :meth:`mfvc_gpu.MFVC` sets its attributes from it, and
    ``fit``, ``fit_features``, ``fit_distributed`` and ``load`` all hand it one of these."""

    resolution: Resolution
    backend: Backend
    device: str
    placement_note: str
    model: Any  # the trained BetaVAE, or None (pixels or given features)
    history: list[dict]
    manifold_model: Any
    cluster_model: Any
    latent: np.ndarray
    embedding: np.ndarray
    labels: np.ndarray
    n_clusters: int
    k_search: Any  # a choose_k.KSearch with n_clusters='auto', else None
    timings: dict[str, float]
    handoff: dict
    n_features_in: int | None = None  # feature vectors only (for images it has no meaning)
    distributed: dict | None = None  # the Dask path's record
    embedding_map: Any = None  # the learned map into the manifold's space (embedding_map.EmbeddingMap), or None
    sample: np.ndarray | None = None  # with fit_sample: the rows the stages were fitted on (the rest was labelled)


def encode_codes(model, data: np.ndarray, device):
    """The codes of ``data`` on ``device`` (the network's μ, or the pixels in [0, 1] without a network) and the
    seconds taken (the device synchronised first)."""
    import torch

    from .data.loading import unit_float
    from .train import encode

    t0 = time.perf_counter()
    if model is not None:
        z = encode(model, data, device)
    else:
        z = unit_float(torch.from_numpy(np.ascontiguousarray(data.reshape(len(data), -1))).to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return z, time.perf_counter() - t0


def run_stages(z, res: Resolution, backend: Backend, timings: dict[str, float]) -> dict[str, Any]:
    """Handoff, manifold, (K), cluster on ``backend``; the keyword arguments of :class:`Fitted` they produce.
    Adds each stage's seconds to ``timings``."""
    interrupts.check()  # safe points between the stages: a signal never interrupts a library midway
    t0 = time.perf_counter()
    feats = backend.handoff(z)
    timings["handoff"] = time.perf_counter() - t0
    if not backend.all_finite(feats):
        raise MFVCError("the features contain NaN or infinite values; lower the learning rate or check the input")
    backend.before_manifold(res.params["gpu_memory"], res.placement.device)
    interrupts.check()
    t0 = time.perf_counter()
    manifold_model, emb = backend.fit_manifold(feats, res.manifold, res.n_components, res.seed)
    timings["manifold"] = time.perf_counter() - t0
    k_search = None
    if res.params["n_clusters"] == "auto":
        from .choose_k import search_k

        k_search = search_k(
            np.asarray(backend.to_numpy(emb), dtype=np.float32),
            (res.params["k_min"], res.params["k_max"]),
            seed=res.seed,
        )
        timings["choose_k"] = k_search.seconds
    n_clusters = k_search.chosen if k_search else int(res.params["n_clusters"])
    interrupts.check()
    t0 = time.perf_counter()
    cluster_model, labels = backend.fit_cluster(emb, res.cluster, n_clusters, res.seed)
    timings["cluster"] = time.perf_counter() - t0
    interrupts.check()
    handoff = backend.handoff_record()  # how the codes reached the backend, up to the first labels (before the map)
    embedding_map = None
    if has_map(res.manifold, res.cluster):
        embedding_map, emb, cluster_model, labels = fit_learned_map(feats, emb, cluster_model, res, backend, timings)
    return dict(
        embedding_map=embedding_map,
        handoff=handoff,
        manifold_model=manifold_model,
        cluster_model=cluster_model,
        n_clusters=n_clusters,
        k_search=k_search,
        latent=np.asarray(backend.to_numpy(feats), dtype=np.float32),
        embedding=np.asarray(backend.to_numpy(emb), dtype=np.float32),
        labels=np.asarray(backend.to_numpy(labels), dtype=np.int64),
    )


def fit_learned_map(feats, emb, cluster_model, res: Resolution, backend: Backend, timings: dict[str, float]):
    """The learned map (:mod:`mfvc_gpu.embedding_map`) trained on the codes and the manifold's coordinates; the
    embedding becomes the map's output and the clusterer is refitted on it from where it stands, so the fitted
    images and new ones are placed and labelled by the same function. (map, embedding, clusterer, labels)."""
    import torch

    from .embedding_map import fit_map

    t0 = time.perf_counter()
    device = torch.device(res.placement.device)
    embedding_map, mapped, record = fit_map(feats, emb, res.seed, device)
    log.info("learned map: %d steps, RMSE %.3f of the coordinates' spread", record["steps"], record["relative_rmse"])
    interrupts.check()
    mapped = backend.handoff(mapped)
    if not backend.all_finite(mapped):
        raise MFVCError(
            "the learned map gave NaN or infinite coordinates; use out_of_sample='umap' (--out-of-sample umap)"
        )
    cluster_model, labels = backend.refine_cluster(cluster_model, mapped, res.seed)
    timings["map"] = time.perf_counter() - t0
    interrupts.check()
    return embedding_map, mapped, cluster_model, labels


def check_result(fitted: Fitted) -> None:
    """Refuse a numerically failed fit with one line: NaN coordinates, codes that all collapsed to one
    point, or K-Means finding fewer distinct clusters than asked (the points collapsed)."""
    z, emb, labels = fitted.latent, fitted.embedding, fitted.labels
    res = fitted.resolution
    if not np.isfinite(emb).all():
        raise MFVCError(
            f"the {res.manifold.method} embedding holds NaN or infinite values: the manifold stage "
            "failed numerically; check the input images, or try --manifold none"
        )
    if len(z) > 1 and float(np.ptp(z, axis=0).max()) <= 1e-7 * max(1.0, float(np.abs(z).max())):
        raise MFVCError(
            f"the features collapsed: all {len(z)} images got the same code, so there is nothing to "
            "cluster; lower the learning rate (--lr), train longer (--epochs), or check that the images "
            "differ"
        )
    found = len(np.unique(labels[labels >= 0]))
    if res.cluster.method == "kmeans" and found < fitted.n_clusters:
        raise MFVCError(
            f"the embedding collapsed: K-Means found only {found} distinct clusters of the "
            f"{fitted.n_clusters} asked, because too few images have distinct codes; lower --n-clusters, "
            "lower the learning rate (--lr), or check the input (are many images identical?)"
        )


__all__ = ["Fitted", "encode_codes", "run_stages", "fit_learned_map", "check_result"]
