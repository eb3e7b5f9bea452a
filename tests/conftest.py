"""Shared fixtures; the ``gpu`` and ``rapids`` markers skip where the hardware or cuML is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The official MNIST files live in shared/data/mnist beside the checkout (never in the repo).
MNIST_DIR = Path(os.environ.get("MFVC_TEST_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _rapids() -> bool:
    from mfvc_gpu.backends import rapids_available

    return _cuda() and rapids_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA-enabled torch; none here")
    skip_rapids = pytest.mark.skip(reason="needs cuML/cuDF (RAPIDS) on a CUDA GPU; not installed here")
    has_cuda, has_rapids = _cuda(), None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "rapids" in item.keywords:
            has_rapids = _rapids() if has_rapids is None else has_rapids
            if not has_rapids:
                item.add_marker(skip_rapids)


@pytest.fixture(autouse=True)
def _cpu_unless_marked(request, monkeypatch):
    """Unmarked tests run on the CPU backend wherever they run: the one placement rule
    (:func:`mfvc_gpu.backends.resolve`) is told there is no CUDA GPU, so ``device``/``backend``
    "auto" resolve to cpu/cpu even on a GPU machine with cuML. ``gpu``/``rapids`` tests see the truth."""
    if any(m in request.keywords for m in ("gpu", "rapids", "rapids_api")):
        return
    from mfvc_gpu import backends

    monkeypatch.setattr(backends, "cuda_available", lambda: False)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST files not found in {MNIST_DIR} (set MFVC_TEST_MNIST_DIR)")
    return MNIST_DIR


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR


@pytest.fixture(scope="session")
def digits():
    from mfvc_gpu import load_dataset

    return load_dataset("digits")


@pytest.fixture
def blobs():
    """Well separated 5-cluster data in 8-D (latent-like features), with labels."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=600, n_features=8, centers=5, cluster_std=0.6, random_state=0)
    return x.astype(np.float32), y


class FittedWriters:
    """Records which module assigns each fitted attribute (``name_``) of any MFVC."""

    def __init__(self, monkeypatch) -> None:
        self.seen: dict[str, set[str]] = {}
        real = object.__setattr__

        def setattr_(est, name, value):
            if name.endswith("_") and not name.startswith("__"):
                caller = sys._getframe(1).f_globals.get("__name__", "?")
                self.seen.setdefault(caller, set()).add(name)
            real(est, name, value)

        def delattr_(est, name):
            if name.endswith("_") and not name.startswith("__"):
                caller = sys._getframe(1).f_globals.get("__name__", "?")
                self.seen.setdefault(caller, set()).add(f"del {name}")
            object.__delattr__(est, name)

        from mfvc_gpu import MFVC

        monkeypatch.setattr(MFVC, "__setattr__", setattr_, raising=False)
        monkeypatch.setattr(MFVC, "__delattr__", delattr_, raising=False)

    def ours(self) -> dict[str, set[str]]:
        """The package's writers (scikit-learn's ``validate_data`` records ``n_features_in_`` for the estimator)."""
        return {m: names for m, names in self.seen.items() if m.startswith("mfvc_gpu")}


@pytest.fixture
def writers(monkeypatch) -> FittedWriters:
    """Which modules set an MFVC's fitted attributes while the test runs (``writers.ours()``)."""
    return FittedWriters(monkeypatch)


# ---------------------------------------------------------------- the command-line tests' data and runner
from clihelpers import CLI, N_IMAGES  # noqa: E402 - the helpers module sits beside this file


@pytest.fixture(scope="module")
def digits_u8():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * 255 / 16).astype(np.uint8), d.target.astype(np.int64)


@pytest.fixture
def npz(tmp_path_factory, digits_u8):
    """64 digits as uint8 with labels, outside the test's own folder (whose state is checked)."""
    path = tmp_path_factory.mktemp("data") / "small.npz"
    x, y = digits_u8
    np.savez(path, images=x[:N_IMAGES], labels=y[:N_IMAGES])
    return path


@pytest.fixture
def cli(capsys, caplog):
    return CLI(capsys, caplog)
