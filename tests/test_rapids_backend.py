"""The rapids backend: cuML parameter mapping, placement decisions and DLPack pointer checks.

The CPU tests exercise everything around cuML with the real CPU libraries; the ``gpu`` tests
need torch CUDA and CuPy, the ``rapids`` tests cuML (both skip here with a reason).
"""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest
import torch

from mfvc_gpu import MFVC, MFVCError, backends
from mfvc_gpu.backends import interop
from mfvc_gpu.backends.rapids import KNN_BUILDS, RapidsBackend, dbscan_params, kmeans_params, umap_params
from mfvc_gpu.config import ClusterConfig, ManifoldConfig

# ---------------------------------------------------------------- parameter mapping


def test_umap_params_carry_the_paper_defaults_under_cumls_names():
    p = umap_params(ManifoldConfig(metric="euclidean"), n_components=10, seed=7)
    assert p == dict(
        n_neighbors=27,
        min_dist=0.0,
        n_components=10,
        metric="euclidean",
        random_state=7,
        build_algo="brute_force_knn",
        output_type="cupy",
    )


def test_umap_params_follow_the_config_and_the_knn_choice():
    cfg = ManifoldConfig(n_neighbors=15, min_dist=0.25, metric="cosine", knn="nn-descent")
    p = umap_params(cfg, n_components=3, seed=1)
    assert (p["n_neighbors"], p["min_dist"], p["metric"], p["n_components"]) == (15, 0.25, "cosine", 3)
    assert p["build_algo"] == "nn_descent"
    assert set(KNN_BUILDS.values()) == {"brute_force_knn", "nn_descent"}  # cuML's own names


def test_an_unknown_knn_build_is_refused_by_the_config_and_by_umap_params():
    with pytest.raises(MFVCError, match="knn='annoy' is invalid: must be one of brute, nn-descent"):
        ManifoldConfig(knn="annoy", metric="euclidean")
    cfg = ManifoldConfig(metric="euclidean")
    object.__setattr__(cfg, "knn", "annoy")  # past the config's own check
    with pytest.raises(MFVCError, match="knn='annoy' is not one of brute, nn-descent"):
        umap_params(cfg, 2, 0)


def test_shared_umap_settings_are_umap_learn_parameters_with_the_same_values():
    """The settings both backends pass must mean the same thing: they are umap-learn's names too."""
    import umap

    learn = inspect.signature(umap.UMAP).parameters
    p = umap_params(ManifoldConfig(metric="euclidean"), n_components=5, seed=3)
    shared = {k: v for k, v in p.items() if k not in ("build_algo", "output_type")}
    assert set(shared) <= set(learn)
    assert learn["n_neighbors"].default != p["n_neighbors"]  # 27 is set, not inherited from a default


def test_cluster_params_match_scikit_learns_settings():
    from sklearn.cluster import DBSCAN, KMeans

    k = kmeans_params(ClusterConfig(method="kmeans"), n_clusters=4, seed=9)
    assert k == dict(n_clusters=4, n_init=10, random_state=9, output_type="cupy")
    assert {n for n in k if n != "output_type"} <= set(inspect.signature(KMeans).parameters)
    d = dbscan_params(ClusterConfig(method="dbscan", eps=0.3, min_samples=7))
    assert d == dict(eps=0.3, min_samples=7, output_type="cupy")
    assert {n for n in d if n != "output_type"} <= set(inspect.signature(DBSCAN).parameters)


# ---------------------------------------------------------------- missing libraries


@pytest.mark.skipif(backends.rapids_available(), reason="CuPy/cuML are installed here")
def test_backend_builds_without_cupy_and_says_how_to_get_it():
    b = backends.get_backend("rapids")  # lazy imports: constructing it needs nothing
    assert b.name == "rapids"
    with pytest.raises(MFVCError, match="environment.yml"):
        b.handoff(torch.zeros(4, 2))


@pytest.mark.skipif(backends.rapids_available(), reason="cuML is installed here")
def test_fitting_without_cuml_names_the_fix():
    b = RapidsBackend()
    with pytest.raises(MFVCError, match="needs cuML.*environment.yml.*docker/compose.yaml"):
        b.fit_manifold(np.zeros((30, 2), np.float32), ManifoldConfig(metric="euclidean"), 2, 0)
    with pytest.raises(MFVCError, match="needs cuML"):
        b.fit_cluster(np.zeros((30, 2), np.float32), ClusterConfig(method="kmeans"), 2, 0)


def test_rapids_backend_still_rejects_unknown_stage_names():
    b = RapidsBackend()
    cfg = ManifoldConfig(metric="euclidean")
    object.__setattr__(cfg, "method", "tsne")  # past the config's own check
    with pytest.raises(MFVCError, match="manifold='tsne'"):
        b.fit_manifold(np.zeros((5, 2), np.float32), cfg, 2, 0)
    with pytest.raises(MFVCError, match="manifold='tsne' is invalid"):
        ManifoldConfig(method="tsne", metric="euclidean")


def test_manifold_none_passes_the_array_through_untouched():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    model, out = RapidsBackend().fit_manifold(x, ManifoldConfig(method="none", metric="euclidean"), 2, 0)
    assert model is None and out is x


def test_to_numpy_of_a_host_array_copies_nothing_and_counts_nothing():
    b = RapidsBackend()
    x = np.ones((3, 2), np.float32)
    assert interop.data_pointer(b.to_numpy(x)) == interop.data_pointer(x)
    assert b.last_handoff.get("device_to_host_bytes", 0) == 0


# ---------------------------------------------------------------- placement decisions


def _fake(monkeypatch, cuda: bool, rapids: bool) -> None:
    monkeypatch.setattr(backends, "cuda_available", lambda: cuda)
    monkeypatch.setattr(backends, "rapids_available", lambda dask=False: rapids)


@pytest.mark.parametrize(
    "cuda, rapids, device, backend, expected",
    [
        (True, True, "auto", "auto", ("cuda", "rapids")),
        (True, False, "auto", "auto", ("cuda", "cpu")),  # mixed mode
        (False, True, "auto", "auto", ("cpu", "cpu")),  # cuML without a GPU is no use
        (True, True, "cpu", "auto", ("cpu", "cpu")),
        (True, True, "auto", "cpu", ("cuda", "cpu")),
        (True, True, "cuda:1", "rapids", ("cuda:1", "rapids")),
    ],
)
def test_placement_decisions(monkeypatch, cuda, rapids, device, backend, expected):
    _fake(monkeypatch, cuda, rapids)
    p = backends.place(device, backend)
    assert (p.device, p.backend) == expected


def test_mixed_mode_warns_once_and_says_so(monkeypatch, caplog):
    _fake(monkeypatch, cuda=True, rapids=False)
    with caplog.at_level(logging.WARNING, logger="mfvc_gpu.backends"):
        p = backends.place("auto", "auto")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "UMAP and clustering on the CPU" in warnings[0].getMessage()
    assert p.note and "CUDA without cuML" in p.note


def test_explicit_rapids_never_falls_back(monkeypatch):
    _fake(monkeypatch, cuda=True, rapids=False)
    with pytest.raises(MFVCError, match="cuML is not installed.*environment.yml"):
        backends.place("auto", "rapids")
    _fake(monkeypatch, cuda=False, rapids=True)
    with pytest.raises(MFVCError, match="needs a CUDA device"):
        backends.place("cpu", "rapids")


def test_mixed_mode_is_recorded_on_the_fitted_estimator(monkeypatch, blobs):
    """CUDA without cuML: the estimator says the stages ran on the CPU backend, and why."""
    _fake(monkeypatch, cuda=True, rapids=False)
    x, _ = blobs
    est = MFVC(n_clusters=5, manifold="none", random_state=0).fit_features(x)
    assert (est.device_, est.backend_) == ("cuda", "cpu")
    assert "UMAP and clustering on the CPU" in est.placement_note_
    assert len(np.unique(est.labels_)) == 5


# ---------------------------------------------------------------- DLPack and pointers (CPU)


def test_a_copy_has_another_pointer():
    a = np.zeros((4, 3), np.float32)
    assert interop.data_pointer(a) != interop.data_pointer(a.copy())


def test_as_float_contiguous_says_when_it_copied():
    t = torch.zeros(5, 4)
    same, copied = interop.as_float_contiguous(t)
    assert not copied and same.data_ptr() == t.data_ptr()
    _, copied = interop.as_float_contiguous(t.t())  # not contiguous
    assert copied
    _, copied = interop.as_float_contiguous(torch.zeros(5, 4, dtype=torch.float64))
    assert copied
    _, copied = interop.as_float_contiguous(torch.zeros(5, 4, requires_grad=True))
    assert not copied


def test_torch_to_cupy_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA tensors"):
        interop.torch_to_cupy(torch.zeros(2, 2))


def test_device_to_host_bytes_are_summed_from_a_profiler_trace():
    trace = {
        "traceEvents": [
            {"cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pageable)", "args": {"bytes": 4000}},
            {"cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pinned)", "args": {"bytes": 1}},
            {"cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)", "args": {"bytes": 999}},
            {"cat": "gpu_memcpy", "name": "Memcpy DtoD (Device -> Device)", "args": {"bytes": 77}},
            {"cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pageable)"},  # size missing
            {"cat": "kernel", "name": "DtoH_lookalike_kernel", "args": {"bytes": 5}},
        ]
    }
    assert interop.device_to_host_from_trace(trace) == {"bytes": 4001, "copies": 3, "copies_without_size": 1}
    assert interop.device_to_host_from_trace({}) == {"bytes": 0, "copies": 0, "copies_without_size": 0}


# ---------------------------------------------------------------- on a GPU (skip here)


@pytest.mark.gpu
def test_dlpack_round_trip_keeps_the_device_pointer():
    cupy = pytest.importorskip("cupy")
    t = torch.arange(64, dtype=torch.float32, device="cuda").reshape(16, 4) * 2
    a = interop.torch_to_cupy(t)
    assert int(a.data.ptr) == t.data_ptr()
    assert float(a[3, 1]) == float(t[3, 1])  # the write torch queued is visible to CuPy
    a[0, 0] = -1.0
    back = torch.from_dlpack(a)
    assert back.data_ptr() == t.data_ptr() and float(t[0, 0]) == -1.0
    assert isinstance(a, cupy.ndarray)


@pytest.mark.gpu
def test_rapids_handoff_of_a_cuda_tensor_is_zero_copy():
    pytest.importorskip("cupy")
    z = torch.randn(256, 8, device="cuda")
    b = RapidsBackend()
    arr = b.handoff(z)
    h = b.last_handoff
    assert h["torch_ptr"] == z.data_ptr() == h["cupy_ptr"] == int(arr.data.ptr) and h["same_pointer"]
    assert h["host_to_device_bytes"] == 0 and h["device_to_host_bytes"] == 0
    assert b.all_finite(arr) and b.last_handoff["device_to_host_bytes"] == 1  # the one-byte answer
    host = b.to_numpy(arr)
    assert np.allclose(host, z.cpu().numpy()) and b.last_handoff["device_to_host_bytes"] == 1 + host.nbytes
    b.handoff(z.t())  # not contiguous: one device copy, reported
    assert b.last_handoff["device_copy"] and not b.last_handoff["same_pointer"]


@pytest.mark.gpu
def test_one_training_epoch_on_cuda_with_bf16_autocast():
    from mfvc_gpu.models import BetaVAE, VAEConfig
    from mfvc_gpu.train import TrainConfig, train_vae

    rng = np.random.default_rng(0)
    images = rng.random((64, 1, 32, 32), dtype=np.float32)
    model = BetaVAE(VAEConfig(latent_dim=8))
    seen = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    hist = train_vae(
        model,
        images,
        TrainConfig(epochs=1, batch_size=16, augment=0.0, lr=0.005, amp=True),
        torch.device("cuda"),
        0,
        progress=False,
    )
    assert len(hist) == 1 and np.isfinite(hist[0]["loss"])
    assert torch.bfloat16 in seen  # autocast ran the convolutions in bf16
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())  # master weights stay fp32


@pytest.fixture(scope="module")
def mnist_test_latent(mnist_dir):
    """MNIST-test latents from a briefly trained encoder, as a CUDA tensor (shared by the rapids tests)."""
    from mfvc_gpu import load_dataset
    from mfvc_gpu.models import BetaVAE, VAEConfig
    from mfvc_gpu.train import TrainConfig, encode, train_vae

    ds = load_dataset("mnist", split="test", data_dir=mnist_dir)
    model = BetaVAE(VAEConfig())
    train_vae(
        model,
        ds.images,
        TrainConfig(epochs=5, batch_size=256, augment=0.0, lr=0.005),
        torch.device("cuda"),
        0,
        progress=False,
    )
    return encode(model, ds.images, torch.device("cuda")), ds.labels


@pytest.mark.rapids
def test_cuml_matches_the_cpu_backend_on_the_same_latent(mnist_test_latent):
    from mfvc_gpu import cluster_acc

    z, y = mnist_test_latent
    gpu = MFVC(n_clusters=10, device="cuda", backend="rapids").fit_features(z)
    cpu = MFVC(n_clusters=10, device="cpu", backend="cpu").fit_features(z.cpu().numpy())
    acc_gpu, acc_cpu = cluster_acc(y, gpu.labels_), cluster_acc(y, cpu.labels_)
    # cuML's UMAP is not umap-learn's (its documentation says the embeddings differ), so the two
    # need not agree to the digit: both must clear a floor, and stay within a loose gap
    assert acc_gpu > 0.8 and acc_cpu > 0.8, (acc_gpu, acc_cpu)
    assert abs(acc_gpu - acc_cpu) <= 0.05, (acc_gpu, acc_cpu)
    h = gpu.handoff_
    assert h["same_pointer"] and h["torch_ptr"] == z.data_ptr() and h["knn_build"] == "brute_force_knn"
    assert h["device_to_host_bytes_before_labels"] == 1  # only the finite check's answer left the device
    assert [c["what"] for c in h["device_to_host_copies"]] == ["finite check: one bool"]


@pytest.mark.rapids
def test_cuml_dbscan_and_kmeans_predict(mnist_test_latent):
    z, _ = mnist_test_latent
    est = MFVC(n_clusters=10, device="cuda", backend="rapids").fit_features(z[:2000])
    np.testing.assert_array_equal(est.predict(z[:2000]), est.labels_)  # a CUDA tensor in: the training rows' labels
    import cupy

    new = est.predict(cupy.asarray(z[2000:3000]))  # a CuPy array in: the learned map + K-Means in torch on the GPU
    assert new.shape == (1000,) and set(new) <= set(range(10))
    db = MFVC(n_clusters=10, cluster="dbscan", eps=0.5, device="cuda", backend="rapids").fit_features(z[:2000])
    assert db.labels_.shape == (2000,) and len(set(db.labels_) - {-1}) >= 2
    with pytest.raises(MFVCError, match="cannot label new points"):
        db.predict(z[:10].cpu().numpy())


# ---------------------------------------------------------------- one CUDA stack per process
@pytest.mark.parametrize(
    "majors, needle",
    [
        ({"torch": "12", "cupy": "13", "cuml": "13", "libcudart": None}, 'pip install --force-reinstall "torch>=2.11"'),
        ({"torch": "13", "cupy": "12", "cuml": "13", "libcudart": None}, "reinstall cupy for CUDA 13"),
        ({"torch": None, "cupy": "13", "cuml": "13", "libcudart": None}, "CPU-only build"),
        ({"torch": "13", "cupy": "13", "cuml": "13", "libcudart": "12+13 (2 copies: /a, /b)"}, "mapped more than once"),
    ],
    ids=["torch-cuda12", "cupy-cuda12", "torch-cpu", "two-cudart"],
)
def test_a_mixed_cuda_stack_is_refused_before_cuml_runs(monkeypatch, majors, needle):
    """The versions are simulated: the guard compares what torch, CuPy and cuML were built for."""
    from mfvc_gpu.backends import cuda_stack

    _fake(monkeypatch, cuda=True, rapids=True)
    monkeypatch.setattr(cuda_stack, "cuda_majors", lambda: majors)
    with pytest.raises(MFVCError) as info:
        backends.place("auto", "auto")
    message = str(info.value)
    assert "\n" not in message and needle in message and message.startswith("the GPU stack is mixed")
    monkeypatch.setattr(cuda_stack, "cuda_majors", lambda: dict(majors, torch="13", cupy="13", libcudart="13"))
    assert backends.place("auto", "auto").backend == "rapids"  # one stack: placed on cuML


def test_a_cpu_torch_beside_cuml_says_how_to_get_the_cuda_build(monkeypatch, cli, tmp_path):
    from mfvc_gpu.backends import cuda_stack

    majors = {"torch": None, "cupy": "13", "cuml": "13", "libcudart": None}
    monkeypatch.setattr(cuda_stack, "cuda_majors", lambda: majors)
    rc, _, lines = cli("cluster", "--dataset", "digits", "--backend", "rapids", "--out", tmp_path / "run")
    assert rc == 2 and len(lines) == 1
    assert "needs a CUDA device" in lines[0] and "CPU-only build" in lines[0] and "torch>=2.11" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_this_environment_is_one_stack():
    from mfvc_gpu.backends.cuda_stack import cuda_majors, stack_problem

    majors = cuda_majors()
    assert stack_problem(majors) is None, majors
