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
from .embedding_map import TorchClusterer, as_tensor
from .errors import MFVCError
from .labelling import CHUNK, Labelled, Labeller, RowMatcher, label
from .params import params_docstring
from .pipeline import Fitted, check_result, encode_codes, run_stages
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
        self.embedding_map_, self.sample_ = f.embedding_map, f.sample
        if f.distributed is not None:
            self.distributed_ = f.distributed
        elif hasattr(self, "distributed_"):
            del self.distributed_

    def _clear_fitted(self) -> None:
        """Back to unfitted: every attribute :meth:`_set_fitted` sets is removed."""
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")] + ["_backend"]:
            self.__dict__.pop(name, None)

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
        """Resolve, train (images with ``encoder='vae'``), encode (``encode``), then the stages after the encoder;
        with ``fit_sample``, all of that on a sample drawn with the seed, then every other row labelled."""
        n_fit = len(data) if self.fit_sample is None else min(int(self.fit_sample), len(data))
        res = self._resolve(n_fit)
        sample = None
        if n_fit < len(data):
            sample = np.sort(np.random.default_rng(res.seed).choice(len(data), n_fit, replace=False))
        fit_data = data if sample is None else data[sample]
        backend = get_backend(res.placement.backend)
        backend.prepare(res.manifold, res.n_components, res.seed, res.params["gpu_memory"])
        timings: dict[str, float] = {}
        model, history = self._train(fit_data, res, timings) if encode and self.encoder == "vae" else (None, [])
        z = fit_data
        if encode:
            z, timings["encode"] = encode_codes(model, fit_data, torch.device(res.placement.device))
        stages = run_stages(z, res, backend, timings)
        n_features = None if data.ndim == 4 else int(data.shape[1])  # images: no feature count
        place = res.placement
        fitted = Fitted(
            res, backend, place.device, place.note, model, history, timings=timings, n_features_in=n_features, **stages
        )
        if sample is not None:
            self._set_fitted(fitted)  # the sample's fit labels the rest
            try:
                fitted = self._label_rest(fitted, data, sample)
            except BaseException:  # an interrupted labelling leaves no fit that looks complete
                self._clear_fitted()
                raise
        timings["total"] = time.perf_counter() - t0
        self._set_fitted(fitted)
        return self

    def _label_rest(self, fitted: Fitted, data, sample: np.ndarray) -> Fitted:
        """``fitted`` (on the rows ``sample``) extended to every row of ``data``: the others labelled in chunks."""
        t0 = time.perf_counter()
        log.info("labelling the %d images outside the sample of %d", len(data) - len(sample), len(sample))
        in_sample = np.zeros(len(data), dtype=bool)
        in_sample[sample] = True
        out = label(self.labeller(match=False), data, latent=True, skip=in_sample, progress=self.progress)
        out.latent[sample], out.embedding[sample], out.labels[sample] = fitted.latent, fitted.embedding, fitted.labels
        fitted.timings["label_rest"] = time.perf_counter() - t0
        return replace(fitted, latent=out.latent, embedding=out.embedding, labels=out.labels, sample=sample)

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
                embedding_map=None if result.embedding_map is None else result.embedding_map.to(result.device),
            )
        )
        return self

    # ------------------------------------------------------------------ inference
    def labeller(self, match: bool = True) -> Labeller:
        """How this fitted model labels images (or feature vectors, without a network): the learned map and the
        clusterer in torch on the model's device when it was fitted with ``out_of_sample='map'``, else the
        manifold's own ``transform`` and the backend's clusterer. ``match``: training rows keep their coordinates
        and labels."""
        device = torch.device(self.device_)
        b, network = self._backend, self.model_

        def to_codes(x):
            if network is None and not isinstance(x, np.ndarray):  # feature vectors on a device
                return as_tensor(x, device)
            return encode_codes(network, x, device)[0]

        method = self.manifold_config_.method
        torch_path = method == "none" or self.embedding_map_ is not None  # as fitted: out_of_sample acts in fit
        if torch_path:
            state = b.cluster_state(self.cluster_model_)
            clusterer = None

            def cluster(u):
                nonlocal clusterer
                clusterer = clusterer or TorchClusterer(state, device)  # DBSCAN refuses only when a new point comes
                return clusterer(u)

            embed = self.embedding_map_ if self.embedding_map_ is not None else (lambda z: z)  # manifold 'none'
            chunk = CHUNK
        else:

            def embed(z):
                manifold = self._manifold()
                interrupts.check()  # a safe point between a refit and the transform
                return b.transform_manifold(manifold, b.handoff(z))

            cluster = lambda u: b.predict_cluster(self.cluster_model_, u)  # noqa: E731
            chunk = None  # the manifold's transform of one batch: its result depends on the batch
        matcher = RowMatcher(self.latent_, device) if match else None
        return Labeller(to_codes, embed, cluster, self.embedding_, self.labels_, matcher, chunk)

    def _manifold(self):
        """The fitted manifold model; after ``load``, refitted on the saved codes (the sample's, with ``fit_sample``)
        with the saved seed the first time a new point needs it (umap-learn's and cuML's UMAP hold indexes that are
        not saved)."""
        if self.manifold_model_ is None and self.manifold_config_.method != "none":
            b = self._backend
            z = self.latent_ if self.sample_ is None else self.latent_[self.sample_]
            log.info("rebuilding the %s model from the %d saved latent codes", self.manifold_config_.method, len(z))
            self.manifold_model_, _ = b.fit_manifold(
                b.handoff(z), self.manifold_config_, self.resolution_.n_components, self.seed_
            )
        return self.manifold_model_

    def _label(self, X, embedding: bool) -> Labelled:
        check_is_fitted(self, "labels_")
        data = self._prepare(X, fitting=False)
        return label(self.labeller(), data, embedding=embedding, progress=self.progress and len(data) > CHUNK)

    def transform(self, X) -> np.ndarray:
        """Coordinates of ``X`` in the manifold's space (N, n_components) float32: the training points keep the
        coordinates the fit gave them; new points go through the learned map (``out_of_sample='map'``) or the
        manifold's ``transform``."""
        return self._label(X, embedding=True).embedding

    def transform_predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``(transform(X), predict(X))`` with one pass through the encoder (and the map)."""
        out = self._label(X, embedding=True)
        return out.embedding, out.labels

    def predict(self, X) -> np.ndarray:
        """Cluster labels of ``X``: training points get ``labels_``; new points go encoder → the learned map
        (or UMAP's ``transform``) → the fitted K-Means or Gaussian mixture (in chunks with the map)."""
        return self._label(X, embedding=False).labels

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Write the fitted estimator to folder ``path`` atomically (see :mod:`mfvc_gpu.persistence`)."""
        from .persistence import SavedModel, write_model

        check_is_fitted(self, "labels_")
        return write_model(path, SavedModel.of(self))

    @classmethod
    def load(cls, path, device: str = "auto", backend: str = "auto") -> MFVC:
        """Load a folder written by :meth:`save` onto ``device`` / ``backend`` (resolved as for ``fit``);
        every file is checked before use (see :mod:`mfvc_gpu.persistence`). Nothing is refitted for ``predict``
        with the learned map; UMAP's own ``transform`` (``out_of_sample='umap'``) refits the manifold model the
        first time a new point needs it."""
        from .persistence import read_model

        saved = read_model(path)
        est = cls(**dict(saved.params, device=device, backend=backend, checkpoint=None, resume=False))
        n = len(saved.latent) if saved.sample is None else len(saved.sample)
        res = replace(
            est._resolve(n),
            profile=saved.profile,
            seed=saved.seed,
            vae=saved.vae,
            train=saved.train,
            manifold=saved.manifold,
            cluster=saved.cluster,
        )
        est._set_fitted(saved.fitted(res, get_backend(res.placement.backend)), check=False)
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
