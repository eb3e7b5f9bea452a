"""The learned map into the UMAP space, streamed labelling and fitting on a sample (``transform``, ``fit_sample``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from clihelpers import CPU

from mfvc_gpu import MFVC
from mfvc_gpu.embedding_map import EmbeddingMap, TorchClusterer
from mfvc_gpu.errors import MFVCError
from mfvc_gpu.labelling import label

SMALL = dict(n_clusters=10, n_neighbors=10, epochs=2, batch_size=32, device="cpu", backend="cpu", progress=False)


@pytest.fixture(scope="module")
def split(digits):
    """digits: 600 to fit on, the next 300 as new images."""
    x, y = digits.images, digits.labels
    return x[:600], y[:600], x[600:900], y[600:900]


@pytest.fixture(scope="module")
def fitted(split):
    return MFVC(**SMALL, cluster="gmm").fit(split[0])


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    return fitted.save(tmp_path_factory.mktemp("m") / "model")


def test_the_map_is_trained_and_places_training_codes_near_their_coordinates(fitted):
    m = fitted.embedding_map_
    assert isinstance(m, EmbeddingMap) and (m.in_dim, m.out_dim) == (32, 10)
    with torch.no_grad():
        placed = m(torch.from_numpy(fitted.latent_)).numpy()
    spread = fitted.embedding_.std(0).mean()
    assert np.sqrt(((placed - fitted.embedding_) ** 2).mean()) < 0.25 * spread
    assert "map" in fitted.timings_


def test_predict_on_the_training_images_returns_labels_exactly(fitted, split):
    assert np.array_equal(fitted.predict(split[0]), fitted.labels_)
    assert np.array_equal(fitted.transform(split[0]), fitted.embedding_)


def test_new_images_get_the_map_labels_and_umap_transform_still_works(fitted, split):

    x_new, y_new = split[2], split[3]
    by_map = fitted.predict(x_new)
    emb = fitted.transform(x_new)
    assert by_map.shape == (300,) and emb.shape == (300, 10) and np.isfinite(emb).all()
    # the same codes clustered with UMAP's own transform for new points (the stages are seeded alike)
    by_umap = MFVC(**dict(fitted.get_params(), out_of_sample="umap")).fit_features(fitted.latent_)
    assert by_umap.embedding_map_ is None
    umap_labels = by_umap.predict(fitted.labeller().codes(x_new).numpy())
    from mfvc_gpu.metrics import evaluate as score

    # two ways to label new images: both score alike against the true classes
    assert abs(score(y_new, by_map)["acc"] - score(y_new, umap_labels)["acc"]) < 0.1


def test_torch_clusterer_equals_scikit_learn_predict():
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from mfvc_gpu.backends.cpu import CPUBackend

    rng = np.random.default_rng(0)
    u = np.concatenate([rng.normal(c, 1.0, (200, 4)) for c in (0, 4, 8)]).astype(np.float32)
    new = rng.normal(4, 4, (2000, 4)).astype(np.float32)
    for model in (KMeans(3, n_init=2, random_state=0).fit(u), GaussianMixture(3, random_state=0).fit(u)):
        ours = TorchClusterer(CPUBackend().cluster_state(model), torch.device("cpu"))(torch.from_numpy(new))
        assert np.array_equal(ours.numpy(), model.predict(new))


def test_the_map_round_trips_through_save_and_load(fitted, saved, split):
    assert (saved / "map.pt").is_file()
    loaded = MFVC.load(saved)
    assert loaded.manifold_model_ is None  # nothing refitted
    a, b = fitted.transform_predict(split[2]), loaded.transform_predict(split[2])
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert loaded.manifold_model_ is None  # and the map path never needed the UMAP model
    assert np.array_equal(loaded.predict(split[0]), fitted.labels_)


def test_streamed_labelling_equals_one_chunk(fitted, split):
    x = np.concatenate([split[2], split[0][:100]])
    whole = fitted.labeller()
    whole.chunk = len(x)
    streamed = fitted.labeller()
    streamed.chunk = 37
    a, b = label(whole, x), label(streamed, x)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.seen, b.seen)
    np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-5, atol=1e-5)
    assert (b.seen[-100:] == np.arange(100)).all() and (b.seen[:-100] == -1).all()


def test_streamed_labelling_holds_one_chunk_whatever_the_number_of_images(fitted, split):
    """Memory of the streamed path does not grow with N: every step sees at most one chunk, and the peak of
    the Python-tracked allocations, less the outputs, is the same for N and 10 N images."""
    import tracemalloc

    def run(n):
        x = np.resize(split[2], (n, *split[2].shape[1:]))
        lab = fitted.labeller(match=False)
        lab.chunk = 64
        seen = []
        codes = lab.codes
        lab.codes = lambda c: (seen.append(len(c)), codes(c))[1]
        tracemalloc.start()
        out = label(lab, x, embedding=False)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return max(seen), peak - out.labels.nbytes - out.seen.nbytes

    (small_chunk, small_peak), (large_chunk, large_peak) = run(300), run(3000)
    assert small_chunk == large_chunk == 64
    assert large_peak < 1.5 * small_peak + 200_000, (small_peak, large_peak)


def test_fit_sample_fits_on_a_sample_and_labels_every_image(split):
    x = np.concatenate([split[0], split[2]])
    est = MFVC(**SMALL, fit_sample=500, random_state=3).fit(x)
    assert est.sample_.shape == (500,) and len(np.unique(est.sample_)) == 500
    assert est.labels_.shape == (900,) and est.embedding_.shape == (900, 10) and est.latent_.shape == (900, 32)
    again = MFVC(**SMALL, fit_sample=500, random_state=3).fit(x)
    assert np.array_equal(again.sample_, est.sample_)  # drawn with the seed
    assert np.array_equal(est.predict(x), est.labels_)
    assert "label_rest" in est.timings_
    rest = np.setdiff1d(np.arange(900), est.sample_)
    assert np.array_equal(est.labels_[rest], est.predict(x[rest]))


def test_fit_sample_in_the_cli_marks_the_sample_in_labels_csv(cli, tmp_path, digits_u8):
    x, y = digits_u8
    data = tmp_path / "d.npz"
    np.savez(data, images=x[:400], labels=y[:400])
    out = tmp_path / "run"
    rc, stdout, _ = cli(
        "cluster",
        "--dataset",
        data,
        "--fit-sample",
        "300",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--n-neighbors",
        "10",
        *CPU,
        "--out",
        out,
    )
    assert rc == 0, stdout
    rows = np.loadtxt(out / "labels.csv", delimiter=",", skiprows=1, dtype=np.int64)
    header = (out / "labels.csv").read_text().splitlines()[0]
    assert header == "index,cluster,label,in_sample" and len(rows) == 400 and rows[:, 3].sum() == 300
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 400 and metrics["fit_sample"]["n_samples"] == 300 and "acc" in metrics["fit_sample"]
    assert yaml.safe_load((out / "config.yaml").read_text())["fit_sample"] == 300
    assert "fitted images" in (out / "report.html").read_text()


def _copy(saved, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    return folder


def test_a_damaged_or_edited_map_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    data = (folder / "map.pt").read_bytes()
    cases = {
        "truncated": lambda: (folder / "map.pt").write_bytes(data[: len(data) // 2]),
        "missing": lambda: (folder / "map.pt").unlink(),
        "wrong size": lambda: torch.save(EmbeddingMap(32, 3).state_dict(), folder / "map.pt"),
        "not a map": lambda: torch.save({"w": torch.zeros(3)}, folder / "map.pt"),
        "NaN": lambda: torch.save(
            {k: v.fill_(float("nan")) for k, v in EmbeddingMap(32, 10).state_dict().items()}, folder / "map.pt"
        ),
    }
    for case, edit in cases.items():
        (folder / "map.pt").write_bytes(data)
        edit()
        with pytest.raises(MFVCError) as info:
            MFVC.load(folder)
        assert "map.pt" in str(info.value) and "\n" not in str(info.value), case


def test_a_map_beside_a_model_without_one_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    meta = json.loads((folder / "model.json").read_text())
    meta["manifold"]["out_of_sample"] = "umap"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(MFVCError, match="map.pt"):
        MFVC.load(folder)


def test_a_model_saved_before_the_map_loads_and_uses_umap_transform(saved, tmp_path, split, fitted):
    folder = _copy(saved, tmp_path)
    (folder / "map.pt").unlink()
    meta = json.loads((folder / "model.json").read_text())
    meta["format_version"] = 2
    del meta["manifold"]["out_of_sample"]
    for key in ("out_of_sample", "fit_sample"):
        del meta["params"][key]
    (folder / "model.json").write_text(json.dumps(meta))
    old = MFVC.load(folder)
    assert old.embedding_map_ is None and old.manifold_config_.out_of_sample == "umap"
    assert np.array_equal(old.predict(split[0]), fitted.labels_)
    labels = old.predict(split[2])  # UMAP's transform, after a refit on the saved codes
    assert old.manifold_model_ is not None and labels.shape == (300,)


def test_a_bad_out_of_sample_is_refused_before_any_work(split):
    with pytest.raises(MFVCError, match="out_of_sample='nearest' is invalid"):
        MFVC(**SMALL, out_of_sample="nearest").fit(split[0])


def test_row_matcher_finds_training_codes_within_the_tolerance_only():
    from mfvc_gpu.labelling import RowMatcher

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5000, 16)).astype(np.float32)
    m = RowMatcher(ref, torch.device("cpu"))
    near = ref[::3] + rng.normal(scale=1e-7, size=ref[::3].shape).astype(np.float32)  # last-bit noise
    moved = ref[1::3].copy()
    moved[:, 5] += 1e-2  # one coordinate off by far more than the tolerance
    found = m(torch.from_numpy(np.concatenate([near, moved, rng.normal(size=(100, 16)).astype(np.float32)]))).numpy()
    assert (found[: len(near)] == np.arange(0, 5000, 3)).all()
    assert (found[len(near) :] == -1).all()
    assert (m(torch.zeros((0, 16))).numpy() == -1).all() and (m(torch.zeros((3, 8))).numpy() == -1).all()
