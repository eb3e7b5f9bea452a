import json

import numpy as np
import pytest
import torch

from mfvc_gpu import MFVC, MFVCError, evaluate
from mfvc_gpu.data import unit_float
from mfvc_gpu.metrics import cluster_acc


@pytest.fixture(scope="module")
def fitted(digits):
    """A quick MFVC on 400 digits: 2 epochs, then UMAP and the fast profile's Gaussian mixture."""
    est = MFVC(n_clusters=10, epochs=2, batch_size=64, latent_dim=8, random_state=0, progress=False)
    return est.fit(digits.images[:400])


def test_init_only_stores_parameters():
    est = MFVC(n_clusters=-3, beta="nonsense")  # no validation before fit
    assert est.n_clusters == -3 and est.beta == "nonsense"
    assert not hasattr(est, "labels_")


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(n_clusters=0), "n_clusters=0"),
        (dict(n_clusters=5000), "exceeds the number of samples"),
        (dict(beta=-1.0), "beta=-1.0"),
        (dict(attention="transformer"), "attention='transformer'"),
        (dict(n_neighbors=1), "n_neighbors=1"),
        (dict(min_dist=2.0), "min_dist=2.0"),
        (dict(epochs=0), "epochs=0"),
        (dict(cluster="spectral"), "cluster='spectral'"),
    ],
)
def test_fit_rejects_bad_parameters(digits, params, message):
    with pytest.raises(MFVCError, match=message):
        MFVC(**params).fit(digits.images[:100])


def test_explicit_backends_never_fall_back(digits):
    with pytest.raises(MFVCError, match="rapids.*(CUDA|cuML)"):
        MFVC(backend="rapids").fit(digits.images[:50])
    if not torch.cuda.is_available():
        with pytest.raises(MFVCError, match="torch sees no CUDA GPU"):
            MFVC(device="cuda").fit(digits.images[:50])


def test_fit_sets_the_fitted_state(fitted, digits):
    est = fitted
    assert est.labels_.shape == (400,) and set(est.labels_) <= set(range(10))
    assert est.embedding_.shape == (400, 10)  # n_components = n_clusters
    assert est.latent_.shape == (400, 8)
    assert (est.backend_, est.device_, est.profile_) == ("cpu", "cpu", "fast")  # unmarked tests are pinned to the CPU
    assert est.train_config_.epochs == 2 and est.seed_ == 0
    stages = ("train", "encode", "handoff", "manifold", "cluster", "map")
    assert set(est.timings_) == {*stages, "total"} and est.timings_["train"] > 0 and est.timings_["manifold"] > 0
    assert est.timings_["total"] >= sum(est.timings_[s] for s in stages)
    assert len(est.history_) == 2
    # two epochs on 400 images already beat chance by far (random labels score ≈ 0.13 here)
    chance = cluster_acc(digits.labels[:400], np.random.default_rng(0).integers(0, 10, 400))
    assert chance < 0.2 and cluster_acc(digits.labels[:400], est.labels_) > 0.3


def test_pixel_baseline_on_digits(digits):
    """UMAP + K-Means on raw pixels: the known ≈0.8–0.9 ACC on digits."""
    est = MFVC(n_clusters=10, encoder="none", metric="euclidean", cluster="kmeans", random_state=0).fit(digits.images)
    scores = evaluate(digits.labels, est.labels_)
    assert scores["acc"] > 0.75 and scores["nmi"] > 0.75
    assert est.model_ is None and "train" not in est.timings_


def test_kmeans_on_pixels_is_worse_than_umap_kmeans(digits):
    plain = MFVC(n_clusters=10, encoder="none", manifold="none", cluster="kmeans").fit(digits.images)
    assert plain.embedding_.shape == (1797, 1024)
    with_umap = MFVC(n_clusters=10, encoder="none", cluster="kmeans").fit(digits.images)
    assert with_umap.embedding_.shape == (1797, 10)
    acc_plain, acc_umap = cluster_acc(digits.labels, plain.labels_), cluster_acc(digits.labels, with_umap.labels_)
    assert 0.4 < acc_plain < acc_umap - 0.05, (acc_plain, acc_umap)


def test_fit_features_and_predict(blobs):
    x, y = blobs
    est = MFVC(n_clusters=5, random_state=0).fit_features(x)
    assert cluster_acc(y, est.labels_) == 1.0
    np.testing.assert_array_equal(est.predict(x[:50]), est.labels_[:50])  # training rows keep their labels
    moved = x[:50] + 0.01  # new points near the training ones land in the same clusters
    assert (est.predict(moved) == est.labels_[:50]).mean() > 0.95


def test_dbscan_cannot_predict(blobs):
    x, _ = blobs
    est = MFVC(n_clusters=5, cluster="dbscan", eps=0.5, min_samples=5).fit_features(x)
    assert len(set(est.labels_) - {-1}) == 5  # five well-separated blobs, found without k
    np.testing.assert_array_equal(est.predict(x[:5]), est.labels_[:5])  # training rows: their own labels
    with pytest.raises(MFVCError, match="cannot label new points"):
        est.predict(x[:5] + 0.05)


def test_transform_and_predict_new_images(fitted, digits):
    emb = fitted.transform(digits.images[:400])
    assert emb.shape == (400, 10) and emb.dtype == np.float32
    pred = fitted.predict(digits.images[:400])
    np.testing.assert_array_equal(pred, fitted.labels_)  # the training images keep the labels of the fit
    np.testing.assert_array_equal(fitted.transform(digits.images[:400]), fitted.embedding_)
    new = fitted.predict(digits.images[400:600])  # never seen: encoder → the learned map → the mixture
    assert new.shape == (200,) and cluster_acc(digits.labels[400:600], new) > 0.3


def test_save_load_round_trip_without_pickle(fitted, digits, tmp_path):
    path = fitted.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "map.pt", "model.json", "weights.pt"]
    meta = json.loads((path / "model.json").read_text())
    assert meta["params"]["n_clusters"] == 10 and meta["backend"] == "cpu"
    # weights and the map load with weights_only=True: no code objects inside
    for name in ("weights.pt", "map.pt"):
        state = torch.load(path / name, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded = MFVC.load(path, device="cpu")
    np.testing.assert_array_equal(loaded.labels_, fitted.labels_)
    x = unit_float(torch.from_numpy(digits.images[:5]))
    z_new = loaded.model_.encoder(x)[0]
    z_old = fitted.model_.to("cpu").encoder(x)[0]
    assert torch.allclose(z_new, z_old, atol=1e-5)
    np.testing.assert_array_equal(loaded.predict(digits.images[:400]), fitted.labels_)  # the same model, no refit
    np.testing.assert_array_equal(loaded.predict(digits.images[400:500]), fitted.predict(digits.images[400:500]))
    assert type(fitted.cluster_model_).__name__ == "GaussianMixture"  # the fast profile's clusterer
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(loaded.cluster_model_, attr), getattr(fitted.cluster_model_, attr))
    assert not list(tmp_path.glob(".model.*"))  # no temporary folder left behind


def test_load_rejects_other_folders(tmp_path):
    with pytest.raises(MFVCError, match="not a saved MFVC model"):
        MFVC.load(tmp_path)


def test_get_set_params():
    est = MFVC(n_clusters=4)
    assert est.get_params()["n_clusters"] == 4 and "random_state" in est.get_params()
    assert est.set_params(beta=0.5).beta == 0.5
    with pytest.raises(ValueError, match="Invalid parameter 'gamma'"):
        est.set_params(gamma=1)


def test_non_image_input_is_rejected():
    with pytest.raises(MFVCError, match="clusters images"):
        MFVC().fit(np.zeros((10, 5)))
