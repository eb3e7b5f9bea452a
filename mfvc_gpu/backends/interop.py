"""Hand arrays between PyTorch, CuPy and NumPy through DLPack without copying, and prove it.

Every helper here imports CuPy lazily, so the module imports on a machine without it. The
NumPy/CPU-tensor helpers work everywhere and are how the pointer checks are tested on a CPU.

A DLPack exchange shares memory: the consumer's array starts at the producer's address
(:func:`data_pointer` of both is equal). CUDA work is asynchronous, so before CuPy reads a
tensor that PyTorch wrote, PyTorch's stream must have finished that work; :func:`torch_to_cupy`
synchronizes it explicitly (and the DLPack protocol passes CuPy's stream on top of that).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MFVCError
from ..optional import RAPIDS_HINT, require

log = logging.getLogger(__name__)


def import_cupy():
    """Import CuPy, or raise :class:`MFVCError` saying how to get it."""
    return require("cupy", "the GPU handoff", f"{RAPIDS_HINT}; or run with --backend cpu")


def is_cupy(a: Any) -> bool:
    """True for a CuPy array (checked by type, without importing CuPy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def is_cudf(a: Any) -> bool:
    """True for a cuDF DataFrame or Series (checked by type, without importing cuDF)."""
    return type(a).__module__.split(".")[0] == "cudf"


def data_pointer(a: Any) -> int:
    """Address of the first element of a torch tensor, CuPy array or NumPy array."""
    if hasattr(a, "data_ptr"):
        return int(a.data_ptr())
    if is_cupy(a):
        return int(a.data.ptr)
    if isinstance(a, np.ndarray):
        return int(a.__array_interface__["data"][0])
    raise TypeError(f"no data pointer for {type(a).__name__}")


def as_float_contiguous(t):
    """``t.detach().contiguous().float()``; returns (tensor, copied) where ``copied`` says whether
    that made a new buffer (a non-contiguous or non-float32 input) instead of a view."""
    out = t.detach().contiguous().float()
    return out, out.data_ptr() != t.data_ptr()


def torch_to_cupy(t):
    """A CUDA tensor as a CuPy array on the same memory, after PyTorch's pending work on it finished.

    The tensor must already be contiguous float32 (see :func:`as_float_contiguous`); the result
    is a view, so writing through either side changes both.
    """
    import torch

    if t.device.type != "cuda":
        raise ValueError(f"torch_to_cupy takes CUDA tensors; this one is on {t.device}")
    cupy = import_cupy()
    with torch.cuda.device(t.device), cupy.cuda.Device(t.device.index):
        # The tensor was written on torch's current stream; CuPy reads on its own. Finish torch's
        # work first, so the order holds whatever streams either library uses.
        torch.cuda.current_stream(t.device).synchronize()
        return cupy.from_dlpack(t)


def to_cupy_float32(x) -> tuple[Any, dict]:
    """Any supported input as a C-contiguous float32 CuPy array, and a record of how it got there.

    A CUDA tensor goes through DLPack (no copy when it is already contiguous float32); a CuPy
    array or cuDF frame stays on the device; a CPU tensor or NumPy array is copied to the
    device (counted in ``host_to_device_bytes``).
    """
    cupy = import_cupy()
    info: dict = {
        "source": type(x).__module__.split(".")[0] + "." + type(x).__name__,
        "host_to_device_bytes": 0,
        "device_copy": False,
        "input_ptr": None,
    }
    if hasattr(x, "data_ptr"):  # a torch tensor
        info["input_ptr"] = int(x.data_ptr())
        info["source"] = f"torch.{x.device.type}"
        if x.device.type == "cuda":
            t, info["device_copy"] = as_float_contiguous(x)
            arr = torch_to_cupy(t)
        else:
            host = np.ascontiguousarray(x.detach().float().numpy(), dtype=np.float32)
            arr = cupy.asarray(host)
            info["host_to_device_bytes"] = int(host.nbytes)
    elif is_cudf(x):
        # cuDF fills a column-major block; one device-side transpose makes it row-major
        arr = cupy.ascontiguousarray(x.to_cupy(dtype=np.float32))
        info["input_ptr"] = None  # a frame has one buffer per column
    elif is_cupy(x):
        info["input_ptr"] = int(x.data.ptr)
        arr = cupy.ascontiguousarray(x, dtype=cupy.float32)
        info["device_copy"] = int(arr.data.ptr) != info["input_ptr"]
    else:
        host = np.ascontiguousarray(x, dtype=np.float32)
        info["input_ptr"] = data_pointer(host)
        arr = cupy.asarray(host)
        info["host_to_device_bytes"] = int(host.nbytes)
    if arr.ndim != 2:
        raise MFVCError(f"the features have shape {tuple(arr.shape)}; expected (n_samples, n_features)")
    info["array_ptr"] = int(arr.data.ptr)
    return arr, info


# ---------------------------------------------------------------- copy accounting with CUPTI
def device_to_host_from_trace(trace: dict) -> dict:
    """Device→host copies in a Chrome trace written by ``torch.profiler`` (CUPTI activity records).

    Returns ``{"bytes": total, "copies": count, "copies_without_size": count}``; a copy whose size
    the trace does not give is counted there, never as zero bytes.
    """
    total = copies = unknown = 0
    for ev in trace.get("traceEvents", []):
        if ev.get("cat") != "gpu_memcpy" or "DtoH" not in str(ev.get("name", "")):
            continue
        copies += 1
        size = (ev.get("args") or {}).get("bytes")
        if isinstance(size, (int, float)):
            total += int(size)
        else:
            unknown += 1
    return {"bytes": total, "copies": copies, "copies_without_size": unknown}


@contextmanager
def trace_device_to_host(result: dict) -> Iterator[dict]:
    """Record every device→host copy made inside the block (by any library) into ``result``.

    Uses ``torch.profiler`` with CUDA activity (CUPTI), which sees copies made by CuPy and cuML
    too; the block is slower while traced. ``result`` gets the keys of
    :func:`device_to_host_from_trace`.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        yield result
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        result.update(device_to_host_from_trace(json.loads(path.read_text())))


__all__ = [
    "import_cupy",
    "is_cupy",
    "is_cudf",
    "data_pointer",
    "as_float_contiguous",
    "torch_to_cupy",
    "to_cupy_float32",
    "device_to_host_from_trace",
    "trace_device_to_host",
]
