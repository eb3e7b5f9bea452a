"""Tabular feature vectors: read CSV / Parquet, cluster them, write labels and embeddings as Parquet.

On the GPU path (backend ``rapids``) tables are read by cuDF straight into device memory and
the result files are written by cuDF; on the CPU pandas (with pyarrow) does both. The image
encoder is skipped: the chosen columns go to UMAP and K-Means as they are
(:meth:`mfvc_gpu.MFVC.fit_features`).

``mfvc-gpu cluster --dataset table.parquet --columns a,b,c --n-clusters 5`` writes a run folder
with ``config.yaml``, ``metrics.json``, ``labels.parquet`` (``row``, ``cluster``),
``embedding.parquet`` (one column per output dimension), ``embedding.png`` and ``model/``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MFVCError
from .fileio import atomic_path
from .optional import TABLES_HINT, import_problem, require

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass
class Table:
    """Feature vectors read from a table.

    features : (n_rows, n_columns) C-contiguous float32; NumPy (pandas) or CuPy (cuDF).
    columns : the columns used, in that order.
    engine : "pandas" or "cudf".
    """

    features: Any
    columns: list[str]
    engine: str
    path: Path


def is_table(name: str | os.PathLike | None) -> bool:
    """True when ``name`` names a CSV or Parquet file (by its suffix)."""
    return name is not None and Path(str(name)).suffix.lower() in TABLE_SUFFIXES


def cudf_available() -> bool:
    """True when cuDF imports."""
    return import_problem("cudf") is None


def wants_gpu(placement) -> bool:
    """Whether a run placed by ``placement`` (a :class:`mfvc_gpu.backends.Placement`) reads its table with
    cuDF: exactly when the stages run on the ``rapids`` backend and cuDF imports."""
    return placement.backend == "rapids" and cudf_available()


def parse_columns(spec: str | None) -> list[str] | None:
    """``"a,b,c"`` → ``["a", "b", "c"]``; None stays None (all columns)."""
    if spec is None:
        return None
    cols = [c.strip() for c in spec.split(",")]
    if not all(cols):
        raise MFVCError(
            f"--columns {spec!r} contains an empty name; give names separated by commas, e.g. --columns a,b,c"
        )
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise MFVCError(f"--columns names {', '.join(dup)} more than once; give each column once")
    return cols


def _kind(path: Path) -> str:
    return "csv" if path.suffix.lower() == ".csv" else "parquet"


def table_columns(path: str | os.PathLike) -> list[str]:
    """The column names of a CSV (its header row) or Parquet file (its schema), without reading the data."""
    path = Path(path)
    if not path.is_file():
        raise MFVCError(f"table {path} not found; check the --dataset path")
    try:
        if _kind(path) == "csv":
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            if not header:
                raise MFVCError(f"{path} is empty; a CSV table needs a header row with the column names")
            return [h.strip() for h in header]
        pq = require("pyarrow.parquet", "reading Parquet", TABLES_HINT)
        return list(pq.read_schema(path).names)
    except MFVCError:
        raise
    except Exception as exc:  # a corrupt file: pyarrow and csv raise many types
        raise MFVCError(f"cannot read the table {path}: {exc}") from exc


def select_columns(path: str | os.PathLike, columns: list[str] | None) -> list[str]:
    """Check ``columns`` against the table's header; None means every column."""
    available = table_columns(path)
    if columns is None:
        return available
    missing = [c for c in columns if c not in available]
    if missing:
        raise MFVCError(
            f"column(s) {', '.join(missing)} not in {Path(path).name}; its columns are {', '.join(available)}"
        )
    return list(columns)


def _check_frame(df, cols: list[str], path: Path) -> None:
    """Numeric columns only, no missing values (same checks for pandas and cuDF frames)."""
    bad = [c for c in cols if getattr(df[c].dtype, "kind", "O") not in "biuf"]
    if bad:
        raise MFVCError(
            f"column(s) {', '.join(bad)} of {path.name} are not numeric; choose numeric ones with --columns"
        )
    missing = [c for c in cols if int(df[c].isna().sum()) > 0]
    if missing:
        raise MFVCError(f"column(s) {', '.join(missing)} of {path.name} have missing values; fill or drop them first")


def read_features(
    path: str | os.PathLike, columns: list[str] | None = None, gpu: bool = False, device: str = "cuda"
) -> Table:
    """Read the feature columns of a CSV or Parquet table as float32 rows.

    Parameters
    ----------
    path : a ``.csv``, ``.parquet`` or ``.pq`` file.
    columns : the feature columns, in order; None takes every column (all must be numeric).
    gpu : read with cuDF into device memory (a CuPy array) instead of pandas (a NumPy array).
    device : with ``gpu``, the GPU to read onto ("cuda" is the current one, "cuda:N" GPU N).
    """
    path = Path(path)
    cols = select_columns(path, columns)
    if gpu:
        import cudf
        import cupy

        index = int(device.split(":")[1]) if ":" in device else cupy.cuda.runtime.getDevice()
        with cupy.cuda.Device(index):  # cuDF reads onto CuPy's current device: make it the chosen one
            df = (
                cudf.read_csv(str(path), usecols=cols)
                if _kind(path) == "csv"
                else cudf.read_parquet(str(path), columns=cols)
            )
            _check_frame(df, cols, path)
            x = cupy.ascontiguousarray(df[cols].astype("float32").to_cupy())  # cuDF gives column-major
        xp, engine = cupy, "cudf"
    else:
        pd = require("pandas", "reading tables", TABLES_HINT)
        df = pd.read_csv(path, usecols=cols) if _kind(path) == "csv" else pd.read_parquet(path, columns=cols)
        _check_frame(df, cols, path)
        x = np.ascontiguousarray(df[cols].to_numpy(dtype=np.float32))
        xp, engine = np, "pandas"
    if len(x) == 0:
        raise MFVCError(f"{path.name} has no rows")
    if not bool(xp.isfinite(x).all()):
        raise MFVCError(f"{path.name} holds infinite values (or values too large for float32) in {', '.join(cols)}")
    return Table(x, cols, engine, path)


def write_parquet(path: str | os.PathLike, data: Mapping[str, Any], gpu: bool = False) -> Path:
    """Write the 1-D arrays in ``data`` as the columns of a Parquet file, atomically.

    The file is written under a temporary name in the same folder and renamed, so ``path`` is
    either absent or complete. ``gpu`` writes with cuDF, else pandas.
    """
    path = Path(path)
    lengths = {len(v) for v in data.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    with atomic_path(path) as tmp:
        if gpu:
            import cudf

            cudf.DataFrame(dict(data)).to_parquet(tmp, index=False)
        else:
            pd = require("pandas", "writing Parquet", TABLES_HINT)
            pd.DataFrame({k: np.asarray(v) for k, v in data.items()}).to_parquet(tmp, index=False)
    return path


def write_results(folder: Path, labels, embedding, prefix: str = "umap", gpu: bool = False) -> str:
    """``labels.parquet`` (row, cluster) and ``embedding.parquet`` (``prefix_0`` …) in ``folder``; where no
    Parquet writer is installed (pandas without pyarrow), the same columns as ``labels.csv`` and
    ``embedding.csv``, with a warning naming the extra to install. Returns the suffix written."""
    xp = np
    if gpu:
        import cupy as xp
    labels = xp.asarray(labels, dtype=xp.int64)
    embedding = xp.asarray(embedding, dtype=xp.float32)
    tables = {
        "labels": {"row": xp.arange(len(labels), dtype=xp.int64), "cluster": labels},
        "embedding": {f"{prefix}_{i}": xp.ascontiguousarray(embedding[:, i]) for i in range(embedding.shape[1])},
    }
    if gpu or import_problem("pyarrow") is None:
        for name, cols in tables.items():
            write_parquet(folder / f"{name}.parquet", cols, gpu)
        return ".parquet"
    log.warning(
        "no Parquet writer (pyarrow) is installed: the results are written as labels.csv and "
        "embedding.csv; for Parquet, %s",
        TABLES_HINT,
    )
    for name, cols in tables.items():
        with atomic_path(folder / f"{name}.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(cols))
            w.writerows(zip(*(np.asarray(c).tolist() for c in cols.values())))
    return ".csv"


__all__ = [
    "Table",
    "is_table",
    "parse_columns",
    "table_columns",
    "select_columns",
    "read_features",
    "write_parquet",
    "write_results",
    "wants_gpu",
    "cudf_available",
    "TABLE_SUFFIXES",
]
