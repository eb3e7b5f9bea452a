"""Where each stage runs: the one placement rule, applied once per fit.

``device="auto"`` picks CUDA when torch sees a GPU, else the CPU. ``backend="auto"`` picks
``rapids`` (cuML) when the device is CUDA and cuML imports, else ``cpu`` (umap-learn and
scikit-learn). An explicitly requested backend never falls back silently.

:func:`place` is the rule; :func:`mfvc_gpu.resolution.resolve` is its only caller, once per fit
(callers whose facts differ from this process's, a Dask cluster's workers say, pass them in).

Every backend implements :class:`Backend`, the contract the estimator relies on; the estimator never
asks which backend it has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import MFVCError
from ..optional import RAPIDS_HINT, import_problem

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "rapids")


@dataclass(frozen=True)
class Placement:
    """The resolved placement: torch device for the encoder, backend for UMAP and clustering."""

    device: str
    backend: str
    note: str = ""

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


def rapids_problem(dask: bool = False) -> str | None:
    """None when cuML and CuPy import (and ``cuml.dask`` with ``dask``); else the reason, with the
    import error's own text when a library is installed but fails to import."""
    for module in ("cuml", "cupy") + (("cuml.dask", "dask_cuda") if dask else ()):
        problem = import_problem(module)
        if problem:
            return problem
    return None


def rapids_available(dask: bool = False) -> bool:
    """True when cuML and CuPy import (and ``cuml.dask`` with ``dask``)."""
    return rapids_problem(dask) is None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_device(device: str) -> None:
    """Raise :class:`MFVCError` unless ``device`` is auto, cpu, cuda or cuda:N."""
    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    if not ok:
        raise MFVCError(f"device={device!r} is not one of auto, cpu, cuda, cuda:N")


def place(
    device: str = "auto",
    backend: str = "auto",
    *,
    cuda: bool | None = None,
    rapids: bool | None = None,
    dask: bool = False,
) -> Placement:
    """Resolve ``device`` (auto|cpu|cuda|cuda:N) and ``backend`` (auto|cpu|rapids).

    ``cuda`` / ``rapids``: whether a CUDA GPU and cuML are there; None probes this process.
    ``dask``: the stages will run on cuML's Dask estimators, so ``cuml.dask`` must import too.
    """
    if backend not in BACKENDS:
        raise MFVCError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    check_device(device)
    if cuda is None and device != "cpu":
        cuda = cuda_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    elif device.startswith("cuda") and not cuda:
        raise MFVCError(
            f"device={device!r} but torch sees no CUDA GPU; use --device cpu or install a CUDA build of PyTorch"
            + _stack_hint()
        )
    on_gpu = device.startswith("cuda")
    if backend == "cpu" or (backend == "auto" and not on_gpu):
        return Placement(device, "cpu")
    if not on_gpu:
        raise MFVCError("backend='rapids' needs a CUDA device; use --device cuda or --backend cpu" + _stack_hint())
    have_rapids = rapids_available(dask) if rapids is None else rapids
    if have_rapids and rapids is None:  # this process will load cuML: one CUDA stack, or a clear refusal
        from .cuda_stack import stack_problem

        problem = stack_problem()
        if problem:
            raise MFVCError(f"the GPU stack is mixed: {problem}")
    if have_rapids:
        return Placement(device, "rapids")
    why = (rapids_problem(dask) if rapids is None else None) or "cuML is not available"
    if backend == "rapids":
        raise MFVCError(f"backend='rapids' but {why}; {RAPIDS_HINT}")
    note = "CUDA without cuML: the encoder runs on the GPU, UMAP and clustering on the CPU"
    log.warning("%s (%s; %s)", note, why, RAPIDS_HINT)
    return Placement(device, "cpu", note)


@runtime_checkable
class Backend(Protocol):
    """What every backend implements: the stages after the encoder, on one array type inside.

    ``handoff`` turns the encoder's output into the backend's array; ``to_numpy`` is the way out.
    Models are whatever the backend's libraries return; ``cluster_state`` / ``cluster_from_state``
    turn the fitted clusterer into arrays and back (for saving), and ``handoff_record`` says how
    the codes reached the backend (pointers, bytes copied) as it stands when the labels exist.
    """

    name: str

    def prepare(self, manifold: Any, n_components: int, seed: int, gpu_memory: str) -> None:
        """Before training: refuse what this backend cannot run, and set up memory sharing."""

    def handoff(self, z: Any) -> Any:
        """The latent codes (a torch tensor or an array) as this backend's float32 array."""

    def all_finite(self, x: Any) -> bool:
        """Whether ``x`` holds no NaN or infinity."""

    def to_numpy(self, a: Any) -> np.ndarray:
        """A host copy of a backend array (the edge)."""

    def before_manifold(self, gpu_memory: str, device: str) -> None:
        """Between the encoder and the manifold stage (hand the network's cached memory back)."""

    def fit_manifold(self, x: Any, cfg: Any, n_components: int, seed: int) -> tuple[Any, Any]:
        """Fit the manifold learner; (model, embedding). ``method='none'`` passes ``x`` through."""

    def transform_manifold(self, model: Any, x: Any) -> Any:
        """New points into a fitted manifold."""

    def fit_cluster(self, u: Any, cfg: Any, n_clusters: int, seed: int) -> tuple[Any, Any]:
        """Cluster the embedding; (model, labels)."""

    def refine_cluster(self, model: Any, u: Any, seed: int) -> tuple[Any, Any]:
        """A fitted K-Means or mixture refitted on ``u`` (the same points' new coordinates) from where it
        stands, one restart; (model, labels)."""

    def predict_cluster(self, model: Any, u: Any) -> Any:
        """Labels of new points under a fitted clusterer."""

    def kmeans_from_centres(self, centres: Any, seed: int) -> Any:
        """A fitted K-Means whose centres are exactly ``centres``."""

    def cluster_state(self, model: Any) -> dict[str, np.ndarray]:
        """The arrays that let the fitted clusterer label new points (empty for DBSCAN)."""

    def cluster_from_state(self, state: dict[str, np.ndarray], seed: int) -> Any:
        """The fitted clusterer back from :meth:`cluster_state` (None for DBSCAN)."""

    def handoff_record(self) -> dict:
        """How the codes reached this backend, as it stands now (a new dict each call)."""


def _stack_hint() -> str:
    """Where torch is a CPU-only build beside cuML: what to install (else nothing)."""
    from .cuda_stack import stack_problem

    problem = stack_problem()
    return f" ({problem})" if problem else ""


def get_backend(name: str) -> Backend:
    """The backend object for a resolved name."""
    if name == "cpu":
        from .cpu import CPUBackend

        return CPUBackend()
    if name == "rapids":
        from .rapids import RapidsBackend

        return RapidsBackend()
    raise MFVCError(f"unknown backend {name!r}")


__all__ = [
    "BACKENDS",
    "Backend",
    "Placement",
    "place",
    "check_device",
    "get_backend",
    "rapids_available",
    "rapids_problem",
    "cuda_available",
    "RAPIDS_HINT",
]
