"""``mfvc-gpu predict`` and ``mfvc-gpu transform``: a saved model applied to new images.

The model folder is the ``model/`` of a run (or anything :meth:`mfvc_gpu.MFVC.save` wrote).
Images the model was trained on get exactly the labels and coordinates of the run; new ones go
through the encoder, UMAP's ``transform`` and the saved K-Means centres. Every file is written
atomically and an existing one is replaced only with ``overwrite``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .errors import MFVCError
from .fileio import atomic_path, make_dirs


def _check_out(path: Path | None, overwrite: bool, flag: str) -> None:
    if path is None:
        return
    if path.exists() and not overwrite:
        raise MFVCError(f"{path} already exists; choose another {flag} or pass --overwrite")
    if path.suffix.lower() not in (".csv", ".npy") and flag != "--out":
        raise MFVCError(f"{flag} {path}: write the coordinates as .npy or .csv")
    make_dirs(path.parent)


def write_embedding(path: Path, embedding: np.ndarray) -> Path:
    """The coordinates as ``.npy`` (float32) or ``.csv`` (index, umap_0, umap_1, ...)."""
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(embedding, dtype=np.float32))
        else:
            header = "index," + ",".join(f"umap_{i}" for i in range(embedding.shape[1]))
            rows = np.column_stack([np.arange(len(embedding)), embedding])
            np.savetxt(tmp, rows, delimiter=",", header=header, comments="", fmt=["%d"] + ["%.6g"] * embedding.shape[1])
    return path


def run_predict(
    model: Path,
    dataset: str,
    out: Path | None,
    *,
    embedding: Path | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    pixel_max: float | None = None,
    bad_images: str = "error",
    device: str = "auto",
    backend: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Label (``out``: labels.csv) and/or embed (``embedding``: .npy or .csv) ``dataset`` with the saved ``model``.

    Returns a record: the number of images, how many the model had seen in training, the
    seconds, the cluster sizes and, when the images have labels, the scores.
    """
    from .data import load_dataset
    from .estimator import MFVC
    from .metrics import evaluate
    from .runs import write_labels_csv

    if out is None and embedding is None:
        raise MFVCError("nothing to write: give --out (labels.csv) and/or --embedding (.npy or .csv)")
    _check_out(out, overwrite, "--out")
    _check_out(embedding, overwrite, "--embedding")
    t0 = time.perf_counter()
    est = MFVC.load(model, device=device, backend=backend)
    ds = load_dataset(dataset, split, data_dir, pixel_max=pixel_max, bad_images=bad_images)
    emb, labels = est.transform_predict(ds.images)
    if out is not None:
        write_labels_csv(out, labels, ds.labels)
    if embedding is not None:
        write_embedding(embedding, emb)
    record = dict(
        dataset=ds.name,
        n_samples=len(ds),
        seconds=time.perf_counter() - t0,
        cluster_sizes={int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))},
        backend=est.backend_,
        device=est.device_,
    )
    if ds.labels is not None:
        record.update(evaluate(ds.labels, labels))
    return record


__all__ = ["run_predict", "write_embedding"]
