"""What a benchmark run is made of: its cases, its settings, which GPU rows can run, synthetic data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

STAGES = ("load", "train", "train_step", "encode", "handoff", "umap", "kmeans", "metrics", "predict", "end_to_end")
N_CLUSTERS = 10
LATENT_DIM = 32
IMAGE_FEATURES = 32 * 32
UMAP_EXACT_BELOW = 4096  # umap-learn computes all distances below this many points, else NN-descent


@dataclass
class Case:
    """One setting of one stage on one backend at one size; ``run`` is the timed call."""

    stage: str
    backend: str  # "cpu" or "gpu"
    device: str  # "cpu", "cuda", "cuda:N"
    library: str
    n_samples: int
    n_features: int
    dataset: str = "synthetic"
    variant: str = "default"
    baseline: bool = True  # the pipeline's own setting on this backend
    run: Callable[..., Any] | None = None
    setup: Callable[[], Any] | None = None  # before every call, untimed; its value is run's argument
    score: Callable[[Any, float], dict] | None = None  # quality and extra columns of one call's result
    prepare: Callable[[], None] | None = None  # once before the first call (data to the device)
    cleanup: Callable[[], None] | None = None
    threads: int | None = None  # torch threads during the case
    status: str = "ok"  # "ok", "unavailable" (no GPU / no cuML), "skipped" (no data, above a cap)
    note: str = ""
    code_path: str = ""  # a size-dependent code path (umap-learn: exact kNN below 4096, NN-descent above)

    @property
    def key(self) -> tuple:
        """Cases with the same key share one warm-up (at the first size met). The code path is part
        of it: numba compiles umap-learn's NN-descent only when the first call takes that path."""
        return (self.stage, self.backend, self.device, self.library, self.variant, self.code_path)

    @property
    def label(self) -> str:
        return f"{self.stage} {self.backend} n={self.n_samples}" + ("" if self.baseline else f" {self.variant}")


@dataclass(frozen=True)
class GpuSupport:
    """Which GPU rows can run: ``device`` for torch stages, ``cupy`` for the DLPack handoff,
    ``rapids`` for the cuML stages; each ``*_note`` says why a kind of row cannot run."""

    device: str | None
    rapids: bool
    torch_note: str = ""
    rapids_note: str = ""
    cupy: bool = False
    cupy_note: str = ""


def probe_gpu(device: str = "auto") -> GpuSupport:
    """Which GPU rows run, by the package's one placement rule (through :func:`mfvc_gpu.resolution.resolve`):
    "auto" uses a GPU when there is one; "cpu" runs no GPU rows; "cuda[:N]" requires one (an
    explicit request never falls back)."""
    from mfvc_gpu.backends import RAPIDS_HINT, rapids_problem
    from mfvc_gpu.optional import import_problem
    from mfvc_gpu.resolution import resolve

    if device == "cpu":
        why = "not run (--device cpu)"
        return GpuSupport(None, False, why, why, cupy_note=why)
    placement = resolve({"device": device}).placement
    if not placement.on_gpu:
        why = "unavailable: torch sees no CUDA GPU"
        return GpuSupport(None, False, why, why, cupy_note=why)
    cupy_problem = import_problem("cupy")
    cupy_note = f"unavailable: {cupy_problem} ({RAPIDS_HINT})" if cupy_problem else ""
    if placement.backend == "rapids":
        return GpuSupport(placement.device, True, cupy=True)
    return GpuSupport(
        placement.device,
        False,
        "",
        f"unavailable: {rapids_problem()} ({RAPIDS_HINT})",
        cupy=cupy_problem is None,
        cupy_note=cupy_note,
    )


@dataclass
class Settings:
    """Sizes and options of one benchmark run (the presets live in ``mfvc_gpu.bench``)."""

    stages: tuple[str, ...] = STAGES
    sizes: tuple[int, ...] = (1000, 2000, 5000)  # synthetic stages: handoff, umap, kmeans, metrics
    image_sizes: tuple[int, ...] = (1000,)  # real-image stages: train, encode, end_to_end
    encode_sizes: tuple[int, ...] = ()  # encode only, beyond the data set: its images repeated to n
    datasets: tuple[str, ...] = ("mnist",)  # end_to_end runs on each; the others on the first
    data_dir: str | None = None
    train_subset: int | None = 1000  # at most this many images per training epoch
    predict_fit: int = 2000  # the predict stage's model is fitted on this many training images
    variant_size: int | None = 2000  # the size at which non-default settings run (closest of sizes)
    umap_cpu_max_n: int | None = None  # above this, CPU UMAP, CPU end_to_end and large CPU encode rows are skipped
    epochs: int = 1  # end_to_end training epochs
    trust_sample: int = 2000  # points scored by trustworthiness
    seed: int = 0
    train_step_batches: tuple[int, ...] = (64, 256)  # the paper's batch (and the profiles'), and a larger one
    train_step_rounds: int = 5  # turns each variant takes (median over them)
    train_step_steps: int = 20  # optimiser steps per turn


def synthetic_blobs(
    n: int, d: int, k: int = N_CLUSTERS, spread: float = 3.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points in ``d`` dimensions around ``k`` random centres (unit noise): float32, labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, spread, (k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x += centres[y]
    return x, y.astype(np.int64)


def trust(x: np.ndarray, emb: np.ndarray, idx: np.ndarray) -> float:
    """``sklearn.manifold.trustworthiness`` (5 neighbours) of the embedding on the sample ``idx``."""
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(x[idx], np.asarray(emb)[idx], n_neighbors=5))


__all__ = ["STAGES", "Case", "Settings", "GpuSupport", "probe_gpu", "synthetic_blobs", "trust"]
