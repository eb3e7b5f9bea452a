"""A clustering run as the CLI does it: load, fit, score, and write one run folder atomically."""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import backends
from .config import RunConfig
from .data.loading import load_dataset
from .errors import MFVCError
from .metrics import evaluate
from .estimator import MFVC
from .fileio import make_dirs, publish_dir, write_json, write_text
from .plotting import plot_embedding

log = logging.getLogger(__name__)


def partial_dir(out: Path) -> Path:
    """Where a run is built (and its checkpoint kept) until it is complete."""
    return out.parent / f".{out.name}.partial"


def check_writable(out: Path, overwrite: bool) -> None:
    """Fail early, before any compute, when ``out`` exists (without ``overwrite``) or cannot be written."""
    if out.exists() and not overwrite:
        raise MFVCError(f"{out} already exists; choose another --out or pass --overwrite")
    parent = make_dirs(out.parent)
    if not os.access(parent, os.W_OK):
        raise MFVCError(f"cannot write to {parent}: permission denied; choose another --out")


def write_labels_csv(path: Path, labels: np.ndarray, truth: np.ndarray | None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "cluster"] + (["label"] if truth is not None else []))
    for i, c in enumerate(labels):
        w.writerow([i, int(c)] + ([int(truth[i])] if truth is not None else []))
    write_text(path, buf.getvalue())


def start_work(out: Path, resume: bool) -> Path:
    """The hidden folder a run is built in (and keeps its checkpoint in) until it is complete."""
    work = partial_dir(out)
    if work.exists() and not resume:
        shutil.rmtree(work)
    return make_dirs(work)


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


def ran_config(cfg: RunConfig, est) -> RunConfig:
    """``cfg`` with every estimator setting as the fitted ``est`` used it (profile, epochs, device, ...)."""
    ran = {k: v for k, v in est.resolved_params().items() if k in cfg.to_dict()}
    return replace(cfg, **ran)


def publish(work: Path, out: Path) -> Path:
    """Move a finished run folder from its hidden working name to ``out``; an old ``out`` is
    replaced only by that rename (:func:`mfvc_gpu.fileio.publish_dir`)."""
    return publish_dir(work, out)


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
    from .tables import is_table

    if n_workers is not None and dask_cluster is None:
        raise MFVCError("--n-workers needs --dask-cluster (local, local-cuda or a scheduler address)")
    if dask_cluster is not None and is_table(cfg.dataset):
        raise MFVCError("--dask-cluster applies to image data sets; a table is clustered in one process")
    if is_table(cfg.dataset):
        return run_table(cfg, out, columns, overwrite=overwrite)
    if columns is not None:
        raise MFVCError("--columns applies to .csv/.parquet tables only; drop it or pass a table as --dataset")
    out = Path(out)
    check_writable(out, overwrite)
    t0 = time.perf_counter()
    ds = load_dataset(cfg.dataset, cfg.split, cfg.data_dir)
    t_load = time.perf_counter() - t0
    k = cfg.n_clusters or ds.n_classes
    if not k:
        raise MFVCError(f"{cfg.dataset} has no labels to count classes from; pass --n-clusters")
    cfg = replace(cfg, n_clusters=int(k))
    work = start_work(out, resume)
    est = MFVC(**cfg.estimator_params(), checkpoint=str(work / "checkpoint.pt"), resume=resume, progress=progress)
    if dask_cluster is None:
        est.fit(ds.images)
    else:
        from .distributed import fit_distributed

        fit_distributed(est, ds.images, dask_cluster, n_workers)
    cfg = ran_config(cfg, est)
    metrics = run_metrics(est, ds.name, len(ds), int(k), t_load, scores=evaluate(ds.labels, est.labels_) if ds.labels is not None else {})
    if dask_cluster is not None:
        metrics["distributed"] = est.distributed_
    cfg.to_yaml(work / "config.yaml")
    write_json(work / "metrics.json", metrics)
    write_labels_csv(work / "labels.csv", est.labels_, ds.labels)
    title = f"{ds.name}: {len(ds)} images, {k} clusters" + (f", ACC {metrics['acc']:.3f}" if "acc" in metrics else "")
    plot_embedding(est.embedding_, est.labels_, work / "embedding.png", title)
    est.save(work / "model")
    (work / "checkpoint.pt").unlink(missing_ok=True)
    publish(work, out)
    return metrics


def run_table(cfg, out: Path, columns: str | None = None, overwrite: bool = False) -> dict:
    """Cluster the rows of the table ``cfg.dataset`` (UMAP + K-Means, no encoder); write run folder ``out``.

    Returns the metrics dict (also written to ``metrics.json``). Needs ``cfg.n_clusters``: a
    table has no classes to count.
    """
    from .tables import cudf_available, parse_columns, read_features, write_results

    out = Path(out)
    check_writable(out, overwrite)
    if not cfg.n_clusters:
        raise MFVCError(f"{Path(cfg.dataset).name} is a table with no classes to count clusters from; pass --n-clusters")
    placement = backends.resolve(cfg.device, cfg.backend)
    gpu = placement.backend == "rapids" and cudf_available()
    t0 = time.perf_counter()
    table = read_features(cfg.dataset, parse_columns(columns), gpu=gpu, device=placement.device)
    t_load = time.perf_counter() - t0
    cfg = replace(cfg, encoder="none")
    est = MFVC(**cfg.estimator_params(), progress=False)
    est.fit_features(table.features)
    cfg = ran_config(cfg, est)
    metrics = run_metrics(est, Path(cfg.dataset).name, len(table.features), cfg.n_clusters, t_load, scores={},
                          n_features=len(table.columns), columns=table.columns, table_engine=table.engine)
    work = start_work(out, resume=False)
    try:
        cfg.to_yaml(work / "config.yaml")
        write_json(work / "metrics.json", metrics)
        method = cfg.manifold
        write_results(work, est.labels_, est.embedding_, method if method != "none" else "feature", gpu=gpu)
        title = f"{metrics['dataset']}: {metrics['n_samples']} rows, {cfg.n_clusters} clusters"
        plot_embedding(est.embedding_, est.labels_, work / "embedding.png", title)
        est.save(work / "model")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    publish(work, out)
    return metrics
