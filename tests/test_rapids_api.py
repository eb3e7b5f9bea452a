"""The ``rapids_api`` tier: every RAPIDS code path of mfvc_gpu, run against the real cuML, cuDF,
CuPy and dask-cuda, up to the first call that needs a GPU.

It runs on a machine that has the RAPIDS wheels but no usable GPU (a CI box, a login node):

    PYTHONPATH=. python -m pytest -q -m rapids_api tests/test_rapids_api.py

What it proves: the libraries import together as one CUDA 13 stack (in either order); the
keyword arguments the project builds for ``cuml.UMAP``, ``cuml.KMeans``, ``cuml.DBSCAN``,
``cuml.dask.cluster.KMeans``, ``cuml.dask.manifold.UMAP``, ``dask_cuda.LocalCUDACluster`` and
cuDF's readers and writer exist under those names and arrive with the values asked for; the
placement rule (``backends.resolve``) and the import diagnostics see the real libraries; and each
GPU code path gets as far as its first device call and fails there with a CUDA/driver error
(never a ``TypeError``, ``AttributeError`` or ``ImportError`` from our own code).

What it does NOT prove: that anything computes correctly on a GPU. No kernel runs here; results,
zero-copy pointers, the Dask cluster and multi-GPU behaviour are the ``gpu`` / ``rapids`` tiers'
job on a real device. Tests that assert "fails at the device" skip themselves where a device is
present.

Where cuML does not import (the ordinary CPU environment) every test in this file skips, with
the import problem as the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


def _import_problem(module: str) -> str | None:
    """None when ``module`` imports; else why not (independent of the code under test)."""
    try:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"{module} is not installed"
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install fails with OSError, RuntimeError, ...
        return f"{module} failed to import ({type(exc).__name__}: {exc})"
    return None


_CUML_PROBLEM = _import_problem("cuml")

pytestmark = [
    pytest.mark.rapids_api,
    pytest.mark.skipif(
        _CUML_PROBLEM is not None,
        reason=f"rapids_api checks the real RAPIDS libraries, but cuML is not importable here: {_CUML_PROBLEM}",
    ),
]

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(importlib.util.find_spec("mfvc_gpu").origin).resolve().parent  # the code under test

# Libraries whose SONAME major is the CUDA major (cuFFT, cuSPARSE, cuSOLVER, cuRAND number theirs apart).
CUDA_MAJOR_LIBS = ("libcudart", "libnvrtc", "libnvJitLink", "libcublas", "libcublasLt", "libcupti")


# ================================================================ helpers
@pytest.fixture(scope="module")
def rapids():
    """The real RAPIDS modules, each skipped with its import error if it is missing."""
    return SimpleNamespace(
        cupy=pytest.importorskip("cupy"),
        cuml=pytest.importorskip("cuml"),
        cudf=pytest.importorskip("cudf"),
        dask_cuda=pytest.importorskip("dask_cuda"),
        cuml_dask=pytest.importorskip("cuml.dask"),
    )


def _gpu_present(cupy) -> bool:
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no driver / no device: CUDARuntimeError
        return False


@pytest.fixture(scope="module")
def no_device(rapids):
    """Skip where a GPU works: these tests prove how a GPU path fails without one."""
    import torch

    if _gpu_present(rapids.cupy) or torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the failure-without-a-GPU checks do not apply (run -m 'gpu or rapids')")


def _fails(fn, *args, **kwargs) -> BaseException:
    """Call ``fn``; return the exception it raises (the test fails if it returns)."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the caller inspects it
        return exc
    pytest.fail(f"{getattr(fn, '__qualname__', fn)} returned {result!r}; expected it to fail at the first device call")


def _assert_device_error(exc: BaseException, kind: str | None = None) -> None:
    """``exc`` is the CUDA/driver failure of a device call, not a bug on our side of the call."""
    from mfvc_gpu import MFVCError

    assert not isinstance(exc, (TypeError, AttributeError, NameError, ImportError, KeyError, MFVCError)), (
        f"expected a device error, got {type(exc).__name__}: {exc}"
    )
    assert isinstance(exc, RuntimeError), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    assert re.search(r"cuda|driver|nvidia|device", str(exc), re.IGNORECASE), str(exc)
    if kind is not None:
        assert type(exc).__name__ == kind, f"{type(exc).__module__}.{type(exc).__name__}: {exc}"


def _project_frames(exc: BaseException) -> list:
    """The traceback frames of ``exc`` inside mfvc_gpu, outermost first: (function, source line, frame)."""
    import linecache

    out, tb = [], exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if Path(code.co_filename).resolve().is_relative_to(PACKAGE_DIR):
            line = linecache.getline(code.co_filename, tb.tb_lineno).strip()
            out.append((code.co_name, line, tb.tb_frame))
        tb = tb.tb_next
    return out


def _failed_at(exc: BaseException, function: str, code: str):
    """Assert the last mfvc_gpu frame of ``exc`` is ``function`` on a line containing ``code``; return that frame."""
    frames = _project_frames(exc)
    assert frames, f"the error did not pass through mfvc_gpu: {exc!r}"
    name, line, frame = frames[-1]
    assert (name, code in line) == (function, True), f"last mfvc_gpu frame: {name}: {line!r}"
    return frame


def _named_parameters(fn) -> set[str]:
    """Parameters of ``fn`` that have a name (a ``**kwargs`` catch-all does not count)."""
    return {
        n
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


def _assert_params_taken(estimator, asked: dict) -> None:
    """``estimator.get_params()`` holds every value of ``asked`` unchanged."""
    got = estimator.get_params()
    for key, value in asked.items():
        assert key in got, f"{type(estimator).__name__} has no parameter {key!r}"
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(np.asarray(got[key]), value)
        else:
            assert (got[key], type(got[key])) == (value, type(value)), f"{key}: asked {value!r}, got {got[key]!r}"


class _StubClient:
    """Stands in for ``distributed.Client`` where cuML's Dask estimators only store the client
    (their constructors call ``get_client(client)``, which returns any non-None object as is)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def submit(self, fn, *args, **kwargs):
        self.calls.append(("submit", fn, args, kwargs))
        return SimpleNamespace(key=f"future-{len(self.calls)}")

    def scatter(self, data, **kwargs):
        self.calls.append(("scatter", data, kwargs))
        return SimpleNamespace(key=f"future-{len(self.calls)}")


class _Captured(Exception):
    """Raised by a patched ``fit`` to hand back the estimator the project built, before any device work."""


def _capture_fit(monkeypatch, cls) -> dict:
    """Replace ``cls.fit`` by one that records ``self`` and raises :class:`_Captured`."""
    seen: dict = {}

    def fit(self, X, *args, **kwargs):
        seen.update(estimator=self, X=X)
        raise _Captured

    monkeypatch.setattr(cls, "fit", fit)
    return seen


def _record_kwargs(monkeypatch, owner, name: str) -> list[dict]:
    """Wrap ``owner.name`` so that each call's keyword arguments are recorded, then the real one runs."""
    real, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def _features(n: int = 40, d: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# ================================================================ 1-2: one CUDA 13 stack
_IMPORT_SCRIPT = textwrap.dedent(r"""
    import importlib, json, os, re, sys
    for name in sys.argv[1:]:
        importlib.import_module(name)
    libs = {}
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    m = re.match(r"(lib[A-Za-z]+)\.so\.(\d+)$", os.path.basename(path))
                    if m:
                        libs.setdefault(m.group(1), set()).add(path)
    import torch
    print(json.dumps({"libs": {k: sorted(v) for k, v in libs.items()}, "torch_cuda": torch.version.cuda}))
""")
_IMPORT_ORDERS = {
    "torch-first": ["torch", "cupy", "cuml", "cudf", "dask_cuda", "cuml.dask"],
    "rapids-first": ["cuml.dask", "dask_cuda", "cudf", "cuml", "cupy", "torch"],
}


@pytest.fixture(scope="module")
def import_runs(rapids):
    """Both import orders, each in a fresh interpreter, run side by side (about 10 s)."""
    procs = {
        order: subprocess.Popen(
            [sys.executable, "-c", _IMPORT_SCRIPT, *mods],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(REPO),
        )
        for order, mods in _IMPORT_ORDERS.items()
    }
    out = {}
    for order, p in procs.items():
        try:
            stdout, stderr = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        out[order] = SimpleNamespace(returncode=p.returncode, stdout=stdout, stderr=stderr)
    return out


@pytest.mark.parametrize("order", list(_IMPORT_ORDERS))
def test_torch_and_rapids_import_together_as_one_cuda_stack(import_runs, order):
    """torch, CuPy, cuML, cuDF, dask-cuda and cuml.dask import in one process, in either order,
    and the process maps ONE copy of each CUDA-major library (libcudart, libnvrtc, libnvJitLink,
    libcublas, ...), all of torch's CUDA major. A torch wheel and RAPIDS wheels built for different
    CUDA majors (or two copies of the runtime) fail here. Not proven: that kernels launch."""
    run = import_runs[order]
    assert run.returncode == 0, f"import order {_IMPORT_ORDERS[order]} failed:\n{run.stderr[-3000:]}"
    info = json.loads(run.stdout.strip().splitlines()[-1])
    major = info["torch_cuda"].split(".")[0]
    libs = info["libs"]
    assert "libcudart" in libs, f"no CUDA runtime mapped after the imports: {sorted(libs)}"
    for lib in CUDA_MAJOR_LIBS:
        paths = libs.get(lib, [])
        assert len(paths) <= 1, f"{lib} is mapped from several places (two CUDA stacks): {paths}"
        for path in paths:
            assert path.endswith(f".so.{major}"), (
                f"{path} is not CUDA {major} (torch is built for {info['torch_cuda']})"
            )


def test_torch_cupy_and_rapids_are_built_for_cuda_13(rapids):
    """torch is a CUDA 13 build, CuPy's bundled runtime is CUDA 13 (it reports its version without
    a driver), and cuML / cuDF / RMM / CuPy are the CUDA 13 wheels, at one RAPIDS release."""
    import torch

    cupy = rapids.cupy
    assert torch.version.cuda is not None and torch.version.cuda.startswith("13."), torch.version.cuda
    assert torch.backends.cuda.is_built()
    assert cupy.cuda.runtime.runtimeGetVersion() // 1000 == 13
    assert cupy.cuda.get_local_runtime_version() // 1000 == 13
    assert metadata.version("nvidia-cuda-runtime").startswith("13.")
    rapids_versions = {name: metadata.version(name) for name in ("cuml-cu13", "cudf-cu13", "rmm-cu13")}
    assert metadata.version("cupy-cuda13x").startswith("14.")
    releases = {".".join(v.split(".")[:2]) for v in rapids_versions.values()}
    assert releases == {".".join(rapids.cuml.__version__.split(".")[:2])}, rapids_versions


def test_no_cuda_12_or_11_distribution_is_installed(rapids):
    """No wheel of another CUDA major sits beside the CUDA 13 stack (``*-cu12``, ``cupy-cuda12x``,
    ``nvidia-*-cu12``): pip would happily install both and the loader would pick either."""
    names = sorted({(d.metadata["Name"] or "").lower() for d in metadata.distributions()})
    other = [n for n in names if re.search(r"[-_]cu1[12]$|cuda1[12]x|[-_]cu1[12][-_]", n)]
    assert other == []
    assert "cuml-cu13" in names and "cupy-cuda13x" in names  # the check looks at real names


@pytest.mark.parametrize("extra", [[], ["torch"]], ids=[".[gpu]", ".[gpu] torch"])
def test_the_gpu_extra_resolves_to_one_cuda_13_stack_as_users_type_it(rapids, tmp_path, extra):
    """``pip install ".[gpu]"`` (and with ``torch`` named beside it), resolved afresh by pip against the
    registry (``--dry-run --ignore-installed``: what a new virtual environment would get, without this
    machine's pip configuration): torch 2.11 or newer, whose Linux wheel is the CUDA 13 build, CUDA
    13 libraries, and no distribution of another CUDA major. Without the extra's torch bound this
    resolution picks torch 2.9.1 and 15 ``nvidia-*-cu12`` wheels (docs/GPU.md)."""
    import os
    import shutil

    from packaging.version import Version

    src = tmp_path / "mfvc_gpu"  # a copy of what the build reads: the checkout may not be writable (an image)
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "mfvc_gpu"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="", PIP_CONSTRAINT="")
    report = tmp_path / "report.json"
    flags = ["--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
    cmd = [sys.executable, "-m", "pip", "install", *flags, f"{src}[gpu]", *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert Version(got["torch"]) >= Version("2.11"), got["torch"]
    assert got["cuda-toolkit"].split(".")[0] == "13" and "cuml-cu13" in got and "cupy-cuda13x" in got
    other = [n for n in got if re.search(r"[-_]cu1[0-2]$|cuda1[0-2]x|[-_]cu1[0-2][-_]", n)]
    assert other == [], other


def test_the_gpu_extra_is_this_cuda_13_stack(rapids):
    """``pip install 'mfvc_gpu[gpu]'`` (what RAPIDS_HINT tells users) describes the stack installed
    here: every requirement of the ``gpu`` extra is installed at a version it allows, its CuPy is
    the installed CuPy wheel, and none of it names a wheel of another CUDA major. Not proven: that
    pip resolves the extra from scratch (no registry is asked)."""
    import tomllib
    from packaging.requirements import Requirement

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    reqs = [Requirement(r) for r in extra]
    names = {r.name.lower() for r in reqs}
    installed = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    assert (
        {n for n in names if n.startswith("cupy")} == {n for n in installed if n.startswith("cupy")} == {"cupy-cuda13x"}
    )
    assert {"cuml-cu13", "cudf-cu13", "dask-cuda"} <= names
    assert not [n for n in names if re.search(r"cu1[12]$|cuda1[12]x", n)], sorted(names)
    for r in reqs:
        version = metadata.version(r.name)
        assert r.specifier.contains(version, prereleases=True), f"{r.name} {version} is not {r.specifier}"


# ================================================================ 3-5: cuML estimator keywords
@pytest.mark.parametrize(
    "cfg_kwargs, n_components, seed, expected",
    [
        pytest.param(
            dict(metric="euclidean"),
            10,
            7,
            dict(
                n_neighbors=27,
                min_dist=0.0,
                n_components=10,
                metric="euclidean",
                random_state=7,
                build_algo="brute_force_knn",
                output_type="cupy",
            ),
            id="paper-defaults",
        ),
        pytest.param(
            dict(knn="nn-descent", metric="cosine", n_neighbors=15, min_dist=0.25),
            3,
            1,
            dict(
                n_neighbors=15,
                min_dist=0.25,
                n_components=3,
                metric="cosine",
                random_state=1,
                build_algo="nn_descent",
                output_type="cupy",
            ),
            id="cosine-nn-descent",
        ),
    ],
)
def test_cuml_umap_holds_exactly_the_umap_params(rapids, cfg_kwargs, n_components, seed, expected):
    """``cuml.UMAP(**umap_params(...))`` keeps every value as asked (27 neighbours, min_dist 0,
    the seed, build_algo never cuML's "auto"). Not proven: the embedding cuML would compute."""
    from mfvc_gpu.backends.rapids import umap_params
    from mfvc_gpu.config import ManifoldConfig

    params = umap_params(ManifoldConfig(**cfg_kwargs), n_components, seed)
    assert params == expected
    model = rapids.cuml.UMAP(**params)
    _assert_params_taken(model, expected)
    assert model.get_params()["build_algo"] != "auto"


def test_every_keyword_for_cuml_is_a_named_parameter_of_the_real_constructor(rapids):
    """umap_params / kmeans_params / dbscan_params (and the K-Means rebuilt from centres) only use
    names of cuML's constructors, not swallowed by a ``**kwargs``, and the constructors accept them;
    a wrong name would be a TypeError (checked, so this test can fail). The kNN builds the project
    maps to are cuML's own build_algo values."""
    from mfvc_gpu.backends.rapids import (
        KNN_BUILDS,
        dbscan_params,
        kmeans_params,
        umap_params,
    )
    from mfvc_gpu.config import ClusterConfig, ManifoldConfig

    cuml = rapids.cuml
    from cuml.manifold.umap import umap as cuml_umap

    calls = [
        (cuml.UMAP, umap_params(ManifoldConfig(metric="euclidean"), 4, 0)),
        (cuml.UMAP, umap_params(ManifoldConfig(knn="nn-descent", metric="cosine"), 2, 3)),
        (cuml.KMeans, kmeans_params(ClusterConfig(method="kmeans"), 5, 1)),
        (
            cuml.KMeans,
            dict(
                n_clusters=2,
                init=np.zeros((2, 3), np.float32),
                n_init=1,
                max_iter=1,
                random_state=0,
                output_type="cupy",
            ),
        ),  # RapidsBackend.kmeans_from_centres' keywords
        (cuml.DBSCAN, dbscan_params(ClusterConfig(method="dbscan", eps=0.7, min_samples=3))),
    ]
    for cls, kwargs in calls:
        missing = set(kwargs) - _named_parameters(cls)
        assert not missing, f"{cls.__name__} has no parameter(s) {sorted(missing)}"
        assert isinstance(cls(**kwargs), cls)
        with pytest.raises(TypeError):
            cls(**kwargs, not_a_cuml_parameter=1)
    assert set(KNN_BUILDS.values()) <= set(cuml_umap._BUILD_ALGOS) - {"auto"}


def test_cuml_kmeans_and_dbscan_hold_the_cluster_params(rapids):
    """``cuml.KMeans(**kmeans_params(ClusterConfig(method="kmeans"), 4, 9))`` has 4 clusters, the project's 10
    restarts (cuML's default is 1) and seed 9, and passes cuML's own pre-fit checks; DBSCAN keeps
    eps and min_samples, for the default and a non-default config."""
    from mfvc_gpu.backends.rapids import dbscan_params, kmeans_params
    from mfvc_gpu.config import ClusterConfig

    cuml = rapids.cuml
    km_params = kmeans_params(ClusterConfig(method="kmeans"), 4, 9)
    km = cuml.KMeans(**km_params)
    _assert_params_taken(km, dict(n_clusters=4, n_init=10, random_state=9, output_type="cupy"))
    assert inspect.signature(cuml.KMeans).parameters["n_init"].default != 10  # 10 is set, not inherited
    km._validate_fit_params()  # cuML's host-side checks run at fit, before any device work
    for cfg, eps, min_samples in [
        (ClusterConfig(method="dbscan"), 0.5, 5),
        (ClusterConfig(method="dbscan", eps=0.25, min_samples=12), 0.25, 12),
    ]:
        db = cuml.DBSCAN(**dbscan_params(cfg))
        _assert_params_taken(db, dict(eps=eps, min_samples=min_samples, output_type="cupy"))


def _metric_cases():
    from mfvc_gpu.params import BY_NAME

    for metric in BY_NAME["metric"].choices:
        for knn in BY_NAME["knn"].choices:
            yield pytest.param(metric, knn, id=f"{metric}-{knn}")


@pytest.mark.parametrize("metric, knn", list(_metric_cases()))
def test_every_metric_and_knn_the_project_offers_is_supported_by_cuml_or_refused_early(rapids, metric, knn):
    """For each metric × kNN build in the parameter table, cuML's own metric check (``coerce_metric``,
    which UMAP runs at fit) accepts what umap_params produces, or umap_params refuses the pair
    with an MFVCError before any training."""
    from cuml.manifold.umap.umap import coerce_metric

    from mfvc_gpu import MFVCError
    from mfvc_gpu.backends.rapids import umap_params
    from mfvc_gpu.config import ManifoldConfig

    try:
        params = umap_params(ManifoldConfig(metric=metric, knn=knn), 2, 0)
    except MFVCError as exc:
        assert metric in str(exc)
        return
    assert coerce_metric(params["metric"], sparse=False, build_algo=params["build_algo"]) is not None


# ================================================================ 6: RapidsBackend up to the device
@pytest.mark.parametrize(
    "method, cls, expected",
    [
        ("kmeans", "KMeans", dict(n_clusters=3, n_init=10, random_state=11, output_type="cupy")),
        ("dbscan", "DBSCAN", dict(eps=0.5, min_samples=5, output_type="cupy")),
    ],
)
def test_fit_cluster_builds_the_cuml_estimator_and_fails_only_at_the_device(rapids, no_device, method, cls, expected):
    """``RapidsBackend.fit_cluster`` builds the real cuML estimator with the project's values and
    gets as far as ``fit_predict``, which fails with CuPy's CUDA error (no driver/device): the
    estimator is read back from the failing frame. Not proven: the labels."""
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    from mfvc_gpu.backends.rapids import RapidsBackend
    from mfvc_gpu.config import ClusterConfig

    exc = _fails(RapidsBackend().fit_cluster, _features(), ClusterConfig(method=method), 3, 11)
    _assert_device_error(exc, "CUDARuntimeError")
    assert isinstance(exc, CUDARuntimeError)
    frame = _failed_at(exc, "fit_cluster", ".fit_predict(")
    model = frame.f_locals["model"]
    assert type(model) is getattr(rapids.cuml, cls)
    _assert_params_taken(model, expected)


@pytest.mark.parametrize(
    "knn, build, staged", [("brute", "brute_force_knn", False), ("nn-descent", "nn_descent", True)]
)
def test_fit_manifold_builds_cuml_umap_and_fails_only_at_the_device(rapids, no_device, knn, build, staged):
    """``RapidsBackend.fit_manifold`` records the kNN build and cuML's version, builds ``cuml.UMAP``
    with umap_params and fails inside ``fit_transform`` with a CUDA error. Not proven: the embedding."""
    from mfvc_gpu.backends.rapids import RapidsBackend
    from mfvc_gpu.config import ManifoldConfig

    b = RapidsBackend()
    exc = _fails(b.fit_manifold, _features(), ManifoldConfig(n_neighbors=5, knn=knn, metric="euclidean"), 2, 4)
    _assert_device_error(exc, "CUDARuntimeError")
    frame = _failed_at(exc, "fit_manifold", ".fit_transform(")
    assert type(frame.f_locals["model"]) is rapids.cuml.UMAP
    _assert_params_taken(frame.f_locals["model"], dict(n_neighbors=5, n_components=2, random_state=4, build_algo=build))
    assert b.last_handoff["knn_build"] == build
    assert b.last_handoff["cuml_version"] == rapids.cuml.__version__
    assert b.last_handoff.get("input_staged_on_host_by_cuml", False) is staged


def test_gmm_fallback_fits_on_the_cpu_and_fails_copying_its_labels_to_the_device(rapids, no_device):
    """cluster='gmm' has no cuML implementation: the backend records the CPU fallback, fits
    scikit-learn's mixture on the host and fails at its first device call, copying the labels
    back with ``cupy.asarray`` (CUDA error)."""
    from mfvc_gpu.backends.rapids import RapidsBackend
    from mfvc_gpu.config import ClusterConfig

    b = RapidsBackend()
    exc = _fails(b.fit_cluster, _features(), ClusterConfig(method="gmm"), 2, 0)
    _assert_device_error(exc, "CUDARuntimeError")
    _failed_at(exc, "_to_device", "cupy.asarray(")
    assert b.last_handoff["cpu_fallback"] == ["gmm"]


def test_kmeans_from_centres_fails_at_its_first_cupy_array(rapids, no_device):
    """``kmeans_from_centres`` (used to reload models and after the Dask K-Means) first puts the
    centres on the device: that ``cupy.asarray`` is where it fails here, with a CUDA error."""
    from mfvc_gpu.backends.rapids import RapidsBackend

    exc = _fails(RapidsBackend().kmeans_from_centres, np.eye(3, 2, dtype=np.float32), 0)
    _assert_device_error(exc, "CUDARuntimeError")
    _failed_at(exc, "kmeans_from_centres", "cupy.asarray(")


def test_kmeans_from_centres_builds_a_valid_cuml_kmeans(rapids, monkeypatch):
    """Past the device copy (CuPy replaced by NumPy here), ``kmeans_from_centres`` builds
    ``cuml.KMeans`` with the centres as ``init``, one restart, one iteration and the seed, which
    pass cuML's pre-fit checks. Not proven: that one Lloyd step leaves the centres in place."""
    from mfvc_gpu.backends import interop
    from mfvc_gpu.backends.rapids import RapidsBackend

    numpy_as_cupy = SimpleNamespace(asarray=np.asarray, ascontiguousarray=np.ascontiguousarray, float32=np.float32)
    monkeypatch.setattr(interop, "import_cupy", lambda: numpy_as_cupy)
    seen = _capture_fit(monkeypatch, rapids.cuml.KMeans)
    centres = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], dtype=np.float64)
    with pytest.raises(_Captured):
        RapidsBackend().kmeans_from_centres(centres, 4)
    km = seen["estimator"]
    assert type(km) is rapids.cuml.KMeans
    _assert_params_taken(
        km,
        dict(n_clusters=3, init=centres.astype(np.float32), n_init=1, max_iter=1, random_state=4, output_type="cupy"),
    )
    assert np.asarray(km.get_params()["init"]).dtype == np.float32
    np.testing.assert_array_equal(seen["X"], centres.astype(np.float32))
    km._validate_fit_params()


@pytest.mark.parametrize("source", ["numpy", "torch-cpu"])
def test_handoff_fails_at_the_first_cupy_array_and_leaves_no_stale_record(rapids, no_device, source):
    """``RapidsBackend.handoff`` of host data (NumPy, CPU tensor) reaches ``to_cupy_float32`` and
    fails at its ``cupy.asarray`` with a CUDA error; the previous ``last_handoff`` is cleared,
    so no stale record survives. Not proven: the DLPack zero-copy of a CUDA tensor."""
    import torch

    from mfvc_gpu.backends.rapids import RapidsBackend

    x = _features(6, 3)
    b = RapidsBackend()
    b.last_handoff = {"stale": True}
    exc = _fails(b.handoff, x if source == "numpy" else torch.from_numpy(x))
    _assert_device_error(exc, "CUDARuntimeError")
    _failed_at(exc, "to_cupy_float32", "cupy.asarray(")
    assert b.last_handoff == {}


# ================================================================ 7-8: placement and import diagnostics
def test_resolve_and_the_rapids_probes_see_the_real_libraries(rapids, no_device):
    """Here torch sees no GPU and cuML imports: ``resolve`` picks cpu/cpu by itself, rapids when
    CUDA is reported (facts injected, as the Dask path does), also for cuML's Dask estimators;
    the probes find nothing wrong with cupy, cuml, cuml.dask and dask_cuda."""
    from mfvc_gpu import MFVCError, backends

    assert backends.rapids_problem() is None
    assert backends.rapids_problem(dask=True) is None
    assert backends.rapids_available() is True and backends.rapids_available(dask=True) is True
    assert (backends.place("auto", "auto").device, backends.place("auto", "auto").backend) == ("cpu", "cpu")
    for device, backend, dask in [
        ("cuda", "rapids", False),
        ("cuda", "auto", False),
        ("cuda:0", "auto", True),
        ("auto", "auto", True),
    ]:
        placement = backends.place(device, backend, cuda=True, dask=dask)
        assert (placement.device, placement.backend, placement.note) == (device.replace("auto", "cuda"), "rapids", "")
    with pytest.raises(MFVCError, match="torch sees no CUDA GPU"):
        backends.place("cuda", "rapids")
    assert type(backends.get_backend("rapids")).__name__ == "RapidsBackend"


def test_a_broken_cuml_install_is_reported_with_its_own_error(rapids, monkeypatch, tmp_path):
    """A cuML that is installed but fails to import (simulated: a ``cuml`` package ahead on the
    path whose import raises a CUDA symbol error) is reported with that error's text by
    ``rapids_problem``, refused by ``resolve(backend='rapids')`` and avoided (CPU, with a note) by
    ``backend='auto'``; the real cuML is back afterwards."""
    from mfvc_gpu import MFVCError, backends
    from mfvc_gpu.optional import RAPIDS_HINT

    fake = tmp_path / "cuml"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("undefined symbol: __nvJitLinkCreate_12_9")\n')
    real = sys.modules["cuml"]
    monkeypatch.delitem(sys.modules, "cuml")
    monkeypatch.syspath_prepend(str(tmp_path))
    problem = backends.rapids_problem()
    assert problem is not None and problem.lower().startswith("cuml is installed but failed to import"), problem
    assert "(ImportError: undefined symbol: __nvJitLinkCreate_12_9)" in problem
    with pytest.raises(MFVCError) as info:
        backends.place("cuda", "rapids", cuda=True)
    assert "__nvJitLinkCreate_12_9" in str(info.value) and RAPIDS_HINT in str(info.value)
    placement = backends.place("cuda", "auto", cuda=True)
    assert (placement.device, placement.backend) == ("cuda", "cpu") and "CPU" in placement.note
    monkeypatch.undo()
    assert sys.modules["cuml"] is real and backends.rapids_problem() is None


def test_require_returns_the_real_rapids_modules(rapids):
    """``optional.require`` and the backends' import helpers hand back the very modules that are
    installed (cuML, cuml.dask, CuPy, dask-cuda), not a stand-in."""
    from mfvc_gpu.backends import interop
    from mfvc_gpu.backends.rapids import import_cuml
    from mfvc_gpu.optional import RAPIDS_HINT, require

    assert require("cuml", "backend 'rapids'", RAPIDS_HINT) is rapids.cuml
    assert require("cuml.dask", "the Dask path", RAPIDS_HINT) is rapids.cuml_dask
    assert require("dask_cuda", "--dask-cluster local-cuda", RAPIDS_HINT) is rapids.dask_cuda
    assert import_cuml() is rapids.cuml
    assert interop.import_cupy() is rapids.cupy


def test_require_reports_an_installed_but_broken_package_with_its_error(rapids, monkeypatch, tmp_path):
    """A package that is installed but whose import fails (a CUDA symbol missing) is reported as
    "failed to import" with the original text, what needed it and the hint, chained to the error."""
    from mfvc_gpu import MFVCError
    from mfvc_gpu.optional import RAPIDS_HINT, require

    pkg = tmp_path / "mfvc_broken_cuda_lib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise ImportError("undefined symbol: __nvJitLinkCreate_12_9")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MFVCError) as info:
        require("mfvc_broken_cuda_lib", "backend 'rapids'", RAPIDS_HINT)
    msg = str(info.value)
    assert msg.startswith("backend 'rapids' needs mfvc_broken_cuda_lib"), msg
    assert (
        "mfvc_broken_cuda_lib is installed but failed to import (ImportError: undefined symbol: "
        "__nvJitLinkCreate_12_9)" in msg
    )
    assert msg.endswith(RAPIDS_HINT)
    assert isinstance(info.value.__cause__, ImportError)


# ================================================================ 9: cuDF tables
def test_cudf_readers_and_writer_take_the_keywords_tables_uses(rapids):
    """``cudf.read_csv(usecols=)``, ``cudf.read_parquet(columns=)`` and
    ``cudf.DataFrame.to_parquet(path, index=)`` are named parameters of the real functions (not
    absorbed by ``**kwargs``), and cuDF frames take a dict of columns."""
    cudf = rapids.cudf
    assert "usecols" in _named_parameters(cudf.read_csv)
    assert "columns" in _named_parameters(cudf.read_parquet)
    assert {"path", "index"} <= _named_parameters(cudf.DataFrame.to_parquet)
    assert "data" in _named_parameters(cudf.DataFrame)
    assert "dtype" in _named_parameters(cudf.DataFrame.to_cupy) and "dtype" in _named_parameters(cudf.DataFrame.astype)


@pytest.mark.parametrize("suffix, reader", [(".csv", "cudf.read_csv("), (".parquet", "cudf.read_parquet(")])
def test_read_features_on_the_gpu_reaches_cudf_and_fails_at_the_device(
    rapids, no_device, monkeypatch, tmp_path, suffix, reader
):
    """``tables.read_features(gpu=True)`` checks the columns on the host, then calls cuDF's reader
    with keywords that are named parameters of it (recorded on the way in), inside the chosen
    device's context (``cuda:1`` enters device 1), which fails for want of
    the NVIDIA driver (not a keyword error); a missing column is reported as an MFVCError before
    cuDF is touched. Not proven: the values cuDF would read."""
    pd = pytest.importorskip("pandas")
    from mfvc_gpu import MFVCError
    from mfvc_gpu.tables import read_features

    path = tmp_path / f"t{suffix}"
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0], "c": [7, 8, 9]})
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        pytest.importorskip("pyarrow")
        frame.to_parquet(path, index=False)
    fn = reader[len("cudf.") : -1]
    named = _named_parameters(getattr(rapids.cudf, fn))
    calls = _record_kwargs(monkeypatch, rapids.cudf, fn)
    entered = []

    class ChosenDevice:  # stands in for cupy.cuda.Device, which needs a driver to enter
        def __init__(self, index):
            entered.append(index)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(rapids.cupy.cuda, "Device", ChosenDevice)
    exc = _fails(read_features, path, ["a", "c"], gpu=True, device="cuda:1")
    assert entered == [1]  # cuDF reads onto the GPU the run was placed on, not GPU 0
    _assert_device_error(exc)
    _failed_at(exc, "read_features", reader)
    assert len(calls) == 1 and set(calls[0]) <= named, calls
    assert list(calls[0].values()) == [["a", "c"]]  # usecols= / columns=: the chosen columns, in order
    with pytest.raises(MFVCError, match="column\\(s\\) zz not in"):
        read_features(path, ["a", "zz"], gpu=True)


def test_write_parquet_on_the_gpu_fails_at_cudf_and_leaves_no_file(rapids, no_device, monkeypatch, tmp_path):
    """``tables.write_parquet(gpu=True)`` builds a ``cudf.DataFrame``, which fails without a driver;
    the write is atomic, so neither the target nor a temporary file is left in the folder. With a
    recording stand-in for the frame (a real one needs the device), the ``to_parquet`` call gets a
    path beside the target and only keywords that are named parameters of cuDF's ``to_parquet``."""
    from mfvc_gpu.tables import write_parquet

    out = tmp_path / "labels.parquet"
    data = {"row": np.arange(3), "cluster": np.array([0, 1, 0])}
    exc = _fails(write_parquet, out, data, gpu=True)
    _assert_device_error(exc)
    _failed_at(exc, "write_parquet", "cudf.DataFrame(")
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    named, seen = _named_parameters(rapids.cudf.DataFrame.to_parquet), {}

    class RecordingFrame:
        def __init__(self, frame_data):
            seen["columns"] = list(frame_data)

        def to_parquet(self, path, *args, **kwargs):
            seen.update(path=Path(path), args=args, kwargs=kwargs)
            raise _Captured

    monkeypatch.setattr(rapids.cudf, "DataFrame", RecordingFrame)
    with pytest.raises(_Captured):
        write_parquet(out, data, gpu=True)
    assert seen["columns"] == ["row", "cluster"] and seen["args"] == ()
    assert seen["path"].parent == tmp_path and seen["path"] != out
    assert set(seen["kwargs"]) <= named and seen["kwargs"] == {"index": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_wants_gpu_reads_tables_with_cudf_exactly_when_resolve_picks_rapids(rapids, no_device, monkeypatch):
    """cuDF is chosen for tables only when the stages go to the rapids backend: not here by
    itself (no GPU), yes once CUDA is reported (cuML and cuDF import), never with backend='cpu'."""
    from mfvc_gpu import backends
    from mfvc_gpu.resolution import resolve
    from mfvc_gpu.tables import cudf_available, wants_gpu

    def placed(device, backend):
        return resolve({"device": device, "backend": backend, "encoder": "none"}).placement

    assert cudf_available() is True
    assert wants_gpu(placed("auto", "auto")) is False
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    assert wants_gpu(placed("auto", "auto")) is True
    assert wants_gpu(placed("cuda", "rapids")) is True
    assert wants_gpu(placed("auto", "cpu")) is False


# ================================================================ 10-11: Dask
def test_dask_kmeans_gets_the_project_keywords_and_they_build_the_worker_model(rapids, monkeypatch):
    """The GPU branch of the Dask K-Means stage seeds ``cuml.dask.cluster.KMeans`` with scikit-
    learn's centres from the sample, one restart and the seed, and drops ``output_type``. The
    keywords it stores are replayed the way cuML's workers use them (``KMeansMG(handle=...,
    output_type=..., **kwargs)`` after ``check_random_seed``) and pass cuML's pre-fit checks; an
    ``output_type`` among them would collide there (checked). The client is a stand-in (cuML's
    constructor only stores it) and ``fit`` is intercepted before it touches the cluster.
    Not proven: the distributed fit."""
    from cuml.cluster.kmeans_mg import KMeansMG
    from cuml.dask.cluster import KMeans as DaskKMeans
    from cuml.internals.validation import check_random_seed
    from sklearn.cluster import KMeans as SkKMeans

    from mfvc_gpu.distributed.orchestrate import DaskJob
    from mfvc_gpu.resolution import resolve

    client = _StubClient()
    job = DaskJob(client, None, 60.0)
    job.client = client
    job.res = resolve({"n_clusters": 3, "n_init": 3, "random_state": 5}, workers=(True, True))  # cuML workers
    assert job.gpu
    sample = np.concatenate([_features(20, 2, s) + 6 * s for s in range(3)])
    seen = _capture_fit(monkeypatch, DaskKMeans)
    with pytest.raises(_Captured):
        job.kmeans("U", sample)
    dk = seen["estimator"]
    assert type(dk) is DaskKMeans and dk.client is client and seen["X"] == "U"
    expected_init = SkKMeans(n_clusters=3, n_init=3, random_state=5).fit(sample).cluster_centers_.astype(np.float32)
    kw = dict(dk.kwargs)
    init = kw.pop("init")
    assert (type(init), init.dtype, init.shape) == (np.ndarray, np.float32, (3, 2))
    np.testing.assert_allclose(init, expected_init, rtol=1e-5, atol=1e-5)
    assert {k: kw.get(k) for k in ("n_clusters", "n_init", "random_state")} == dict(
        n_clusters=3, n_init=1, random_state=5
    )
    assert "output_type" not in kw
    worker_kwargs = {**dk.kwargs, "random_state": check_random_seed(dk.kwargs.get("random_state"))}
    worker = KMeansMG(handle=None, output_type="cupy", **worker_kwargs)
    _assert_params_taken(worker, dict(n_clusters=3, n_init=1, random_state=5, init=init))
    worker._validate_fit_params()
    with pytest.raises(TypeError, match="output_type"):
        KMeansMG(handle=None, output_type="cupy", **dict(worker_kwargs, output_type="cupy"))


def test_dask_umap_wraps_the_cuml_umap_model_the_gpu_fit_returns(rapids):
    """``cuml.dask.manifold.UMAP(model=..., client=...)`` (the GPU branch of umap_transform) takes a
    ``cuml.UMAP`` built from umap_params and keeps that very object; a umap-learn model is
    refused, so the GPU path must fit with cuML (tasks.fit_umap gpu=True does). Construction
    needs a client: with none it raises "No clients found" (checked), hence the stand-in client."""
    import umap
    from cuml.dask.cluster import KMeans as DaskKMeans
    from cuml.dask.manifold import UMAP as DaskUMAP

    from mfvc_gpu.backends.rapids import umap_params
    from mfvc_gpu.config import ManifoldConfig

    sig = inspect.signature(DaskUMAP).parameters
    assert sig["model"].kind is inspect.Parameter.KEYWORD_ONLY and sig["model"].default is inspect.Parameter.empty
    assert "client" in sig and list(inspect.signature(DaskUMAP.transform).parameters) == ["self", "X"]
    client = _StubClient()
    model = rapids.cuml.UMAP(**umap_params(ManifoldConfig(metric="euclidean"), 3, 1))
    du = DaskUMAP(model=model, client=client)
    assert du.internal_model is model and du.client is client
    with pytest.raises(ValueError, match="cuml.Base"):
        DaskUMAP(model=umap.UMAP(), client=client)
    for make in (lambda: DaskUMAP(model=model), lambda: DaskKMeans(n_clusters=2)):
        with pytest.raises(ValueError, match="No clients found"):
            make()


def test_gpu_branches_of_the_dask_stages_reach_their_first_device_call(rapids, no_device):
    """The encode and umap_transform stages with cuML workers import what they need
    (``cuml.dask.manifold``) and fail at their first device call, the CuPy ``meta`` array of the
    Dask array, with a CUDA error; umap_transform has sent the embedding and sample rows first."""
    from mfvc_gpu.distributed.orchestrate import DaskJob
    from mfvc_gpu.resolution import resolve

    client = _StubClient()
    job = DaskJob(client, None, 60.0)
    job.client, job.run_stage = client, lambda stage, fn: fn()
    job.res = resolve({"random_state": 0}, workers=(True, True))  # cuML workers
    job.images, job.workers, job.bounds = np.zeros((4, 1, 2, 2), np.float32), ["w0"], [(0, 4)]
    assert (job.gpu, job.device) == (True, "cuda")
    exc = _fails(job.encode, None, None, ["part"], 8)
    _assert_device_error(exc, "CUDARuntimeError")
    _failed_at(exc, "encode", ".empty((0, ")
    exc = _fails(job.umap_transform, None, ("fit-future", np.arange(2), rapids.cuml.UMAP(), None), 2)
    _assert_device_error(exc, "CUDARuntimeError")
    _failed_at(exc, "umap_transform", ".empty((0, ")
    assert [c[0] for c in client.calls] == ["submit", "scatter"]


def test_fit_umap_task_on_gpu_builds_cuml_umap_and_names_the_stage_when_it_fails(rapids, no_device):
    """``tasks.fit_umap(gpu=True)`` (run on one Dask worker) fits ``cuml.UMAP``; here the fit fails
    with a CUDA error, which comes back as StageFailed naming the stage, the caller ("client"
    outside a worker) and the CUDA error, chained to it."""
    from mfvc_gpu.config import ManifoldConfig
    from mfvc_gpu.distributed.tasks import StageFailed, fit_umap

    exc = _fails(fit_umap, _features(), asdict(ManifoldConfig(n_neighbors=5, metric="euclidean")), 2, 0, True)
    assert isinstance(exc, StageFailed)
    assert str(exc).startswith("umap_fit failed on worker client: CUDARuntimeError: ")
    _assert_device_error(exc.__cause__, "CUDARuntimeError")
    _failed_at(exc.__cause__, "fit_umap", ".UMAP(**umap_params(")


def test_worker_probe_reports_rapids_without_cuda(rapids, no_device, monkeypatch):
    """What every Dask worker reports to the client: no CUDA here, but the RAPIDS Dask stack imports,
    and the torch threads its cluster gave it (MFVC_THREADS; 1 when unset)."""
    import torch

    from mfvc_gpu.distributed.tasks import probe

    monkeypatch.delenv("MFVC_THREADS", raising=False)
    assert probe() == {"cuda": False, "rapids": True, "torch": torch.__version__, "threads": 1}
    monkeypatch.setenv("MFVC_THREADS", "2")
    assert probe()["threads"] == 2


def test_local_cuda_cluster_takes_the_project_keywords_and_fails_fast_without_a_driver(rapids, no_device, monkeypatch):
    """``connect('local-cuda')`` passes ``n_workers`` and ``threads_per_worker`` (named parameters of
    ``dask_cuda.LocalCUDACluster``); without an NVIDIA driver it fails within seconds, naming NVML,
    before any scheduler or worker starts (nothing keeps running), as one MFVCError line for the CLI.
    Not proven: a running cluster."""
    from mfvc_gpu.distributed.connect import connect

    named = _named_parameters(rapids.dask_cuda.LocalCUDACluster)
    assert {"n_workers", "threads_per_worker"} <= named
    calls = _record_kwargs(monkeypatch, rapids.dask_cuda, "LocalCUDACluster")
    t0 = time.perf_counter()
    exc = _fails(connect, "local-cuda", 1, timeout=30)
    assert time.perf_counter() - t0 < 30
    from mfvc_gpu import MFVCError

    assert isinstance(exc, MFVCError) and "local-cuda could not start" in str(exc) and "NVML" in str(exc), repr(exc)
    assert not isinstance(exc.__cause__, (TypeError, AttributeError, ImportError)), repr(exc.__cause__)
    _failed_at(exc.__cause__, "connect", "LocalCUDACluster(")
    assert len(calls) == 1 and set(calls[0]) <= named, calls
    assert (calls[0]["n_workers"], calls[0]["threads_per_worker"]) == (1, 1)


# ================================================================ 12: interop
def test_interop_recognises_rapids_types_and_cupy_needs_a_device(rapids, no_device):
    """``interop.import_cupy`` is CuPy; ``is_cudf`` knows a real cuDF frame (made without device
    memory), ``is_cupy`` CuPy's array type by its module; creating any CuPy array here raises
    ``CUDARuntimeError`` (cudaErrorInsufficientDriver on this machine), which is why the device
    paths above stop where they do."""
    import torch

    from mfvc_gpu.backends import interop

    cupy, cudf = rapids.cupy, rapids.cudf
    assert interop.import_cupy() is cupy
    assert interop.is_cudf(cudf.DataFrame.__new__(cudf.DataFrame)) and interop.is_cudf(cudf.Series.__new__(cudf.Series))
    assert not interop.is_cudf(np.zeros(2)) and not interop.is_cupy(np.zeros(2)) and not interop.is_cupy(torch.zeros(2))
    stand_in = type("ndarray", (), {"__module__": cupy.ndarray.__module__})()  # a real one needs a device
    assert interop.is_cupy(stand_in)
    for make in (lambda: cupy.zeros(3), lambda: cupy.asarray(np.ones(2)), lambda: cupy.empty((0, 4), np.float32)):
        _assert_device_error(_fails(make), "CUDARuntimeError")
    with pytest.raises(ValueError, match="takes CUDA tensors"):
        interop.torch_to_cupy(torch.zeros(2))


# ================================================================ 13: the estimator
def test_estimator_refuses_rapids_without_a_cuda_device(rapids, no_device):
    """``MFVC(backend='rapids')`` fails with an MFVCError about CUDA before any GPU path: on
    device='cpu', on device='auto' (torch sees no GPU here) and on device='cuda'."""
    from mfvc_gpu import MFVC, MFVCError

    x = _features()
    for kwargs, needle in [(dict(device="cpu"), "rapids"), (dict(), "rapids"), (dict(device="cuda"), "device='cuda'")]:
        est = MFVC(backend="rapids", encoder="none", n_clusters=2, n_neighbors=5, progress=False, **kwargs)
        with pytest.raises(MFVCError) as info:
            est.fit(x)
        assert "CUDA" in str(info.value) and needle in str(info.value), str(info.value)
        assert not hasattr(est, "backend_")


def test_estimator_picks_rapids_when_cuda_is_reported_and_stops_at_the_handoff(rapids, no_device, monkeypatch):
    """With CUDA reported, ``backend='auto'`` places UMAP and K-Means on the rapids backend (cuML
    really imports) and ``fit_features`` reaches the handoff, whose CuPy copy fails with a CUDA error."""
    from mfvc_gpu import MFVC, backends
    from mfvc_gpu import estimator as estimator_module
    from mfvc_gpu.backends.rapids import RapidsBackend

    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    seen = []
    real_resolve, real_get = estimator_module.resolve, estimator_module.get_backend
    monkeypatch.setattr(estimator_module, "resolve", lambda *a, **k: seen.append(real_resolve(*a, **k)) or seen[-1])
    monkeypatch.setattr(estimator_module, "get_backend", lambda name: seen.append(real_get(name)) or seen[-1])
    est = MFVC(encoder="none", n_clusters=2, n_neighbors=5, progress=False)
    exc = _fails(est.fit_features, _features())
    _assert_device_error(exc, "CUDARuntimeError")
    _failed_at(exc, "to_cupy_float32", "cupy.asarray(")
    res, backend = seen
    assert (res.placement.backend, res.placement.device, res.profile) == ("rapids", "cuda", "paper")
    assert isinstance(backend, RapidsBackend)
    assert not hasattr(est, "backend_")  # a failed fit leaves no fitted state


# ================================================================ 14: RMM and torch
def test_rmm_torch_allocator_is_importable_and_off_without_a_gpu(rapids, no_device):
    """``rmm.allocators.torch`` imports against this torch: torch's pluggable-allocator API is
    there and RMM's compiled allocator library exists, so on a GPU ``rmm_torch_allocator`` would be
    set; without one it is None. Not proven: that torch allocates through RMM."""
    import torch

    rmm_torch = importlib.import_module("rmm.allocators.torch")
    from rmm.librmm import _logger

    assert hasattr(rmm_torch, "rmm_torch_allocator")
    assert rmm_torch.rmm_torch_allocator is None and not torch.cuda.is_available()
    assert rmm_torch.CUDAPluggableAllocator is torch.cuda.memory.CUDAPluggableAllocator
    assert (Path(_logger.__file__).parent / "_torch_allocator.so").is_file()


def test_gpu_memory_modes_reach_rmm_and_say_what_they_need(rapids, no_device):
    """``gpu_memory='rmm'`` finds RMM's real allocator modules and, without a GPU (no allocator
    built), refuses with one line instead of failing inside torch; 'release' and 'keep' need
    nothing before training. Not proven: torch and cuML drawing from one pool on a GPU."""
    from mfvc_gpu import MFVCError
    from mfvc_gpu.backends import rapids as rapids_backend

    rapids_backend.share_gpu_memory("keep")
    rapids_backend.share_gpu_memory("release")
    with pytest.raises(MFVCError, match="gpu_memory='rmm' needs a CUDA GPU"):
        rapids_backend.share_gpu_memory("rmm")
    assert rapids_backend._RMM_FOR_TORCH is False


# ================================================================ version records
def test_benchmark_machine_record_names_the_installed_rapids_versions(rapids):
    """``machine.json`` of a benchmark records the CuPy, cuML and cuDF versions that ran."""
    from mfvc_gpu.bench.report import _versions

    v = _versions()
    assert (v.get("cupy"), v.get("cuml"), v.get("cudf")) == (
        metadata.version("cupy-cuda13x"),
        metadata.version("cuml-cu13"),
        metadata.version("cudf-cu13"),
    )


def test_reproduction_report_names_the_installed_cuml_version(rapids):
    """The reproduction report's versions line includes the cuML that ran."""
    from mfvc_gpu.reproduce.report import versions

    assert (
        f"cuml-cu13 {metadata.version('cuml-cu13')}" in versions()
        or f"cuml {metadata.version('cuml-cu13')}" in versions()
    )
