"""MFVC on scikit-learn's estimator contract: ``parametrize_with_checks`` plus the image-path checks.

scikit-learn's checks feed 2-D tabular arrays. MFVC takes those with ``encoder='none'`` (feature
vectors go straight to the manifold and clustering stages), so the checks run on that path, once
with K-Means alone and once through UMAP, and every one of them passes: the expected-failures
dict is empty on purpose. With ``encoder='vae'`` the estimator's tags say it takes images only
(``two_d_array=False``, ``three_d_array=True``), which scikit-learn's checks cannot generate, so
the same contract is checked on images by the tests below.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from mfvc_gpu import MFVC

FEATURE_CONFIGS = [
    MFVC(n_clusters=3, encoder="none", manifold="none", progress=False),
    MFVC(n_clusters=3, encoder="none", n_neighbors=5, progress=False),
]
EXPECTED_FAILED_CHECKS: dict[str, str] = {}  # none: every check passes on the feature path


@parametrize_with_checks(FEATURE_CONFIGS, expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_checks(estimator, check):
    check(estimator)


def test_tags_say_images_for_the_network_and_tables_for_features():
    vae, flat = MFVC().__sklearn_tags__(), FEATURE_CONFIGS[0].__sklearn_tags__()
    assert vae.input_tags.three_d_array and not vae.input_tags.two_d_array
    assert flat.input_tags.two_d_array and flat.input_tags.three_d_array


def test_the_contract_on_images(digits):
    est = MFVC(n_clusters=10, epochs=1, latent_dim=4, manifold="none", progress=False, random_state=3)
    with pytest.raises(NotFittedError):
        est.predict(digits.images[:5])
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert repr(est) == "MFVC(epochs=1, latent_dim=4, manifold='none', progress=False, random_state=3)"
    assert "<div" in est._repr_html_()
    labels = est.fit_predict(digits.images[:300])
    assert est.fit(digits.images[:300]) is est
    np.testing.assert_array_equal(est.labels_, labels)  # same seed, same labels
    assert not hasattr(est, "n_features_in_")  # no feature count for images
    with pytest.raises(ValueError, match="clusters images"):
        est.predict(np.zeros((3, 64)))


def test_random_state_takes_none_an_int_or_a_random_state(blobs):
    x, _ = blobs
    a = MFVC(n_clusters=5, manifold="none", random_state=np.random.RandomState(1)).fit_features(x)
    b = MFVC(n_clusters=5, manifold="none", random_state=np.random.RandomState(1)).fit_features(x)
    assert a.seed_ == b.seed_
    c = MFVC(n_clusters=5, manifold="none", random_state=None).fit_features(x)
    assert isinstance(c.seed_, int)


def test_fit_leaves_the_global_random_streams_alone(digits):
    import torch

    np.random.seed(11)
    torch.manual_seed(11)
    expected = (np.random.rand(), torch.rand(1).item())
    np.random.seed(11)
    torch.manual_seed(11)
    MFVC(n_clusters=10, epochs=1, latent_dim=4, manifold="none", progress=False).fit(digits.images[:200])
    assert (np.random.rand(), torch.rand(1).item()) == expected


def test_fit_features_validates_like_fit():
    with pytest.raises(ValueError, match="NaN"):
        MFVC(n_clusters=2).fit_features(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="2D array"):
        MFVC(n_clusters=2).fit_features(np.zeros(5))
