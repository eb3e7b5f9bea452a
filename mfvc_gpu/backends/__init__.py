"""Where each stage runs: one place resolves the device and the backend, once per fit.

``device="auto"`` picks CUDA when torch sees a GPU, else the CPU. ``backend="auto"`` picks
``rapids`` (cuML) when the device is CUDA and cuML imports, else ``cpu`` (umap-learn and
scikit-learn). An explicitly requested backend never falls back silently.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from ..errors import MFVCError

log = logging.getLogger(__name__)

RAPIDS_HINT = (
    "install RAPIDS with 'conda env create -f environment.yml' or use the container "
    "('docker compose -f docker/compose.yaml run --rm cluster ...')"
)


@dataclass(frozen=True)
class Placement:
    """The resolved placement: torch device for the encoder, backend for UMAP and clustering."""

    device: str
    backend: str
    note: str = ""


def rapids_available() -> bool:
    """True when cuML and CuPy are importable (checked without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("cuml", "cupy"))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve(device: str = "auto", backend: str = "auto") -> Placement:
    """Resolve ``device`` (auto|cpu|cuda|cuda:N) and ``backend`` (auto|cpu|rapids)."""
    if backend not in ("auto", "cpu", "rapids"):
        raise MFVCError(f"backend={backend!r} is not one of auto, cpu, rapids")
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    elif device.startswith("cuda"):
        if not cuda_available():
            raise MFVCError(f"device={device!r} but torch sees no CUDA GPU; use --device cpu or install a CUDA build of PyTorch")
    elif device != "cpu":
        raise MFVCError(f"device={device!r} is not one of auto, cpu, cuda, cuda:N")
    on_gpu = device.startswith("cuda")
    if backend == "rapids":
        if not on_gpu:
            raise MFVCError("backend='rapids' needs a CUDA device; use --device cuda or --backend cpu")
        if not rapids_available():
            raise MFVCError(f"backend='rapids' but cuML is not installed; {RAPIDS_HINT}")
        return Placement(device, "rapids")
    if backend == "auto" and on_gpu:
        if rapids_available():
            return Placement(device, "rapids")
        note = "CUDA without cuML: the encoder runs on the GPU, UMAP and clustering on the CPU"
        log.warning("%s (%s)", note, RAPIDS_HINT)
        return Placement(device, "cpu", note)
    return Placement(device, "cpu")


def get_backend(name: str):
    """The backend object for a resolved name."""
    if name == "cpu":
        from .cpu import CPUBackend

        return CPUBackend()
    if name == "rapids":
        from .rapids import RapidsBackend

        return RapidsBackend()
    raise MFVCError(f"unknown backend {name!r}")


__all__ = ["Placement", "resolve", "get_backend", "rapids_available", "RAPIDS_HINT"]
