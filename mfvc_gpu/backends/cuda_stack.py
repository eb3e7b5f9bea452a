"""One CUDA stack per process: the guard the placement rule applies before anything runs on cuML.

PyTorch, CuPy and cuML must share one set of CUDA libraries. Two CUDA majors in one environment
(a PyTorch wheel built for CUDA 12 beside RAPIDS for CUDA 13, say) fail later with undefined
symbols or a crash, far from their cause. :func:`stack_problem` compares, without importing
anything new, the CUDA major each library was built for (``torch.version.cuda``; the CUDA suffix
of the installed ``cupy-cudaNNx`` and ``cuml-cuNN`` distributions) and the copies of
``libcudart`` already mapped into the process, and says in one line what to reinstall.
"""

from __future__ import annotations

import re
from importlib import metadata

CUDA_MAJOR = "13"  # the stack the gpu extra installs
REINSTALL_TORCH = 'pip install --force-reinstall "torch>=2.11" (the registry\'s Linux wheel is the CUDA 13 build)'


def _suffix_major(pattern: str) -> str | None:
    for dist in metadata.distributions():
        m = re.fullmatch(pattern, (dist.metadata["Name"] or "").lower())
        if m:
            return m.group(1)[:2]
    return None


def cuda_majors() -> dict[str, str | None]:
    """The CUDA major each library was built for: ``torch`` ("13", or None for a CPU-only build), ``cupy`` and
    ``cuml`` (None where not installed), and ``libcudart``: the majors of the copies mapped into this process,
    with their paths ("13" for one copy; "12+13" or "13 (2 copies)" otherwise)."""
    import torch

    cuda = getattr(torch.version, "cuda", None)
    return {
        "torch": cuda.split(".")[0] if cuda else None,
        "cupy": _suffix_major(r"cupy-cuda(\d+)x"),
        "cuml": _suffix_major(r"cuml-cu(\d+)"),
        "libcudart": _mapped_cudart(),
    }


def _mapped_cudart() -> str | None:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libcudart.so" in line}
    except OSError:
        return None
    if not paths:
        return None
    majors = sorted({m.group(1) for p in paths if (m := re.search(r"libcudart\.so\.(\d+)", p))})
    label = "+".join(majors) or "?"
    return label if len(paths) == 1 else f"{label} ({len(paths)} copies: {', '.join(sorted(paths))})"


def stack_problem(majors: dict[str, str | None] | None = None) -> str | None:
    """None when torch, CuPy and cuML share one CUDA major (and one libcudart is mapped); else the problem and
    what to reinstall, in one line."""
    m = cuda_majors() if majors is None else majors
    import torch

    if m["torch"] is None and (m["cupy"] or m["cuml"]):
        return (
            f"torch {torch.__version__} is a CPU-only build, while cuML/CuPy for CUDA {m['cuml'] or m['cupy']} "
            f"are installed; install torch's CUDA {CUDA_MAJOR} build: {REINSTALL_TORCH}"
        )
    built = {name: v for name, v in m.items() if name != "libcudart" and v}
    if len(set(built.values())) > 1:
        odd = [n for n, v in built.items() if v != CUDA_MAJOR] or list(built)
        which = ", ".join(f"{n} for CUDA {v}" for n, v in built.items())
        fix = (
            REINSTALL_TORCH
            if odd == ["torch"]
            else f'reinstall {" and ".join(odd)} for CUDA {CUDA_MAJOR} (pip install ".[gpu]" in a fresh environment)'
        )
        return f"one process needs one CUDA major, but this environment has {which}; {fix}"
    cudart = m.get("libcudart")
    if cudart and ("copies" in cudart or "+" in cudart):
        return (
            f"libcudart is mapped more than once ({cudart}): two CUDA runtimes in one process; rebuild the "
            'environment with one pip resolution (pip install ".[gpu]" in a fresh environment)'
        )
    return None


__all__ = ["cuda_majors", "stack_problem", "CUDA_MAJOR", "REINSTALL_TORCH"]
