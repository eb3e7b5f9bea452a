"""CPU backend: umap-learn for the manifold, scikit-learn for Isomap, K-Means, DBSCAN and GMM."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ..errors import MFVCError
from ..settings import ClusterConfig, ManifoldConfig

log = logging.getLogger(__name__)


class CPUBackend:
    """Every stage after the encoder on the CPU; arrays are NumPy float32 inside."""

    name = "cpu"

    def prepare(self, manifold: ManifoldConfig, n_components: int, seed: int, gpu_memory: str) -> None:
        """Nothing to set up: every setting runs here."""

    def before_manifold(self, gpu_memory: str, device: str) -> None:
        """Nothing to hand back: the stages after the encoder allocate host memory."""

    def handoff_record(self) -> dict:
        """The codes reach this backend as a host array; nothing to record."""
        return {}

    def all_finite(self, x) -> bool:
        return bool(np.isfinite(np.asarray(x)).all())

    def handoff(self, z) -> np.ndarray:
        """Latent codes (a torch tensor on any device, or an array) as a C-contiguous float32 array."""
        if hasattr(z, "detach"):
            z = z.detach().cpu().numpy()
        return np.ascontiguousarray(z, dtype=np.float32)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def fit_manifold(self, x: np.ndarray, cfg: ManifoldConfig, n_components: int, seed: int):
        """Fit the manifold learner; returns (model, embedding). ``method='none'`` passes x through."""
        if cfg.method == "none":
            return None, x
        if cfg.method == "umap":
            import umap

            model = umap.UMAP(
                n_neighbors=cfg.n_neighbors,
                min_dist=cfg.min_dist,
                n_components=n_components,
                metric=cfg.metric,
                random_state=seed,
            )
        elif cfg.method == "isomap":
            from sklearn.manifold import Isomap

            model = Isomap(n_neighbors=cfg.n_neighbors, n_components=n_components, metric=cfg.metric)
        else:
            raise MFVCError(f"manifold={cfg.method!r} is not one of umap, isomap, none")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="n_jobs value .* overridden")  # a seed turns off parallelism
            embedding = model.fit_transform(x)
        return model, np.ascontiguousarray(embedding, dtype=np.float32)

    def transform_manifold(self, model, x: np.ndarray) -> np.ndarray:
        if model is None:
            return x
        return np.ascontiguousarray(model.transform(x), dtype=np.float32)

    def fit_cluster(self, u: np.ndarray, cfg: ClusterConfig, n_clusters: int, seed: int):
        """Cluster ``u``; returns (model, labels). DBSCAN labels noise as -1."""
        if cfg.method == "kmeans":
            from sklearn.cluster import KMeans

            model = KMeans(n_clusters=n_clusters, n_init=cfg.n_init, random_state=seed)
        elif cfg.method == "gmm":
            from sklearn.mixture import GaussianMixture

            model = GaussianMixture(n_components=n_clusters, n_init=cfg.n_init, random_state=seed)
            u = np.asarray(
                u, dtype=np.float64
            )  # EM's covariances: float32 loses their positive definiteness on tight clumps
        elif cfg.method == "dbscan":
            from sklearn.cluster import DBSCAN

            model = DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples)
        else:
            raise MFVCError(f"cluster={cfg.method!r} is not one of kmeans, dbscan, gmm")
        try:
            labels = model.fit_predict(u)
        except ValueError as exc:
            if cfg.method != "gmm":
                raise
            raise MFVCError(
                f"the Gaussian mixture could not be fitted to the {len(u)} embedded points: {str(exc).split('.')[0]}; "
                "use cluster='kmeans' (--cluster kmeans), or fewer clusters"
            ) from exc
        return model, np.asarray(labels, dtype=np.int64)

    def refine_cluster(self, model, u: np.ndarray, seed: int):
        """``model`` (scikit-learn's K-Means or mixture) refitted on ``u`` from its own centres, or weights,
        means and precisions, with one restart: the same clusters, fitted to the points' new coordinates."""
        if hasattr(model, "cluster_centers_"):
            from sklearn.cluster import KMeans

            c = np.asarray(model.cluster_centers_, dtype=np.float32)
            refined = KMeans(n_clusters=len(c), init=c, n_init=1, random_state=seed)
        elif hasattr(model, "means_"):
            from sklearn.mixture import GaussianMixture

            chol = model.precisions_cholesky_
            refined = GaussianMixture(
                n_components=len(model.means_),
                covariance_type=model.covariance_type,
                weights_init=model.weights_,
                means_init=model.means_,
                precisions_init=chol @ chol.transpose(0, 2, 1),
                n_init=1,
                random_state=seed,
            )
            u = np.asarray(u, dtype=np.float64)
        else:
            raise MFVCError(f"{type(model).__name__} cannot be refitted from its state; use cluster='kmeans' or 'gmm'")
        try:
            labels = refined.fit_predict(u)
        except ValueError as exc:
            raise MFVCError(
                f"the clusterer could not be refitted to the learned map's coordinates: {str(exc).split('.')[0]}; "
                "use out_of_sample='umap' (--out-of-sample umap)"
            ) from exc
        return refined, np.asarray(labels, dtype=np.int64)

    def kmeans_from_centres(self, centres, seed: int):
        """A fitted scikit-learn ``KMeans`` whose centres are exactly ``centres`` (for ``predict``):
        one Lloyd step on the centres themselves leaves every centre where it is."""
        from sklearn.cluster import KMeans

        c = np.ascontiguousarray(self.handoff(centres))
        return KMeans(n_clusters=len(c), init=c, n_init=1, max_iter=1, random_state=seed).fit(c)

    def predict_cluster(self, model, u: np.ndarray) -> np.ndarray:
        if not hasattr(model, "predict"):  # scikit-learn's DBSCAN
            raise MFVCError(f"{type(model).__name__} cannot label new points; use cluster='kmeans' or 'gmm' to predict")
        return np.asarray(model.predict(u), dtype=np.int64)

    def cluster_state(self, model) -> dict[str, np.ndarray]:
        """K-Means centres, or a Gaussian mixture's weights, means and covariances (empty for DBSCAN)."""
        if hasattr(model, "cluster_centers_"):
            return {"kmeans_centres": np.asarray(model.cluster_centers_, dtype=np.float32)}
        if hasattr(model, "means_"):
            return {f"gmm_{k}": np.asarray(getattr(model, f"{k}_")) for k in GMM_STATE}
        return {}

    def cluster_from_state(self, state: dict[str, np.ndarray], seed: int):
        """The fitted clusterer back from :meth:`cluster_state` (None for DBSCAN: it labels no new points)."""
        if "kmeans_centres" in state:
            return self.kmeans_from_centres(state["kmeans_centres"], seed)
        if "gmm_means" in state:
            from sklearn.mixture import GaussianMixture

            gm = GaussianMixture(n_components=len(state["gmm_means"]), random_state=seed)
            for k in GMM_STATE:
                setattr(gm, f"{k}_", state[f"gmm_{k}"])
            gm.converged_, gm.n_iter_ = True, 0
            return gm
        return None


GMM_STATE = ("weights", "means", "covariances", "precisions_cholesky")  # what a fitted mixture's predict reads
