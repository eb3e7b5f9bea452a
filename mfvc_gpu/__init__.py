"""mfvc_gpu: MFVC deep image clustering (β-VAE → UMAP → K-Means) on GPUs with RAPIDS, or on CPUs.

Public API::

    from mfvc_gpu import MFVC, load_dataset, evaluate
    ds = load_dataset("digits")
    est = MFVC(n_clusters=10).fit(ds.images)
    scores = evaluate(ds.labels, est.labels_)  # acc, nmi, purity, ari
"""

from .config import PROFILES, ClusterConfig, ManifoldConfig, RunConfig
from .data import fetch, load_dataset
from .errors import MFVCError
from .metrics import ari, cluster_acc, evaluate, nmi, purity
from .params import PARAMS
from .estimator import MFVC

__version__ = "0.1.0"

__all__ = [
    "MFVC", "MFVCError", "PARAMS", "PROFILES", "RunConfig", "ManifoldConfig", "ClusterConfig", "load_dataset", "fetch",
    "evaluate", "cluster_acc", "nmi", "purity", "ari", "__version__",
]
