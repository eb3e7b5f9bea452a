"""The MFVC estimator: β-VAE features → UMAP → K-Means or a Gaussian mixture, on scikit-learn's estimator contract.

Its parameters are the estimator rows of :data:`mfvc_gpu.params.PARAMS`: the signature (generated
into :class:`mfvc_gpu.settings.EstimatorParams`), the defaults, the validation and the ``Parameters``
section below all come from that table. The estimator is the only writer of its fitted state: every
way to a fitted model (``fit``, ``fit_features``, ``fit_distributed``, ``load``) builds a
:class:`~mfvc_gpu.pipeline.Fitted` record and hands it to one method.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import torch
from scipy import sparse
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import interrupts
from .backends import get_backend, interop
from .data.loading import to_images
from .errors import MFVCError
from .params import params_docstring
from .pipeline import Fitted, check_result, encode_codes, row_index, run_stages
from .resolution import Resolution, check, resolve
from .settings import EstimatorParams
from .train import fit_vae

log = logging.getLogger(__name__)


class MFVC(EstimatorParams, ClusterMixin, TransformerMixin, BaseEstimator):
    # ------------------------------------------------------------------ scikit-learn's tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images (N, H, W) or (N, C, H, W)
        tags.input_tags.two_d_array = self.encoder == "none"  # feature vectors skip the network
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------ the fitted state
    def _set_fitted(self, f: Fitted, check: bool = True) -> None:
        """The one place that sets the fitted attributes (``check``: refuse a numerically failed fit first)."""
        if check:
            check_result(f)
        r = f.resolution
        self.resolution_, self.profile_, self.seed_ = r, r.profile, r.seed
        self.vae_config_, self.train_config_ = r.vae, r.train
        self.manifold_config_, self.cluster_config_ = r.manifold, r.cluster
        self.backend_, self.device_, self.placement_note_ = f.backend.name, f.device, f.placement_note
        self._backend = f.backend
        self.model_, self.history_ = f.model, f.history
        self.manifold_model_, self.cluster_model_ = f.manifold_model, f.cluster_model
        self.latent_, self.embedding_, self.labels_ = f.latent, f.embedding, f.labels
        self.n_clusters_, self.k_search_ = int(f.n_clusters), f.k_search
        self.timings_, self.handoff_ = f.timings, f.handoff
        if f.n_features_in is not None:
            self.n_features_in_ = int(f.n_features_in)
        elif hasattr(self, "n_features_in_"):
            del self.n_features_in_  # images: scikit-learn's feature count has no meaning here
        if f.distributed is not None:
            self.distributed_ = f.distributed
        elif hasattr(self, "distributed_"):
            del self.distributed_

    def _resolve(self, n_samples: int, workers: tuple[bool, bool] | None = None) -> Resolution:
        return resolve(self.get_params(), n_samples=n_samples, workers=workers)

    def _train(self, data: np.ndarray, res: Resolution, timings: dict):
        """A fresh network trained on ``data``, seeded by the resolved seed; (model, history)."""
        device = torch.device(res.train_device)
        log.info("training the β-VAE: profile %s, %d epochs on %s", res.profile, res.train.epochs, device)
        t0 = time.perf_counter()
        model, history = fit_vae(
            res.vae, data, res.train, device, res.seed, self.checkpoint, self.resume, self.progress
        )
        timings["train"] = time.perf_counter() - t0
        return model, history

    def resolved_params(self) -> dict:
        """``get_params()`` as the last fit ran: profile, epochs, batch size, lr, device, backend and
        seed resolved. Feeding it back (a run folder's ``config.yaml``) reproduces the fit."""
        check_is_fitted(self, "labels_")
        t = self.train_config_
        return dict(
            self.get_params(),
            profile=self.profile_,
            epochs=t.epochs,
            batch_size=t.batch_size,
            lr=t.lr,
            metric=self.manifold_config_.metric,
            cluster=self.cluster_config_.method,
            device=self.device_,
            backend=self.backend_,
            random_state=self.seed_,
        )

    # ------------------------------------------------------------------ input
    def _prepare(self, X, fitting: bool, name: str = "X"):
        """Images as (N, 1, 32, 32) uint8 (255 = white; converted per batch) for the network. Feature vectors
        (N, D) go through scikit-learn's ``validate_data`` (which records ``n_features_in_`` when fitting and
        checks it afterwards); they are taken with ``encoder='none'``, or after ``fit_features``."""
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        elif interop.is_cupy(X):
            X = X.get()  # a CuPy array comes to the host once
        if not (isinstance(X, np.ndarray) or sparse.issparse(X)):
            X = np.asarray(X)
        features_ok = self.encoder == "none" if fitting else self.model_ is None
        if X.ndim in (3, 4) and X.dtype != object:
            return to_images(X, 32, name, self.pixel_max)
        if not features_ok:
            raise MFVCError(
                f"{name} has shape {X.shape}: the network clusters images (N, H, W) or (N, C, H, W); "
                "for feature vectors use encoder='none' or fit_features"
            )
        return self._validate_features(X, fitting)

    def _validate_features(self, Z, fitting: bool) -> np.ndarray:
        from sklearn.utils.validation import validate_data

        Z = validate_data(self, Z, reset=fitting, dtype=np.float32, ensure_min_samples=2 if fitting else 1)
        return np.ascontiguousarray(Z)

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None) -> MFVC:
        """Train the β-VAE on images ``X``, embed its codes with UMAP and cluster them.

        ``X``: (N, H, W) or (N, C, H, W) images, uint8 or floats in [0, 1]; resized to 32×32.
        With ``encoder='none'`` also (N, D) feature vectors. ``y`` is ignored.
        """
        t0 = time.perf_counter()
        return self._fit(self._prepare(X, fitting=True), t0, encode=True)

    def fit_predict(self, X, y=None) -> np.ndarray:
        """``fit(X)`` and return ``labels_``."""
        return self.fit(X).labels_

    def fit_features(self, Z) -> MFVC:
        """Only the manifold and clustering stages, on feature vectors ``Z`` (N, D).

        Used for tabular data and distributed encoding; ``transform``/``predict`` then take features too.
        """
        t0 = time.perf_counter()
        if not (isinstance(Z, torch.Tensor) or interop.is_cupy(Z)):  # device arrays are checked on the device
            Z = self._validate_features(Z, fitting=True)
        return self._fit(Z, t0, encode=False)

    def _fit(self, data, t0: float, encode: bool) -> MFVC:
        """Resolve, train (images with ``encoder='vae'``), encode (``encode``), then the stages after the encoder."""
        res = self._resolve(len(data))
        backend = get_backend(res.placement.backend)
        backend.prepare(res.manifold, res.n_components, res.seed, res.params["gpu_memory"])
        timings: dict[str, float] = {}
        model, history = self._train(data, res, timings) if encode and self.encoder == "vae" else (None, [])
        z = data
        if encode:
            z, timings["encode"] = encode_codes(model, data, torch.device(res.placement.device))
        stages = run_stages(z, res, backend, timings)
        timings["total"] = time.perf_counter() - t0
        n_features = None if data.ndim == 4 else int(data.shape[1])  # images: no feature count
        place = res.placement
        self._set_fitted(
            Fitted(
                res,
                backend,
                place.device,
                place.note,
                model,
                history,
                timings=timings,
                n_features_in=n_features,
                **stages,
            )
        )
        return self

    def fit_distributed(
        self,
        X,
        cluster="local",
        n_workers: int | None = None,
        *,
        model=None,
        sample_size: int = 20_000,
        partition_rows: int | None = None,
        batch_size: int = 1024,
        timeout: float = 900.0,
    ) -> MFVC:
        """Fit on images ``X`` with every stage after training on Dask workers (K-Means only, with UMAP or
        no manifold stage); see :func:`mfvc_gpu.distributed.fit_distributed` for the arguments. Sets the
        attributes ``fit`` sets, plus ``distributed_``: the workers, tasks per worker, seconds per stage,
        each worker's peak memory."""
        from .distributed.orchestrate import DaskJob

        t_start = time.perf_counter()
        images = self._prepare(X, fitting=True)
        params = check(self.get_params(), len(images), dask=True)  # refused before any cluster starts
        DaskJob.check(params, sample_size, partition_rows, model)
        with DaskJob(cluster, n_workers, timeout) as job:
            res = self._resolve(len(images), workers=job.probe())
            timings: dict[str, float] = {}
            history: list[dict] = []
            if model is None and self.encoder == "vae":
                model, history = self._train(images, res, timings)
            if model is not None:
                res = replace(res, vae=model.cfg)
            result = job.run(res, images, model, sample_size, partition_rows, batch_size)
        timings |= result.timings | ({"connect": job.connect_seconds} if job.owned else {})
        timings["total"] = time.perf_counter() - t_start
        self._set_fitted(
            Fitted(
                res,
                get_backend(res.placement.backend),
                result.device,
                result.note,
                model,
                history,
                result.manifold_model,
                result.cluster_model,
                result.latent,
                result.embedding,
                result.labels,
                int(res.params["n_clusters"]),
                None,
                timings,
                result.handoff,
                n_features_in=result.latent.shape[1],
                distributed=result.record,
            )
        )
        return self

    # ------------------------------------------------------------------ inference
    def _codes(self, X) -> np.ndarray:
        """Latent codes of ``X``: images through the encoder, or feature vectors as they are."""
        check_is_fitted(self, "labels_")
        data = self._prepare(X, fitting=False)
        if self.model_ is None:
            flat = data.reshape(len(data), -1)
            return flat.astype(np.float32) / 255.0 if flat.dtype == np.uint8 else flat
        z, _ = encode_codes(self.model_, data, torch.device(self.device_))
        return np.asarray(self._backend.to_numpy(self._backend.handoff(z)), dtype=np.float32)

    def _manifold(self):
        """The fitted manifold model; after ``load``, refitted on the saved codes with the saved seed the first
        time a new point needs it (umap-learn's and cuML's UMAP hold indexes that are not saved)."""
        if self.manifold_model_ is None and self.manifold_config_.method != "none":
            b = self._backend
            log.info(
                "rebuilding the %s model from the %d saved latent codes",
                self.manifold_config_.method,
                len(self.latent_),
            )
            self.manifold_model_, _ = b.fit_manifold(
                b.handoff(self.latent_), self.manifold_config_, self.resolution_.n_components, self.seed_
            )
        return self.manifold_model_

    def transform(self, X) -> np.ndarray:
        """UMAP coordinates of ``X`` (N, n_components) float32: the training points keep the
        coordinates the fit gave them; new points go through the manifold's ``transform``."""
        return self._embed(self._codes(X))[0]

    def _embed(self, z: np.ndarray):
        seen = row_index(self.latent_, z)
        out = np.empty((len(z), self.embedding_.shape[1]), dtype=np.float32)
        out[seen >= 0] = self.embedding_[seen[seen >= 0]]
        new = seen < 0
        if new.any():
            b = self._backend
            manifold = self._manifold()
            interrupts.check()  # a safe point between the refit and the transform
            out[new] = np.asarray(b.to_numpy(b.transform_manifold(manifold, b.handoff(z[new]))), dtype=np.float32)
        return out, seen

    def transform_predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``(transform(X), predict(X))`` with one pass through the encoder and the manifold."""
        emb, seen = self._embed(self._codes(X))
        return emb, self._labels_of(emb, seen)

    def _labels_of(self, emb: np.ndarray, seen: np.ndarray) -> np.ndarray:
        labels = np.empty(len(emb), dtype=np.int64)
        labels[seen >= 0] = self.labels_[seen[seen >= 0]]
        new = seen < 0
        if new.any():
            b = self._backend
            labels[new] = np.asarray(b.to_numpy(b.predict_cluster(self.cluster_model_, emb[new])), dtype=np.int64)
        return labels

    def predict(self, X) -> np.ndarray:
        """Cluster labels of ``X``: training points get ``labels_``; new points go encoder →
        UMAP transform → the fitted K-Means or Gaussian mixture."""
        return self.transform_predict(X)[1]

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Write the fitted estimator to folder ``path`` atomically (see :mod:`mfvc_gpu.persistence`)."""
        from .persistence import SavedModel, write_model

        check_is_fitted(self, "labels_")
        return write_model(
            path,
            SavedModel(
                params=self.resolved_params(),
                vae=self.vae_config_,
                train=self.train_config_,
                manifold=self.manifold_config_,
                cluster=self.cluster_config_,
                profile=self.profile_,
                backend=self.backend_,
                device=self.device_,
                seed=self.seed_,
                n_clusters=self.n_clusters_,
                k_search=self.k_search_,
                timings=self.timings_,
                history=self.history_,
                latent=self.latent_,
                embedding=self.embedding_,
                labels=self.labels_,
                cluster_state=self._backend.cluster_state(self.cluster_model_),
                network=self.model_,
            ),
        )

    @classmethod
    def load(cls, path, device: str = "auto", backend: str = "auto") -> MFVC:
        """Load a folder written by :meth:`save` onto ``device`` / ``backend`` (resolved as for ``fit``);
        every file is checked before use (see :mod:`mfvc_gpu.persistence`). Nothing is refitted but the
        manifold model, and only when a new point needs it."""
        from .persistence import read_model

        saved = read_model(path)
        est = cls(**dict(saved.params, device=device, backend=backend, checkpoint=None, resume=False))
        res = replace(
            est._resolve(len(saved.latent)),
            profile=saved.profile,
            seed=saved.seed,
            vae=saved.vae,
            train=saved.train,
            manifold=saved.manifold,
            cluster=saved.cluster,
        )
        b = get_backend(res.placement.backend)
        model = None if saved.network is None else saved.network.to(res.placement.device).eval()
        est._set_fitted(
            Fitted(
                res,
                b,
                res.placement.device,
                res.placement.note,
                model,
                saved.history,
                None,
                b.cluster_from_state(saved.cluster_state, saved.seed),
                saved.latent,
                saved.embedding,
                saved.labels,
                saved.n_clusters,
                saved.k_search,
                saved.timings,
                {},
                n_features_in=saved.latent.shape[1] if model is None else None,
            ),
            check=False,
        )
        return est


MFVC.__doc__ = f"""Deep image clustering: β-VAE (Res-VAE-Blocks, SimAM, early fusion) → UMAP → K-Means.

The ``paper`` profile (the default on CUDA) is the paper's protocol: 200 epochs, UMAP on Euclidean
distances, K-Means. The ``fast`` profile (the default on the CPU) trains 30 epochs and clusters
with UMAP on cosine distances and a Gaussian mixture, which the search of the defaults chose
(docs/RESULTS.md). ``metric`` and ``cluster`` left at None take the profile's.

{params_docstring()}

Attributes
----------
labels_, embedding_, latent_ : cluster of every sample, its UMAP coordinates, its latent code.
timings_ : seconds per stage (train, encode, handoff, manifold, choose_k, cluster).
n_clusters_, k_search_ : the K used; with ``n_clusters='auto'`` every K's scores (:class:`mfvc_gpu.choose_k.KSearch`).
backend_, device_, profile_, seed_ : where the stages ran, the profile that trained the network,
    the seed used.
history_ : one record per training epoch (loss, seconds, images/s).
handoff_ : how the latent codes reached the backend (pointers, bytes copied).
n_features_in_ : only with ``encoder='none'`` on feature vectors (for images it has no meaning).
"""

__all__ = ["MFVC", "replace"]
