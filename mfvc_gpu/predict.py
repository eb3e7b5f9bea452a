"""``mfvc-gpu predict`` and ``mfvc-gpu transform``: a saved model applied to new images.

The model folder is the ``model/`` of a run (or anything :meth:`mfvc_gpu.MFVC.save` wrote).
Images the model was trained on get exactly the labels and coordinates of the run; new ones go
through the encoder, the learned map (or UMAP's ``transform``, for a model fitted with ``--out-of-sample umap``)
and the saved
K-Means centres or mixture, in streamed chunks. Every file is written
atomically and an existing one is replaced only with ``overwrite``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import interrupts
from .errors import MFVCError
from .fileio import atomic_path, make_dirs
from .runfolder import missing_ancestors, remove_empty


def check_outputs(outputs: dict[str, Path | None], inputs: dict[str, Path], overwrite: bool, coords: str) -> None:
    """Before any work: each output (flag -> path) is a file of its own, names no input and nothing inside
    the model folder, and exists only with ``overwrite``; the coordinates (flag ``coords``) are .npy or .csv."""
    given = {flag: Path(p) for flag, p in outputs.items() if p is not None}
    seen: dict[Path, str] = {}
    for flag, path in given.items():
        where = path.resolve()
        if where in seen:
            raise MFVCError(f"{seen[where]} and {flag} both name {path}; give each output a file of its own")
        seen[where] = flag
        for what, src in inputs.items():
            src = src.resolve()
            if where == src or src in where.parents:
                raise MFVCError(f"{flag} {path} would write over the {what} {src}; choose a file outside it")
        if path.is_dir():
            raise MFVCError(f"{flag} {path} is a folder; name a file")
        if path.exists() and not overwrite:
            raise MFVCError(f"{path} already exists; choose another {flag} or pass --overwrite")
        if flag == coords and path.suffix.lower() not in (".csv", ".npy"):
            raise MFVCError(f"{flag} {path}: write the coordinates as .npy or .csv")


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
    progress: bool = False,
    overwrite: bool = False,
    embedding_flag: str = "--embedding",
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
    inputs = {"model folder": Path(model), "data set": Path(dataset)} | (
        {"data folder": Path(data_dir)} if data_dir else {}
    )
    outputs = {"--out": out, embedding_flag: embedding} if out is not None else {embedding_flag: embedding}
    check_outputs(outputs, {k: v for k, v in inputs.items() if v.exists()}, overwrite, coords=embedding_flag)
    t0 = time.perf_counter()
    est = MFVC.load(model, device=device, backend=backend).set_params(progress=progress)
    ds = load_dataset(dataset, split, data_dir, pixel_max=pixel_max, bad_images=bad_images)
    interrupts.check()  # safe points: a signal stops the command here, never inside a library
    emb, labels = est.transform_predict(ds.images)
    interrupts.check()
    targets = [Path(p) for p in (out, embedding) if p is not None]
    new = [p for p in targets if not p.exists()]
    created = sorted({d for p in targets for d in missing_ancestors(p.parent)}, key=lambda d: -len(d.parts))
    try:  # the outputs' folders are made only now, once there is something to write
        for p in targets:
            make_dirs(p.parent)
        if out is not None:
            write_labels_csv(Path(out), labels, ds.labels)
        if embedding is not None:
            write_embedding(Path(embedding), emb)
    except BaseException:  # a failed command leaves no output of its own behind
        for p in new:
            p.unlink(missing_ok=True)
        remove_empty(created)
        raise
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
