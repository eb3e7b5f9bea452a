"""Clustering quality: ACC (Hungarian matching), NMI, purity and ARI."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def _check(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("no labels to score")
    return y_true, y_pred


def cluster_acc(y_true, y_pred) -> float:
    """Best one-to-one matching of clusters to classes (Hungarian), as a fraction of all samples.

    With more clusters than classes the unmatched clusters count as wrong (and the reverse).
    """
    y_true, y_pred = _check(y_true, y_pred)
    c = contingency_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(c, maximize=True)
    return float(c[rows, cols].sum() / y_true.size)


def nmi(y_true, y_pred) -> float:
    """Normalised mutual information, 2·I(t; c) / (H(t) + H(c))."""
    y_true, y_pred = _check(y_true, y_pred)
    return float(normalized_mutual_info_score(y_true, y_pred, average_method="arithmetic"))


def purity(y_true, y_pred) -> float:
    """Fraction of samples that belong to the majority class of their cluster."""
    y_true, y_pred = _check(y_true, y_pred)
    c = contingency_matrix(y_true, y_pred)
    return float(c.max(axis=0).sum() / y_true.size)


def ari(y_true, y_pred) -> float:
    """Adjusted Rand index."""
    y_true, y_pred = _check(y_true, y_pred)
    return float(adjusted_rand_score(y_true, y_pred))


def evaluate(y_true, y_pred) -> dict[str, float]:
    """All four scores in one dict: acc, nmi, purity, ari."""
    return dict(
        acc=cluster_acc(y_true, y_pred), nmi=nmi(y_true, y_pred), purity=purity(y_true, y_pred), ari=ari(y_true, y_pred)
    )
