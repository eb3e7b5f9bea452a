import numpy as np
import pytest
from scipy.stats import entropy

from mfvc_gpu.metrics import ari, cluster_acc, evaluate, nmi, purity


def test_acc_is_permutation_invariant():
    y = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_acc(y, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    assert cluster_acc(y, np.array([2, 2, 0, 1, 1, 1])) == pytest.approx(5 / 6)


def test_acc_with_more_clusters_than_classes():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 2, 2, 1, 1, 1, 1])  # class 0 split in two: only one half can match
    assert cluster_acc(y, pred) == pytest.approx(6 / 8)
    assert purity(y, pred) == 1.0  # purity rewards over-splitting; ACC does not


def test_nmi_is_2i_over_entropy_sum():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    c = np.where(rng.random(500) < 0.7, y, rng.integers(0, 5, 500))
    joint = np.histogram2d(y, c, bins=(4, 5))[0] / 500
    py, pc = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = (joint[nz] * np.log(joint[nz] / np.outer(py, pc)[nz])).sum()
    assert nmi(y, c) == pytest.approx(2 * mi / (entropy(py) + entropy(pc)), rel=1e-9)


def test_purity_and_ari_values():
    y = np.array([0, 0, 1, 1, 1, 2])
    c = np.array([0, 0, 0, 1, 1, 1])
    assert purity(y, c) == pytest.approx(4 / 6)
    assert ari(y, y) == 1.0
    assert ari(y, c) < 0.5


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="3 labels but y_pred has 2"):
        cluster_acc([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="no labels"):
        nmi([], [])
    assert set(evaluate([0, 1], [1, 0])) == {"acc", "nmi", "purity", "ari"}
