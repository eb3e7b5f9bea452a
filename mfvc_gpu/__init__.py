"""mfvc_gpu: MFVC deep image clustering (β-VAE → UMAP → K-Means) on GPUs with RAPIDS, or on CPUs.

Public API::

    from mfvc_gpu import MFVC, load_dataset, evaluate
    ds = load_dataset("digits")
    est = MFVC(n_clusters=10).fit(ds.images)
    scores = evaluate(ds.labels, est.labels_)  # acc, nmi, purity, ari

The heavy parts (torch, scikit-learn) are imported on first use, so ``mfvc-gpu`` answers at once
and a Ctrl-C or SIGTERM in its first seconds is handled like any other.
"""

from __future__ import annotations

import importlib

from .errors import MFVCError

__version__ = "0.1.0"

_LAZY = {
    "MFVC": "estimator",
    "PARAMS": "params",
    "PROFILES": "params",
    "RunConfig": "config",
    "ManifoldConfig": "config",
    "ClusterConfig": "config",
    "VAEConfig": "settings",
    "TrainConfig": "settings",
    "load_dataset": "data",
    "fetch": "data",
    "evaluate": "metrics",
    "cluster_acc": "metrics",
    "nmi": "metrics",
    "purity": "metrics",
    "ari": "metrics",
}

__all__ = ["MFVCError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mfvc_gpu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
