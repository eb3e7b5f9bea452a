"""The tasks the Dask workers run for :mod:`mfvc_gpu.distributed` (imported there, on each worker).

Every task is wrapped by :func:`on_worker`: whatever it raises comes back to the client as
:class:`StageFailed`, carrying the stage and the worker's address, and the full traceback goes to
the worker's log.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading

import numpy as np
import torch

from ..config import ManifoldConfig

log = logging.getLogger(__name__)


class StageFailed(Exception):
    """Raised on a worker: the stage, the worker's address and what went wrong (picklable)."""

    def __init__(self, stage: str, worker: str, message: str) -> None:
        super().__init__(stage, worker, message)

    def __str__(self) -> str:
        return f"{self.args[0]} failed on worker {self.args[1]}: {self.args[2]}"


def worker_address() -> str:
    """The address of the Dask worker running the caller ("client" outside a worker)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "client"


def on_worker(stage: str):
    """Decorate a task so that any exception comes back as :class:`StageFailed` (stage, worker)."""

    def deco(fn):
        @functools.wraps(fn)
        def task(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except StageFailed:
                raise
            except Exception as exc:
                log.exception("%s task failed", stage)  # the full traceback, in the worker's log
                raise StageFailed(stage, worker_address(), f"{type(exc).__name__}: {exc}") from exc

        return task

    return deco


def cores_per_process(processes: int) -> int:
    """This machine's usable cores shared out among ``processes`` processes (at least 1 each):
    several processes each running as many threads as there are cores slow one another down
    (measured here: two eager trainings with two threads each on two cores, over 10× slower)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes))


def _one_thread() -> None:
    """A CPU worker's tasks use the threads its cluster gave it (``MFVC_THREADS``, set by
    :func:`mfvc_gpu.distributed.connect.connect` to the worker's share of the cores; default 1)."""
    n = int(os.environ.get("MFVC_THREADS", "1"))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


def _model_on_worker(token: str, payload: dict, device: torch.device):
    """The network of run ``token``, built once per worker process from the broadcast weights."""
    from ..models import BetaVAE, VAEConfig

    with _MODELS_LOCK:
        model = _MODELS.get(token)
        if model is None:
            _MODELS.clear()  # one run at a time per worker: free the previous network
            model = BetaVAE(VAEConfig(**payload["config"]))
            model.load_state_dict(payload["state"])
            model.to(device).eval()
            _MODELS[token] = model
    return model


@on_worker("encode")
def encode_partition(
    images: np.ndarray, token: str, payload: dict | None, device: str, batch_size: int, cupy_out: bool
):
    """Posterior means of one partition, ``batch_size`` images at a time (raw pixels without a network)."""
    from ..train import encode

    dev = torch.device(device)
    if dev.type == "cpu":
        _one_thread()
    if payload is None:
        from ..data.loading import unit_float

        z = unit_float(torch.from_numpy(np.ascontiguousarray(images.reshape(len(images), -1))).to(dev))
    else:
        z = encode(_model_on_worker(token, payload, dev), images, dev, batch_size)
    if cupy_out:
        from ..backends import interop

        return interop.import_cupy().from_dlpack(z.contiguous())  # same device memory, no copy
    return z.cpu().numpy()


@on_worker("umap_fit")
def fit_umap(sample, cfg: dict, n_components: int, seed: int, gpu: bool):
    """UMAP fitted on the sample; returns (model, the sample's embedding)."""
    cfg = ManifoldConfig(**cfg)
    if gpu:
        from ..backends.rapids import import_cuml, umap_params

        model = import_cuml().UMAP(**umap_params(cfg, n_components, seed)).fit(sample)
        return model, model.embedding_
    from ..backends.cpu import CPUBackend

    _one_thread()
    return CPUBackend().fit_manifold(np.asarray(sample, dtype=np.float32), cfg, n_components, seed)


def _sample_rows_in(block_info, sample_rows: np.ndarray):
    """(rows of this block that are in the sorted sample, as block positions; their slice of the sample)."""
    start, stop = block_info[0]["array-location"][0]
    lo, hi = np.searchsorted(sample_rows, [start, stop])
    return sample_rows[lo:hi] - start, slice(lo, hi)


@on_worker("umap_transform")
def transform_block(
    block: np.ndarray,
    model,
    sample_rows: np.ndarray,
    sample_embedding: np.ndarray,
    n_components: int,
    batch_rows: int,
    block_info=None,
) -> np.ndarray:
    """One partition's embedding: the fit's own coordinates for rows in the sample, umap-learn's
    ``transform`` (``batch_rows`` rows at a time) for the others."""
    _one_thread()
    fitted, part = _sample_rows_in(block_info, sample_rows)
    out = np.empty((len(block), n_components), dtype=np.float32)
    out[fitted] = sample_embedding[part]
    rest = np.setdiff1d(np.arange(len(block)), fitted, assume_unique=True)
    for i in range(0, len(rest), batch_rows):
        rows = rest[i : i + batch_rows]
        out[rows] = model.transform(block[rows])
    return out


@on_worker("map_transform")
def map_block(block, state: dict):
    """One partition (NumPy or CuPy) through the learned map (``state``: its state dict as arrays) on the
    partition's device."""
    from ..embedding_map import EmbeddingMap, as_tensor

    _one_thread()
    device = torch.device("cuda", torch.cuda.current_device()) if hasattr(block, "__cuda_array_interface__") else None
    device = device or torch.device("cpu")
    m = EmbeddingMap.from_state({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}).to(device)
    with torch.inference_mode():
        out = m(as_tensor(block, device)).contiguous()
    if device.type == "cuda":
        import cupy

        out = cupy.from_dlpack(out.clone())
    else:
        out = out.numpy().copy()
    return out


@on_worker("umap_transform")
def keep_sample_rows(block, sample_rows: np.ndarray, sample_embedding, block_info=None):
    """A transformed partition (NumPy or CuPy) with the sample's rows put back where the fit placed them."""
    fitted, part = _sample_rows_in(block_info, sample_rows)
    out = block.copy()
    out[fitted] = sample_embedding[part]
    return out


def peak_memory() -> dict:
    """This process's peak resident memory (and the GPU memory torch/CuPy hold, if any).

    Linux: ``VmHWM`` of /proc/self/status, the peak of this process alone (``ru_maxrss`` would
    include the parent's peak for a worker forked from a large client). Elsewhere ``ru_maxrss``.
    """
    out: dict = {}
    try:
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        out["peak_rss_bytes"] = int(hwm.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        out["peak_rss_bytes"] = int(rss if sys.platform == "darwin" else rss * 1024)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_torch_bytes"] = int(torch.cuda.max_memory_allocated())
    if "cupy" in sys.modules:
        out["gpu_cupy_pool_bytes"] = int(sys.modules["cupy"].get_default_memory_pool().total_bytes())
    return out


def probe() -> dict:
    from ..backends import rapids_available

    return {
        "cuda": bool(torch.cuda.is_available()),
        "rapids": rapids_available(dask=True),
        "torch": torch.__version__,
        "threads": int(os.environ.get("MFVC_THREADS", "1")),
    }
