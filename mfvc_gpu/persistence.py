"""Saving and loading a fitted :class:`~mfvc_gpu.MFVC`: no pickle anywhere.

A model folder holds

* ``model.json``: the format version, the parameters, the resolved stage settings, timings, history;
* ``weights.pt``: the network's state dict (read back with ``torch.load(weights_only=True)``);
* ``map.pt``: the learned map into the manifold's space (:mod:`mfvc_gpu.embedding_map`), a state dict too;
* ``arrays.npz``: the training codes, their embedding and labels, and the clustering state
  (K-Means centres, or a Gaussian mixture's weights, means and covariances) and, with ``fit_sample``, the
  rows the stages were fitted on; read with ``allow_pickle=False``.

What ``load`` gives back: the network and the clusterer exactly as fitted, so ``predict`` on the
training images returns ``labels_`` and a new image gets the label the saved model would give.
With the learned map nothing is rebuilt. UMAP's own ``transform`` (``out_of_sample='umap'``, or a model
saved before the map existed) needs the manifold model (umap-learn's and cuML's UMAP hold
nearest-neighbour indexes that are not saved): it is refitted on the saved codes with the saved
seed the first time a *new* point must be transformed; that refit costs what the original manifold
stage cost (docs/BENCHMARKS.md). Training points keep the coordinates the fit gave them.

A model folder is untrusted input: ``load`` checks every entry of ``model.json`` against the
table of settings (unknown entries, wrong types and other format versions are refused), reads
``weights.pt`` and ``map.pt`` only as zips of tensors that must fit the described networks, and checks the
arrays' types and shapes. Anything else is refused with one :class:`MFVCError`; nothing in the
folder is ever executed.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MFVCError
from .fileio import FileSystemError, atomic_path, make_dirs, publish_dir, temp_name, write_json, write_torch
from .model_files import FORMAT_VERSION, Bad, expect, load_arrays, load_map, load_weights, read_meta, settings_of
from .resolution import has_map
from .settings import ClusterConfig, ManifoldConfig, TrainConfig, VAEConfig

log = logging.getLogger(__name__)


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
    embedding_map: Any = None  # the EmbeddingMap (on the CPU after reading), or None
    sample: np.ndarray | None = None  # with fit_sample: the rows the stages were fitted on

    @classmethod
    def of(cls, est) -> SavedModel:
        """What a fitted :class:`~mfvc_gpu.MFVC` saves (its fitted attributes)."""
        from .backends import get_backend

        return cls(
            params=est.resolved_params(),
            vae=est.vae_config_,
            train=est.train_config_,
            manifold=est.manifold_config_,
            cluster=est.cluster_config_,
            profile=est.profile_,
            backend=est.backend_,
            device=est.device_,
            seed=est.seed_,
            n_clusters=est.n_clusters_,
            k_search=est.k_search_,
            timings=est.timings_,
            history=est.history_,
            latent=est.latent_,
            embedding=est.embedding_,
            labels=est.labels_,
            cluster_state=get_backend(est.backend_).cluster_state(est.cluster_model_),
            network=est.model_,
            embedding_map=est.embedding_map_,
            sample=est.sample_,
        )

    def fitted(self, res, backend):
        """The :class:`~mfvc_gpu.pipeline.Fitted` record :meth:`mfvc_gpu.MFVC.load` sets, on ``res``'s device."""
        from .pipeline import Fitted

        device = res.placement.device
        model = None if self.network is None else self.network.to(device).eval()
        return Fitted(
            res,
            backend,
            device,
            res.placement.note,
            model,
            self.history,
            None,  # the manifold model: refitted only if UMAP's own transform is asked for
            backend.cluster_from_state(self.cluster_state, self.seed),
            self.latent,
            self.embedding,
            self.labels,
            self.n_clusters,
            self.k_search,
            self.timings,
            {},
            n_features_in=self.latent.shape[1] if model is None else None,
            embedding_map=None if self.embedding_map is None else self.embedding_map.to(device).eval(),
            sample=self.sample,
        )


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
        if m.embedding_map is not None:
            write_torch(tmp / "map.pt", m.embedding_map.state_dict())
        extra = {} if m.sample is None else {"sample": np.asarray(m.sample, dtype=np.int64)}
        with atomic_path(tmp / "arrays.npz") as f, open(f, "wb") as fh:
            np.savez(fh, latent=m.latent, embedding=m.embedding, labels=m.labels, **m.cluster_state, **extra)
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


def read_model(path: str | os.PathLike) -> SavedModel:
    """Read a folder written by :func:`write_model`, every entry checked before use.

    An edited ``model.json`` (unknown entries, wrong types, another format version), a truncated or
    foreign ``weights.pt`` or ``map.pt`` (a pickle payload is refused by ``weights_only=True`` without running)
    or a damaged ``arrays.npz`` is refused with one :class:`MFVCError`."""
    path = Path(path)
    meta = read_meta(path)
    try:
        params, vae, train, manifold, cluster = settings_of(meta)
    except Bad as exc:
        raise MFVCError(
            f"{path / 'model.json'} was not written by this mfvc_gpu or was edited: {exc}; refused"
        ) from None
    k_search = None
    if meta["k_search"] is not None:
        from .choose_k import KSearch

        k_search = KSearch(**meta["k_search"])
    wants_network = params.get("encoder", "vae") == "vae"
    wants_map = meta["format_version"] >= 3 and has_map(manifold, cluster)
    expect(path / "weights.pt", wants_network, "model.json describes a trained network", "encoder='none'")
    expect(path / "map.pt", wants_map, "model.json says out_of_sample='map'", "there is no learned map")
    arrays = load_arrays(path / "arrays.npz", meta)
    network = load_weights(path / "weights.pt", vae) if wants_network else None
    z, emb = arrays["latent"], arrays["embedding"]
    embedding_map = load_map(path / "map.pt", z.shape[1], emb.shape[1]) if wants_map else None
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
        sample=arrays.pop("sample", None),
        cluster_state=arrays,
        network=network,
        embedding_map=embedding_map,
    )


__all__ = ["SavedModel", "write_model", "read_model", "FORMAT_VERSION"]
