"""A clustering run as the CLI does it: load, fit, score, and write one run folder atomically."""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import RunConfig
from .data.loading import load_dataset
from .errors import MFVCError
from .estimator import MFVC
from .fileio import (
    FileSystemError,
    make_dirs,
    os_error,
    publish_dir,
    recover_dir,
    remove_stale_temps,
    write_json,
    write_text,
)
from .metrics import evaluate
from .plotting import plot_embedding
from .report import write_run_views
from .resolution import resolve
from .train import numerics

log = logging.getLogger(__name__)


def partial_dir(out: Path) -> Path:
    """Where a run is built (and its checkpoint kept) until it is complete."""
    return out.parent / f".{out.name}.partial"


CHECKPOINT = "checkpoint.pt"


def check_writable(out: Path, overwrite: bool) -> list[Path]:
    """Fail early, before any compute, when ``out`` exists (without ``overwrite``) or cannot be
    written: the hidden working folder is created and removed once, so a read-only or full file
    system, a path under ``/proc`` or a name too long is found here, not after training.

    Returns the parent folders it had to create (deepest first), for :func:`remove_empty` should
    the run fail."""
    try:
        return _check_writable(out, overwrite)
    except OSError as exc:  # e.g. a name too long for the hidden working folder, met by exists()
        raise os_error(out, exc, "write the run folder") from exc


def _check_writable(out: Path, overwrite: bool) -> list[Path]:
    recover_dir(out)  # an old run that a killed --overwrite left aside on a file system without atomic exchange
    if out.exists() and not overwrite:
        raise MFVCError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise MFVCError(f"{out} is a file, not a run folder; choose another --out")
    created = missing_ancestors(out.parent)
    parent = make_dirs(out.parent)
    work = partial_dir(out)
    try:
        if work.is_dir():
            if not os.access(work, os.W_OK | os.X_OK):
                raise os_error(out, OSError(errno.EACCES, os.strerror(errno.EACCES)), "write the run folder")
            return created
        try:
            work.mkdir()
            work.rmdir()
        except OSError as exc:
            raise os_error(out, exc, "write the run folder") from exc
        if not os.access(parent, os.W_OK):
            raise os_error(out, OSError(errno.EACCES, os.strerror(errno.EACCES)), "write the run folder")
    except BaseException:
        remove_empty(created)
        raise
    return created


def missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing, p = [], Path(folder)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created, deepest first, as long as they are empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


def write_labels_csv(path: Path, labels: np.ndarray, truth: np.ndarray | None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "cluster"] + (["label"] if truth is not None else []))
    for i, c in enumerate(labels):
        w.writerow([i, int(c)] + ([int(truth[i])] if truth is not None else []))
    write_text(path, buf.getvalue())


def start_work(out: Path, resume: bool) -> Path:
    """The hidden folder a run is built in (and keeps its checkpoint in) until it is complete.

    Without ``resume`` a leftover folder is emptied except for its checkpoint, which the new run
    overwrites after its first epoch: a new run that fails early loses nothing of an old one.
    With ``resume`` only the temporary files of a killed process are removed."""
    work = partial_dir(out)
    if work.exists() and not resume:
        _keep_only_checkpoint(work)
    elif work.exists():
        remove_stale_temps(work)  # what a kill -9 in the middle of an atomic write left behind
    return make_dirs(work)


def _keep_only_checkpoint(work: Path) -> None:
    for p in work.iterdir():
        if p.name == CHECKPOINT:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def after_failure(work: Path, existed: bool, exc: BaseException) -> BaseException:
    """Tidy the working folder of a run that stopped with ``exc``; return the exception to raise.

    What is kept: the training checkpoint, alone, when the run was interrupted (Ctrl-C, SIGTERM) or
    stopped by the file system (a full disk, ...): ``--resume`` continues from it, and the error
    says so. A run stopped by anything else (bad data, a diverging loss) removes the folder it
    created. The run folder ``out`` itself is never touched: it is replaced only by a finished run."""
    if not work.exists():
        return exc
    resumable = isinstance(exc, (KeyboardInterrupt, FileSystemError))
    keep = (resumable or existed) and (work / CHECKPOINT).is_file()
    if keep:
        _keep_only_checkpoint(work)
        if isinstance(exc, FileSystemError):
            again = FileSystemError(
                f"{exc}; the finished epochs are kept in {work}: rerun with --resume once fixed", exc.path, exc.errno
            )
            again.__cause__ = exc.__cause__
            return again
    elif existed:
        _keep_only_checkpoint(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return exc


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
        metrics["training"] = dict(
            numerics(est.train_config_, est.device_),
            images_per_s=float(np.median([h["images_per_s"] for h in est.history_])),
        )
    return metrics


def ran_config(cfg: RunConfig, est) -> RunConfig:
    """``cfg`` with every estimator setting as the fitted ``est`` used it (profile, epochs, device, ...)."""
    ran = {k: v for k, v in est.resolved_params().items() if k in cfg.to_dict()}
    return replace(cfg, **ran)


@contextmanager
def building(out: Path, resume: bool):
    """The hidden folder a run is written in; published to ``out`` when the block completes, else
    left as :func:`after_failure` decides (its checkpoint kept for ``--resume`` where it helps)."""
    existed = partial_dir(out).exists()
    work = start_work(out, resume)
    try:
        yield work
        publish(work, out)
    except BaseException as exc:
        failure = after_failure(work, existed, exc)
        if failure is exc:
            raise
        raise failure from exc


def publish(work: Path, out: Path) -> Path:
    """Move a finished run folder from its hidden working name to ``out``; an old ``out`` is
    replaced only by that rename (:func:`mfvc_gpu.fileio.publish_dir`)."""
    return publish_dir(work, out)


def _load(cfg: RunConfig):
    """``load_dataset`` with the run's data settings."""
    return load_dataset(cfg.dataset, cfg.split, cfg.data_dir, pixel_max=cfg.pixel_max, bad_images=cfg.bad_images)


def run_cluster(
    cfg: RunConfig,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    columns: str | None = None,
    dask_cluster: str | None = None,
    n_workers: int | None = None,
) -> dict:
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
    created = check_writable(out, overwrite)
    try:
        return _run_images(cfg, out, resume, progress, dask_cluster, n_workers)
    except BaseException:
        remove_empty(created)
        raise


def _run_images(
    cfg: RunConfig, out: Path, resume: bool, progress: bool, dask_cluster: str | None, n_workers: int | None
) -> dict:
    t0 = time.perf_counter()
    ds = _load(cfg)
    t_load = time.perf_counter() - t0
    k = cfg.n_clusters or ds.n_classes or "auto"  # no labels and no number: chosen in the UMAP space
    cfg = replace(cfg, n_clusters=k)
    with building(out, resume) as work:
        # the loader has applied pixel_max: the estimator gets its images as uint8 (255 = white)
        params = cfg.estimator_params()
        if "pixel_max" in params:
            params["pixel_max"] = None
        est = MFVC(**params, checkpoint=str(work / CHECKPOINT), resume=resume, progress=progress)
        if dask_cluster is None:
            est.fit(ds.images)
        else:
            from .distributed import fit_distributed

            fit_distributed(est, ds.images, dask_cluster, n_workers)
        cfg = replace(ran_config(cfg, est), pixel_max=cfg.pixel_max)
        metrics = run_metrics(
            est,
            ds.name,
            len(ds),
            est.n_clusters_,
            t_load,
            scores=evaluate(ds.labels, est.labels_) if ds.labels is not None else {},
        )
        if est.k_search_ is not None:
            metrics["k_search"] = {k: v for k, v in est.k_search_.to_dict().items() if k != "scores"}
        if dask_cluster is not None:
            metrics["distributed"] = est.distributed_
        cfg.to_yaml(work / "config.yaml")
        write_json(work / "metrics.json", metrics)
        write_labels_csv(work / "labels.csv", est.labels_, ds.labels)
        title = f"{ds.name}: {len(ds)} images, {est.n_clusters_} clusters" + (
            f", ACC {metrics['acc']:.3f}" if "acc" in metrics else ""
        )
        plot_embedding(est.embedding_, est.labels_, work / "embedding.png", title)
        write_run_views(work, est, ds, metrics, cfg.to_dict(), title)
        est.save(work / "model")
        (work / CHECKPOINT).unlink(missing_ok=True)
    return metrics


def run_table(cfg, out: Path, columns: str | None = None, overwrite: bool = False) -> dict:
    """Cluster the rows of the table ``cfg.dataset`` (UMAP + K-Means, no encoder); write run folder ``out``.

    Returns the metrics dict (also written to ``metrics.json``). Needs ``cfg.n_clusters``: a
    table has no classes to count.
    """
    out = Path(out)
    created = check_writable(out, overwrite)
    try:
        return _run_table(cfg, out, columns)
    except BaseException:
        remove_empty(created)
        raise


def _run_table(cfg, out: Path, columns: str | None) -> dict:
    from .tables import parse_columns, read_features, wants_gpu, write_results

    if not cfg.n_clusters:
        raise MFVCError(
            f"{Path(cfg.dataset).name} is a table with no classes to count clusters from; pass --n-clusters"
        )
    cfg = replace(cfg, encoder="none")
    placement = resolve(cfg.estimator_params()).placement
    gpu = wants_gpu(placement)
    t0 = time.perf_counter()
    table = read_features(cfg.dataset, parse_columns(columns), gpu=gpu, device=placement.device)
    t_load = time.perf_counter() - t0
    est = MFVC(**cfg.estimator_params(), progress=False)
    est.fit_features(table.features)
    cfg = ran_config(cfg, est)
    metrics = run_metrics(
        est,
        Path(cfg.dataset).name,
        len(table.features),
        cfg.n_clusters,
        t_load,
        scores={},
        n_features=len(table.columns),
        columns=table.columns,
        table_engine=table.engine,
    )
    with building(out, resume=False) as work:
        cfg.to_yaml(work / "config.yaml")
        write_json(work / "metrics.json", metrics)
        method = cfg.manifold
        write_results(work, est.labels_, est.embedding_, method if method != "none" else "feature", gpu=gpu)
        title = f"{metrics['dataset']}: {metrics['n_samples']} rows, {cfg.n_clusters} clusters"
        plot_embedding(est.embedding_, est.labels_, work / "embedding.png", title)
        est.save(work / "model")
    return metrics
