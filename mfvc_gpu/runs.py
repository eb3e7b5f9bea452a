"""A clustering run as the CLI does it: load, fit, score, and write one run folder atomically."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import RunConfig
from .data.loading import load_dataset
from .errors import MFVCError
from .metrics import evaluate
from .pipeline import MFVC
from .plotting import plot_embedding

log = logging.getLogger(__name__)


def partial_dir(out: Path) -> Path:
    """Where a run is built (and its checkpoint kept) until it is complete."""
    return out.parent / f".{out.name}.partial"


def _check_writable(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise MFVCError(f"{out} already exists; choose another --out or pass --overwrite")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MFVCError(f"cannot create the output folder {parent}: {exc.strerror}; choose another --out") from exc
    if not os.access(parent, os.W_OK):
        raise MFVCError(f"{parent} is not writable; choose another --out")


def write_labels_csv(path: Path, labels: np.ndarray, truth: np.ndarray | None) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "cluster"] + (["label"] if truth is not None else []))
        for i, c in enumerate(labels):
            w.writerow([i, int(c)] + ([int(truth[i])] if truth is not None else []))


def run_metrics(est, dataset: str, n_samples: int, n_clusters: int, t_load: float, scores: dict, **extra) -> dict:
    """What ``metrics.json`` holds: the scores, the sizes, where each stage ran and how long it took."""
    metrics = dict(scores)
    metrics.update(
        n_samples=int(n_samples),
        n_clusters=int(n_clusters),
        dataset=dataset,
        backend=est.backend_,
        device=est.device_,
        profile=est.profile_,
        **extra,
        timings=dict(load=t_load, **est.timings_),
        handoff=est.handoff_,
    )
    if est.placement_note_:
        metrics["note"] = est.placement_note_
    if est.history_:
        metrics["final_loss"] = est.history_[-1]["loss"]
    return metrics


def publish(work: Path, out: Path) -> None:
    """Move a finished run folder from its hidden working name to ``out`` (replacing an old one)."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)


def run_cluster(cfg: RunConfig, out: Path, resume: bool = False, overwrite: bool = False, progress: bool = True,
                columns: str | None = None, dask_cluster: str | None = None, n_workers: int | None = None) -> dict:
    """Cluster ``cfg.dataset`` and write the run folder ``out``; returns the metrics dict.

    The folder is built under a hidden ``.NAME.partial`` name (which also keeps the training
    checkpoint for ``resume``) and renamed to ``out`` only when everything is written. A
    ``.csv``/``.parquet`` dataset is a table of feature vectors (``columns``: "a,b,c"), clustered
    without the image encoder (:func:`mfvc_gpu.tables.run_table`). With ``dask_cluster`` (local,
    local-cuda or a scheduler address) every stage after training runs on Dask
    (:func:`mfvc_gpu.distributed.fit_distributed`) and ``metrics.json`` gets a ``distributed`` entry.
    """
    from .tables import is_table, run_table

    if n_workers is not None and dask_cluster is None:
        raise MFVCError("--n-workers needs --dask-cluster (local, local-cuda or a scheduler address)")
    if dask_cluster is not None and is_table(cfg.dataset):
        raise MFVCError("--dask-cluster applies to image data sets; a table is clustered in one process")
    if is_table(cfg.dataset):
        return run_table(cfg, out, columns, overwrite=overwrite)
    if columns is not None:
        raise MFVCError("--columns applies to .csv/.parquet tables only; drop it or pass a table as --dataset")
    out = Path(out)
    _check_writable(out, overwrite)
    t0 = time.perf_counter()
    ds = load_dataset(cfg.dataset, cfg.split, cfg.data_dir)
    t_load = time.perf_counter() - t0
    k = cfg.n_clusters or ds.n_classes
    if not k:
        raise MFVCError(f"{cfg.dataset} has no labels to count classes from; pass --n-clusters")
    cfg = replace(cfg, n_clusters=int(k))
    work = partial_dir(out)
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    est = MFVC.from_config(cfg, checkpoint=work / "checkpoint.pt", resume=resume, progress=progress)
    if dask_cluster is None:
        est.fit(ds.images)
    else:
        from .distributed import fit_distributed

        fit_distributed(est, ds.images, dask_cluster, n_workers)
    t = est.train_config_
    cfg = replace(cfg, profile=est.profile_, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr)  # as it ran
    metrics = run_metrics(est, ds.name, len(ds), int(k), t_load, scores=evaluate(ds.labels, est.labels_) if ds.labels is not None else {})
    if dask_cluster is not None:
        metrics["distributed"] = est.distributed_
    cfg.to_yaml(work / "config.yaml")
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_labels_csv(work / "labels.csv", est.labels_, ds.labels)
    title = f"{ds.name}: {len(ds)} images, {k} clusters" + (f", ACC {metrics['acc']:.3f}" if "acc" in metrics else "")
    plot_embedding(est.embedding_, est.labels_, work / "embedding.png", title)
    est.save(work / "model")
    (work / "checkpoint.pt").unlink(missing_ok=True)
    publish(work, out)
    return metrics
