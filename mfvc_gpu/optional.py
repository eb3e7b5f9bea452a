"""Optional dependencies: import one, or raise :class:`MFVCError` with the install hint.

Every optional import in the package goes through :func:`require`, so the message always names
the module, what needs it, how to install it, and, when the module is installed but fails to
import (a CUDA library mismatch, say), the original error text rather than "not installed".
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MFVCError

RAPIDS_HINT = (
    "install the GPU stack with pip install 'mfvc_gpu[gpu]' (CUDA 13 wheels, NVIDIA driver 580 or newer), "
    "'conda env create -f environment.yml', or use the container (docker/compose.yaml)"
)
DASK_HINT = "install the Dask extra: pip install 'mfvc_gpu[dask]'"
TABLES_HINT = "install pandas and pyarrow ('pip install mfvc_gpu[tables]')"


# How the libraries are called in messages (their import names are not their names).
NAMES = {
    "cuml": "cuML",
    "cuml.dask": "cuML's Dask API",
    "cupy": "CuPy",
    "cudf": "cuDF",
    "dask_cuda": "dask-cuda",
    "distributed": "dask.distributed",
    "dask_ml.cluster": "dask-ml",
    "pyarrow.parquet": "pyarrow",
}


def import_problem(module: str) -> str | None:
    """None when ``module`` imports; else why not ("not installed", or the import error's text)."""
    name = NAMES.get(module, module)
    try:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"{name} is not installed"
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - an import can fail with any error (OSError for a missing .so)
        return f"{name} is installed but failed to import ({type(exc).__name__}: {exc})"
    return None


def require(module: str, needed_for: str, hint: str) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MFVCError`: "<needed_for> needs <module>: <why>; <hint>"."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001
        problem = import_problem(module) or f"{type(exc).__name__}: {exc}"
        raise MFVCError(f"{needed_for} needs {NAMES.get(module, module)}, but {problem}; {hint}") from exc


__all__ = ["require", "import_problem", "RAPIDS_HINT", "DASK_HINT", "TABLES_HINT"]
