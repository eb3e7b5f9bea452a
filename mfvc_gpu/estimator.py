"""The MFVC estimator: β-VAE features → UMAP → K-Means or a Gaussian mixture, on scikit-learn's estimator contract.

Its parameters are the estimator rows of :data:`mfvc_gpu.params.PARAMS`: the signature, the
defaults, the validation and the ``Parameters`` section below all come from that table.
"""

from __future__ import annotations

import inspect
import logging
import numbers
import time
from dataclasses import replace

import numpy as np
import torch
from scipy import sparse
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import backends
from .backends import interop
from .config import ClusterConfig, ManifoldConfig, profile_for, with_profile
from .data.loading import to_images, unit_float
from .errors import MFVCError
from .models import BetaVAE, VAEConfig
from .params import BY_NAME, ESTIMATOR_PARAMS, params_docstring, stage_params
from .train import TrainConfig, encode, train_vae

log = logging.getLogger(__name__)

AUTO_COMPONENTS = 10  # UMAP's output dimension while K is being chosen (n_clusters="auto", n_components unset)


def _init_signature() -> inspect.Signature:
    kinds = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for i, p in enumerate(ESTIMATOR_PARAMS):
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if i == 0 else inspect.Parameter.KEYWORD_ONLY
        kinds.append(inspect.Parameter(p.name, kind, default=p.default))
    return inspect.Signature(kinds)


_SIGNATURE = _init_signature()


def _init(self, *args, **kwargs) -> None:
    bound = _SIGNATURE.bind(self, *args, **kwargs)
    bound.apply_defaults()
    for name, value in list(bound.arguments.items())[1:]:
        setattr(self, name, value)  # scikit-learn's rule: __init__ only stores its arguments


_init.__signature__ = _SIGNATURE
_init.__doc__ = "Store the parameters (see the class docstring); nothing is validated before ``fit``."


class MFVC(ClusterMixin, TransformerMixin, BaseEstimator):
    __init__ = _init

    # ------------------------------------------------------------------ scikit-learn's tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images (N, H, W) or (N, C, H, W)
        tags.input_tags.two_d_array = self.encoder == "none"  # feature vectors skip the network
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------ settings
    def _seed(self) -> int:
        """An int seed from ``random_state`` (None, an int or a RandomState), without touching global streams."""
        if isinstance(self.random_state, numbers.Integral) and not isinstance(self.random_state, bool):
            return int(BY_NAME["random_state"].check(self.random_state))
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _validate(self, n_samples: int) -> None:
        """Every parameter against the table, then the checks that depend on the data."""
        for p in ESTIMATOR_PARAMS:
            if p.name == "random_state":
                continue  # an int, None or a RandomState: checked by _seed
            if p.name in ("device", "checkpoint"):
                continue
            p.check(getattr(self, p.name))
        backends.check_device(self.device)
        if self.n_clusters is None:
            raise MFVCError("n_clusters=None: give the number of clusters, or 'auto'")
        if self.n_clusters == "auto":
            if self.cluster not in (None, "kmeans"):
                raise MFVCError(f"n_clusters='auto' chooses K for K-Means; cluster={self.cluster!r} needs a number")
            if self.k_min > self.k_max or self.k_max >= n_samples:
                raise MFVCError(f"k_min={self.k_min}, k_max={self.k_max}: need k_min <= k_max < {n_samples} (the samples)")
        elif self.n_clusters > n_samples:
            raise MFVCError(f"n_clusters={self.n_clusters} exceeds the number of samples ({n_samples}); lower it or add data")
        if self.manifold != "none" and self.n_neighbors >= n_samples:
            raise MFVCError(f"n_neighbors={self.n_neighbors} must be below the number of samples ({n_samples}); lower it")
        if self.manifold != "none" and self.n_components is not None and self.n_components >= n_samples - 1:
            raise MFVCError(f"n_components={self.n_components} must be well below the number of samples ({n_samples})")

    def _stage_configs(self, device_type: str, kmeans_only: bool = False) -> dict:
        """The resolved profile and the stage dataclasses this fit uses (None: the profile's value)."""
        profile = profile_for(self.profile, device_type)
        stages = ("network", "train", "manifold", "cluster")
        chosen = {p.name: getattr(self, p.name) for s in stages for p in stage_params(s)} | {"n_clusters": self.n_clusters}
        chosen = with_profile(chosen, profile, kmeans_only)
        stage = {s: {p.field_name: chosen[p.name] for p in stage_params(s)} for s in stages}
        return dict(profile=profile, train=TrainConfig(**stage["train"]), vae=VAEConfig(**stage["network"]),
                    manifold=ManifoldConfig(**stage["manifold"]), cluster=ClusterConfig(**stage["cluster"]))

    def _settle(self, device_type: str, kmeans_only: bool = False) -> None:
        """Record the resolved settings of this fit: profile, stage configs, seed."""
        cfg = self._stage_configs(device_type, kmeans_only)
        self.profile_, self.train_config_, self.vae_config_ = cfg["profile"], cfg["train"], cfg["vae"]
        self.manifold_config_, self.cluster_config_ = cfg["manifold"], cfg["cluster"]
        self.seed_ = self._seed()

    def _place(self) -> torch.device:
        """Resolve where the stages run (once per fit); record it and the resolved settings."""
        placement = backends.resolve(self.device, self.backend)
        device = torch.device(placement.device)
        self._settle(device.type)
        self.backend_, self.device_, self.placement_note_ = placement.backend, placement.device, placement.note
        self._backend = backends.get_backend(placement.backend)
        if placement.backend == "rapids":
            from .backends.rapids import share_gpu_memory, umap_params

            if self.manifold == "umap":
                umap_params(self.manifold_config_, self._n_components(), self.seed_)  # refuse what cuML cannot do, before training
            share_gpu_memory(self.gpu_memory)
        return device

    def _train(self, data: np.ndarray, device: torch.device, timings: dict) -> None:
        """Train a fresh network on ``data`` (seeded by ``seed_``; the caller's random streams stay as they were)."""
        log.info("training the β-VAE: profile %s, %d epochs on %s", self.profile_, self.train_config_.epochs, device)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed_)
            self.model_ = BetaVAE(self.vae_config_)
            self.history_ = train_vae(self.model_, data, self.train_config_, device, self.seed_,
                                      self.checkpoint, self.resume, self.progress)
        timings["train"] = time.perf_counter() - t0

    def resolved_params(self) -> dict:
        """``get_params()`` as the last fit ran: profile, epochs, batch size, lr, device, backend and
        seed resolved. Feeding it back (a run folder's ``config.yaml``) reproduces the fit."""
        check_is_fitted(self, "labels_")
        t = self.train_config_
        return dict(self.get_params(), profile=self.profile_, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                    metric=self.manifold_config_.metric, cluster=self.cluster_config_.method,
                    device=self.device_, backend=self.backend_, random_state=self.seed_)

    # ------------------------------------------------------------------ input
    def _prepare(self, X, fitting: bool, name: str = "X"):
        """Images as (N, 1, 32, 32) uint8 (255 = white; converted per batch) for the network. Feature vectors (N, D) go
        through scikit-learn's ``validate_data`` (which records ``n_features_in_`` when fitting
        and checks it afterwards); they are taken with ``encoder='none'``, or after ``fit_features``."""
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        elif interop.is_cupy(X):
            X = X.get()  # a CuPy array comes to the host once
        if not (isinstance(X, np.ndarray) or sparse.issparse(X)):
            X = np.asarray(X)
        features_ok = self.encoder == "none" if fitting else self.model_ is None
        if X.ndim in (3, 4) and X.dtype != object:
            if fitting and hasattr(self, "n_features_in_"):
                del self.n_features_in_  # images: scikit-learn's feature count has no meaning here
            return to_images(X, 32, name, self.pixel_max)
        if not features_ok:
            raise MFVCError(f"{name} has shape {X.shape}: the network clusters images (N, H, W) or (N, C, H, W); "
                            "for feature vectors use encoder='none' or fit_features")
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
        t_start = time.perf_counter()
        data = self._prepare(X, fitting=True)
        self._validate(len(data))
        device = self._place()
        timings: dict[str, float] = {}
        self.model_, self.history_ = None, []
        if self.encoder == "vae":
            self._train(data, device, timings)
        z, timings["encode"] = self._features(data, device)
        self._fit_after_encoder(z, timings)
        timings["total"] = time.perf_counter() - t_start
        self.timings_ = timings
        return self

    def fit_predict(self, X, y=None, **kwargs) -> np.ndarray:
        """``fit(X)`` and return ``labels_``."""
        return self.fit(X).labels_

    def fit_features(self, Z) -> MFVC:
        """Only the manifold and clustering stages, on feature vectors ``Z`` (N, D).

        Used for tabular data and distributed encoding; ``transform``/``predict`` then take features too.
        """
        t0 = time.perf_counter()
        if not (isinstance(Z, torch.Tensor) or interop.is_cupy(Z)):  # device arrays are checked on the device
            Z = self._validate_features(Z, fitting=True)
        else:
            self.n_features_in_ = int(Z.shape[1])
        self._validate(len(Z))
        self._place()
        self.model_, self.history_ = None, []
        timings: dict[str, float] = {}
        self._fit_after_encoder(Z, timings)
        timings["total"] = time.perf_counter() - t0
        self.timings_ = timings
        return self

    def _features(self, data: np.ndarray, device: torch.device):
        t0 = time.perf_counter()
        if self.model_ is not None:
            z = encode(self.model_, data, device)
        else:
            z = unit_float(torch.from_numpy(np.ascontiguousarray(data.reshape(len(data), -1))).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return z, time.perf_counter() - t0

    def _fit_after_encoder(self, z, timings: dict) -> None:
        b = self._backend
        t0 = time.perf_counter()
        feats = b.handoff(z)
        timings["handoff"] = time.perf_counter() - t0
        finite = b.all_finite(feats) if hasattr(b, "all_finite") else bool(np.isfinite(b.to_numpy(feats)).all())
        if not finite:
            raise MFVCError("the features contain NaN or infinite values; lower the learning rate or check the input")
        if self.backend_ == "rapids" and self.device_.startswith("cuda"):
            from .backends.rapids import release_torch_cache

            release_torch_cache(self.gpu_memory, torch.device(self.device_))
        t0 = time.perf_counter()
        self.manifold_model_, emb = b.fit_manifold(feats, self.manifold_config_, self._n_components(), self.seed_)
        timings["manifold"] = time.perf_counter() - t0
        self.k_search_ = None
        if self.n_clusters == "auto":
            from .choose_k import search_k

            self.k_search_ = search_k(np.asarray(b.to_numpy(emb), dtype=np.float32), (self.k_min, self.k_max),
                                      seed=self.seed_)
            timings["choose_k"] = self.k_search_.seconds
        self.n_clusters_ = self.k_search_.chosen if self.k_search_ else int(self.n_clusters)
        t0 = time.perf_counter()
        self.cluster_model_, labels = b.fit_cluster(emb, self.cluster_config_, self.n_clusters_, self.seed_)
        timings["cluster"] = time.perf_counter() - t0
        self.handoff_ = dict(getattr(b, "last_handoff", {}))  # as it stands when the labels exist
        self.latent_ = np.asarray(b.to_numpy(feats), dtype=np.float32)
        self.embedding_ = np.asarray(b.to_numpy(emb), dtype=np.float32)
        self.labels_ = np.asarray(b.to_numpy(labels), dtype=np.int64)
        self._check_fit()

    def _check_fit(self) -> None:
        """Refuse a numerically failed fit with one line: NaN coordinates, codes that all collapsed to one
        point, or K-Means finding fewer distinct clusters than asked (the points collapsed)."""
        z, emb, labels = self.latent_, self.embedding_, self.labels_
        if not np.isfinite(emb).all():
            raise MFVCError(f"the {self.manifold_config_.method} embedding holds NaN or infinite values: the manifold stage "
                            "failed numerically; check the input images, or try --manifold none")
        if len(z) > 1 and float(np.ptp(z, axis=0).max()) <= 1e-7 * max(1.0, float(np.abs(z).max())):
            raise MFVCError(f"the features collapsed: all {len(z)} images got the same code, so there is nothing to cluster; "
                            "lower the learning rate (--lr), train longer (--epochs), or check that the images differ")
        found = len(np.unique(labels[labels >= 0]))
        n_clusters = self.n_clusters_
        if self.cluster_config_.method == "kmeans" and found < n_clusters:
            raise MFVCError(f"the embedding collapsed: K-Means found only {found} distinct clusters of the {n_clusters} asked, "
                            "because too few images have distinct codes; lower --n-clusters, lower the learning rate (--lr), "
                            "or check the input (are many images identical?)")

    def _n_components(self) -> int:
        return self.n_components or (AUTO_COMPONENTS if self.n_clusters == "auto" else self.n_clusters)

    # ------------------------------------------------------------------ inference
    def _codes(self, X) -> np.ndarray:
        """Latent codes of ``X``: images through the encoder, or feature vectors as they are."""
        check_is_fitted(self, "labels_")
        data = self._prepare(X, fitting=False)
        if self.model_ is None:
            flat = data.reshape(len(data), -1)
            return flat.astype(np.float32) / 255.0 if flat.dtype == np.uint8 else flat
        z, _ = self._features(data, torch.device(self.device_))
        return np.asarray(self._backend.to_numpy(self._backend.handoff(z)), dtype=np.float32)

    def _seen(self, z: np.ndarray) -> np.ndarray:
        """For each row of ``z``, its index among the training codes, or -1 (bit-exact match)."""
        from .persistence import row_index

        return row_index(self.latent_, z)

    def transform(self, X) -> np.ndarray:
        """UMAP coordinates of ``X`` (N, n_components) float32: the training points keep the
        coordinates the fit gave them; new points go through the manifold's ``transform``."""
        return self._embed(self._codes(X))[0]

    def _embed(self, z: np.ndarray):
        seen = self._seen(z)
        out = np.empty((len(z), self.embedding_.shape[1]), dtype=np.float32)
        out[seen >= 0] = self.embedding_[seen[seen >= 0]]
        new = seen < 0
        if new.any():
            from .persistence import rebuild_manifold

            rebuild_manifold(self)
            b = self._backend
            out[new] = np.asarray(b.to_numpy(b.transform_manifold(self.manifold_model_, b.handoff(z[new]))), dtype=np.float32)
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
        from .persistence import save

        return save(self, path)

    @classmethod
    def load(cls, path, device: str = "auto", backend: str = "auto") -> MFVC:
        """Load a folder written by :meth:`save` (see :mod:`mfvc_gpu.persistence`)."""
        from .persistence import load

        return load(cls, path, device, backend)


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
