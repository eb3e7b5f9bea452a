"""The MFVC estimator: β-VAE features → UMAP → K-Means, on the scikit-learn contract."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from . import backends
from .config import PROFILES, ClusterConfig, ManifoldConfig, RunConfig, profile_for
from .data.loading import to_unit_images
from .errors import MFVCError
from .models import BetaVAE, VAEConfig
from .train import TrainConfig, encode, seed_everything, train_vae

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class MFVC:
    """Deep image clustering: β-VAE (Res-VAE-Blocks, SimAM, early fusion) → UMAP → K-Means.

    Parameters
    ----------
    n_clusters : int
        Number of clusters; also UMAP's output dimension unless ``n_components`` is set.
    latent_dim, beta, attention, residual, fusion :
        The network (see :class:`mfvc_gpu.models.VAEConfig`). Raising ``beta`` smooths the codes
        and usually lowers the clustering accuracy; the paper's ablations switch ``attention``
        to "cbam"/"none" and ``residual`` off.
    profile : "auto", "paper" or "fast"
        Training protocol: "paper" is 200 epochs (AdamW 0.005, cosine, batch 64), "fast" the CPU
        profile. "auto" takes "paper" on CUDA and "fast" on the CPU.
    epochs, batch_size, lr : int, int, float or None
        Override the profile's values. More epochs: better features, longer training.
    encoder : "vae" or "none"
        "none" skips the network and feeds the raw pixels to the manifold stage (a baseline).
    manifold : "umap", "isomap" or "none"
    n_neighbors, min_dist, n_components, knn :
        UMAP settings (paper: 27, 0.0, n_clusters). Larger ``n_neighbors`` favour global
        structure; larger ``min_dist`` spread the clusters. ``knn`` picks cuML's kNN build.
    cluster : "kmeans", "dbscan" or "gmm"
    eps, min_samples : DBSCAN settings.
    device : "auto", "cpu", "cuda" or "cuda:N"
    backend : "auto", "cpu" or "rapids"
    random_state : int
        Seeds the network, the data order, UMAP and the clustering.
    checkpoint : path or None
        Write a training checkpoint there after every epoch; with ``resume=True`` continue from it.
    progress : bool
        Show a progress bar while training.

    Attributes
    ----------
    labels_, embedding_, latent_ : cluster of every sample, its UMAP coordinates, its latent code.
    timings_ : seconds per stage (train, encode, handoff, manifold, cluster).
    backend_, device_, profile_ : where the stages ran and which profile trained the network.
    history_ : one record per training epoch (loss, seconds, images/s).
    handoff_ : how the latent codes reached the backend (pointers, bytes copied).
    """

    def __init__(
        self,
        n_clusters: int = 10,
        *,
        latent_dim: int = 32,
        beta: float = 0.01,
        attention: str = "simam",
        residual: bool = True,
        fusion: bool = True,
        profile: str = "auto",
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        encoder: str = "vae",
        manifold: str = "umap",
        n_neighbors: int = 27,
        min_dist: float = 0.0,
        n_components: int | None = None,
        knn: str = "brute",
        cluster: str = "kmeans",
        eps: float = 0.5,
        min_samples: int = 5,
        device: str = "auto",
        backend: str = "auto",
        random_state: int = 0,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.n_clusters = n_clusters
        self.latent_dim = latent_dim
        self.beta = beta
        self.attention = attention
        self.residual = residual
        self.fusion = fusion
        self.profile = profile
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.encoder = encoder
        self.manifold = manifold
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.n_components = n_components
        self.knn = knn
        self.cluster = cluster
        self.eps = eps
        self.min_samples = min_samples
        self.device = device
        self.backend = backend
        self.random_state = random_state
        self.checkpoint = checkpoint
        self.resume = resume
        self.progress = progress

    # ------------------------------------------------------------------ configuration
    def get_params(self, deep: bool = True) -> dict:
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params) -> MFVC:
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"unknown parameter {k!r}; valid parameters are {sorted(valid)}")
            setattr(self, k, v)
        return self

    @classmethod
    def from_config(cls, cfg: RunConfig, **extra) -> MFVC:
        """Build the estimator from a :class:`RunConfig` (what the CLI does)."""
        v, m, c = cfg.vae, cfg.manifold, cfg.cluster
        return cls(
            n_clusters=cfg.n_clusters or 10, latent_dim=v.latent_dim, beta=v.beta, attention=v.attention,
            residual=v.residual, fusion=v.fusion, profile=cfg.profile, epochs=cfg.epochs, batch_size=cfg.batch_size,
            lr=cfg.lr, encoder=cfg.encoder, manifold=m.method, n_neighbors=m.n_neighbors, min_dist=m.min_dist,
            n_components=m.n_components, knn=m.knn, cluster=c.method, eps=c.eps, min_samples=c.min_samples,
            device=cfg.device, backend=cfg.backend, random_state=cfg.seed, **extra,
        )

    def _validate(self, n_samples: int) -> None:
        def bad(name, why):
            raise MFVCError(f"{name}={getattr(self, name)!r} {why}")

        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            bad("n_clusters", "must be a positive integer")
        if self.n_clusters > n_samples:
            bad("n_clusters", f"exceeds the number of samples ({n_samples}); lower it or add data")
        if not isinstance(self.latent_dim, (int, np.integer)) or self.latent_dim < 1:
            bad("latent_dim", "must be a positive integer")
        if not (isinstance(self.beta, (int, float)) and np.isfinite(self.beta) and self.beta >= 0):
            bad("beta", "must be a finite number >= 0")
        for name, choices in (("attention", ("simam", "cbam", "none")), ("encoder", ("vae", "none")),
                              ("manifold", ("umap", "isomap", "none")), ("cluster", ("kmeans", "dbscan", "gmm")),
                              ("knn", ("brute", "nn-descent"))):
            if getattr(self, name) not in choices:
                bad(name, f"is not one of {', '.join(choices)}")
        if self.epochs is not None and (not isinstance(self.epochs, (int, np.integer)) or self.epochs < 1):
            bad("epochs", "must be a positive integer")
        if self.batch_size is not None and (not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 2):
            bad("batch_size", "must be an integer >= 2")
        if self.lr is not None and not (self.lr > 0 and np.isfinite(self.lr)):
            bad("lr", "must be a positive number")
        if not isinstance(self.n_neighbors, (int, np.integer)) or not 2 <= self.n_neighbors < n_samples:
            bad("n_neighbors", f"must be an integer in [2, {n_samples - 1}] for {n_samples} samples")
        if not 0.0 <= self.min_dist <= 1.0:
            bad("min_dist", "must lie in [0, 1]")
        if self.n_components is not None and not 1 <= self.n_components < n_samples - 1:
            bad("n_components", "must be a positive integer well below the number of samples")
        if self.eps <= 0 or self.min_samples < 1:
            raise MFVCError(f"eps={self.eps!r}, min_samples={self.min_samples!r}: both must be positive")

    def _configs(self, device_type: str) -> tuple[str, VAEConfig, TrainConfig, ManifoldConfig, ClusterConfig]:
        profile = profile_for(self.profile, device_type)
        base = PROFILES[profile]
        train = replace(
            base,
            epochs=self.epochs or base.epochs,
            batch_size=self.batch_size or base.batch_size,
            lr=self.lr or base.lr,
        )
        vae = VAEConfig(latent_dim=self.latent_dim, beta=float(self.beta), attention=self.attention,
                        residual=self.residual, fusion=self.fusion)
        manifold = ManifoldConfig(self.manifold, self.n_neighbors, self.min_dist, self.n_components, knn=self.knn)
        cluster = ClusterConfig(self.cluster, eps=self.eps, min_samples=self.min_samples)
        return profile, vae, train, manifold, cluster

    # ------------------------------------------------------------------ fitting
    def _prepare(self, X) -> np.ndarray:
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        X = np.asarray(X)
        if X.ndim == 2:
            raise MFVCError(f"X has shape {X.shape}: MFVC clusters images (N, H, W) or (N, C, H, W)")
        return to_unit_images(X, 32, "X")

    def _place(self) -> torch.device:
        """Resolve where the stages run (once per fit), record it and the resolved settings."""
        placement = backends.resolve(self.device, self.backend)
        device = torch.device(placement.device)
        self.profile_, self.vae_config_, self.train_config_, self.manifold_config_, self.cluster_config_ = self._configs(device.type)
        self.backend_, self.device_, self.placement_note_ = placement.backend, placement.device, placement.note
        self._backend = backends.get_backend(placement.backend)
        return device

    def fit(self, X, y=None) -> MFVC:
        """Train the β-VAE on images ``X``, embed its codes with UMAP and cluster them.

        ``X``: (N, H, W) or (N, C, H, W) images, uint8 or floats in [0, 1]; resized to 32×32.
        ``y`` is ignored (present for the scikit-learn API).
        """
        t_start = time.perf_counter()
        images = self._prepare(X)
        self._validate(len(images))
        device = self._place()
        timings: dict[str, float] = {}
        seed_everything(self.random_state)
        self.model_ = None
        self.history_ = []
        if self.encoder == "vae":
            log.info("training the β-VAE: profile %s, %d epochs on %s", self.profile_, self.train_config_.epochs, device)
            self.model_ = BetaVAE(self.vae_config_)
            t0 = time.perf_counter()
            ckpt = Path(self.checkpoint) if self.checkpoint is not None else None
            self.history_ = train_vae(self.model_, images, self.train_config_, device, self.random_state, ckpt, self.resume, self.progress)
            timings["train"] = time.perf_counter() - t0
        z, timings["encode"] = self._features(images, device)
        self._fit_after_encoder(z, timings)
        timings["total"] = time.perf_counter() - t_start
        self.timings_ = timings
        return self

    def fit_predict(self, X, y=None) -> np.ndarray:
        """``fit(X)`` and return ``labels_``."""
        return self.fit(X).labels_

    def fit_features(self, Z) -> MFVC:
        """Run only the manifold and clustering stages on given feature vectors ``Z`` (N, D).

        Used for tabular data and distributed encoding; ``transform``/``predict`` then take features too.
        """
        self._place()
        self._validate(len(Z))
        self.model_, self.history_ = None, []
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self._fit_after_encoder(Z, timings)
        timings["total"] = time.perf_counter() - t0
        self.timings_ = timings
        return self

    def _features(self, images: np.ndarray, device: torch.device):
        t0 = time.perf_counter()
        if self.model_ is not None:
            z = encode(self.model_, images, device)
        else:
            z = torch.from_numpy(images.reshape(len(images), -1)).to(device)
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
        k = self.n_components or self.n_clusters
        t0 = time.perf_counter()
        self.manifold_model_, emb = b.fit_manifold(feats, self.manifold_config_, k, self.random_state)
        timings["manifold"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.cluster_model_, labels = b.fit_cluster(emb, self.cluster_config_, self.n_clusters, self.random_state)
        timings["cluster"] = time.perf_counter() - t0
        self.handoff_ = dict(getattr(b, "last_handoff", {}))  # as it stands when the labels exist
        self.latent_ = np.asarray(b.to_numpy(feats), dtype=np.float32)
        self.embedding_ = np.asarray(b.to_numpy(emb), dtype=np.float32)
        self.labels_ = np.asarray(b.to_numpy(labels), dtype=np.int64)
        self.n_features_in_ = self.latent_.shape[1]

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "labels_"):
            raise MFVCError("this MFVC is not fitted yet; call fit(X) first")

    def _restore_models(self) -> None:
        """After ``load``: refit the manifold and the clusterer, deterministically, from the saved codes."""
        if getattr(self, "manifold_model_", None) is not None or getattr(self, "cluster_model_", None) is not None:
            return
        b = self._backend
        log.info("rebuilding the %s and %s models from the saved latent codes", self.manifold_config_.method, self.cluster_config_.method)
        feats = b.handoff(torch.from_numpy(self.latent_))
        k = self.n_components or self.n_clusters
        self.manifold_model_, emb = b.fit_manifold(feats, self.manifold_config_, k, self.random_state)
        self.cluster_model_, labels = b.fit_cluster(emb, self.cluster_config_, self.n_clusters, self.random_state)
        same = float(np.mean(np.asarray(b.to_numpy(labels)) == self.labels_))
        if same < 0.99:
            log.warning("the rebuilt models label %.1f%% of the training data as saved", 100 * same)

    def transform(self, X) -> np.ndarray:
        """Embed new images (encoder → UMAP transform): (N, n_components) float32."""
        self._check_fitted()
        self._restore_models()
        if self.model_ is None and X is not None and np.asarray(X).ndim == 2:
            z = torch.from_numpy(np.asarray(X, dtype=np.float32))  # features given directly
        else:
            images = self._prepare(X)
            z, _ = self._features(images, torch.device(self.device_))
        b = self._backend
        return np.asarray(b.to_numpy(b.transform_manifold(self.manifold_model_, b.handoff(z))), dtype=np.float32)

    def predict(self, X) -> np.ndarray:
        """Cluster labels of new images: encoder → UMAP transform → K-Means (or GMM) predict."""
        self._check_fitted()
        self._restore_models()
        b = self._backend
        emb = self.transform(X)
        return np.asarray(b.to_numpy(b.predict_cluster(self.cluster_model_, emb)), dtype=np.int64)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted estimator to folder ``path`` (atomically): weights, codes, labels, settings.

        No pickle: weights via ``torch.save`` of a state dict, arrays as ``.npz``, settings as JSON.
        """
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            if self.model_ is not None:
                torch.save(self.model_.state_dict(), tmp / "weights.pt")
            np.savez(tmp / "arrays.npz", latent=self.latent_, embedding=self.embedding_, labels=self.labels_)
            meta = dict(
                format_version=FORMAT_VERSION,
                params={k: (str(v) if isinstance(v, Path) else v) for k, v in self.get_params().items()},
                vae=asdict(self.vae_config_),
                train=asdict(self.train_config_),
                manifold=asdict(self.manifold_config_),
                cluster=asdict(self.cluster_config_),
                profile=self.profile_,
                backend=self.backend_,
                device=self.device_,
                timings=self.timings_,
                history=self.history_,
            )
            (tmp / "model.json").write_text(json.dumps(meta, indent=2))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", backend: str = "auto") -> MFVC:
        """Load a folder written by :meth:`save`. The manifold and clusterer are rebuilt on first use."""
        path = Path(path)
        meta_file = path / "model.json"
        if not meta_file.exists():
            raise MFVCError(f"{path} is not a saved MFVC model (no model.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise MFVCError(f"{path} has format version {meta.get('format_version')}, this version reads {FORMAT_VERSION}")
        params = dict(meta["params"], device=device, backend=backend, checkpoint=None, resume=False)
        est = cls(**params)
        placement = backends.resolve(device, backend)
        est.backend_, est.device_, est.placement_note_ = placement.backend, placement.device, placement.note
        est._backend = backends.get_backend(placement.backend)
        est.profile_ = meta["profile"]
        est.vae_config_ = VAEConfig(**meta["vae"])
        est.train_config_ = TrainConfig(**meta["train"])
        est.manifold_config_ = ManifoldConfig(**meta["manifold"])
        est.cluster_config_ = ClusterConfig(**meta["cluster"])
        est.timings_, est.history_ = meta["timings"], meta["history"]
        est.model_ = None
        if (path / "weights.pt").exists():
            est.model_ = BetaVAE(est.vae_config_)
            est.model_.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True))
            est.model_.to(placement.device).eval()
        with np.load(path / "arrays.npz", allow_pickle=False) as f:
            est.latent_, est.embedding_, est.labels_ = f["latent"], f["embedding"], f["labels"]
        est.n_features_in_ = est.latent_.shape[1]
        est.manifold_model_ = est.cluster_model_ = None
        est.handoff_ = {}
        return est
