"""A clustering run as the CLI does it: load, fit, score, and write one run folder atomically
(where and how it is written, and who may write it: :mod:`mfvc_gpu.runfolder`)."""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import interrupts
from .config import RunConfig
from .data.loading import load_dataset
from .errors import MFVCError
from .estimator import MFVC
from .fileio import (
    write_json,
    write_text,
)
from .metrics import evaluate
from .plotting import plot_embedding
from .report import write_run_views
from .resolution import resolve
from .runfolder import CHECKPOINT, Claim, building, claim
from .train import numerics

log = logging.getLogger(__name__)


def write_labels_csv(
    path: Path, labels: np.ndarray, truth: np.ndarray | None, sample: np.ndarray | None = None
) -> None:
    """index, cluster, [label], [in_sample: 1 for the rows a ``fit_sample`` run fitted on, 0 for those it labelled]."""
    columns = [np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    header = ["index", "cluster"]
    if truth is not None:
        columns.append(np.asarray(truth, dtype=np.int64))
        header.append("label")
    if sample is not None:
        flag = np.zeros(len(labels), dtype=np.int64)
        flag[sample] = 1
        columns.append(flag)
        header.append("in_sample")
    buf = io.StringIO()
    np.savetxt(buf, np.column_stack(columns), fmt="%d", delimiter=",", header=",".join(header), comments="")
    write_text(path, buf.getvalue())


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
            numerics(est.train_config_, est.device_, n_samples if est.sample_ is None else len(est.sample_)),
            images_per_s=float(np.median([h["images_per_s"] for h in est.history_])),
        )
    return metrics


def ran_config(cfg: RunConfig, est) -> RunConfig:
    """``cfg`` with every estimator setting as the fitted ``est`` used it (profile, epochs, device, ...)."""
    ran = {k: v for k, v in est.resolved_params().items() if k in cfg.to_dict()}
    return replace(cfg, **ran)


def inputs_of(cfg: RunConfig) -> list[Path]:
    """The folders and files a run reads, which its ``--out`` must never replace or sit in."""
    from .data.registry import cache_dir

    given = [cfg.dataset, cfg.data_dir, os.environ.get("MFVC_DATA_DIR"), cache_dir()]
    return [Path(p) for p in given if p and Path(p).exists()]


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
    with claim(Path(out), overwrite, inputs_of(cfg)) as c:
        return _run_images(cfg, c, resume, progress, dask_cluster, n_workers)


def _run_images(
    cfg: RunConfig, c: Claim, resume: bool, progress: bool, dask_cluster: str | None, n_workers: int | None
) -> dict:
    t0 = time.perf_counter()
    ds = _load(cfg)
    t_load = time.perf_counter() - t0
    k = cfg.n_clusters or ds.n_classes or "auto"  # no labels and no number: chosen in the UMAP space
    cfg = replace(cfg, n_clusters=k)
    with building(c, resume) as work:
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
        if est.sample_ is not None:  # the scores of the rows the stages were fitted on, beside those of all
            fitted = evaluate(ds.labels[est.sample_], est.labels_[est.sample_]) if ds.labels is not None else {}
            metrics["fit_sample"] = dict(fitted, n_samples=len(est.sample_))
        if est.k_search_ is not None:
            metrics["k_search"] = {k: v for k, v in est.k_search_.to_dict().items() if k != "scores"}
        if dask_cluster is not None:
            metrics["distributed"] = est.distributed_
        cfg.to_yaml(work / "config.yaml")
        write_json(work / "metrics.json", metrics)
        write_labels_csv(work / "labels.csv", est.labels_, ds.labels, est.sample_)
        title = f"{ds.name}: {len(ds)} images, {est.n_clusters_} clusters" + (
            f", ACC {metrics['acc']:.3f}" if "acc" in metrics else ""
        )
        interrupts.check()  # safe points between the writes
        plot_embedding(est.embedding_, est.labels_, work / "embedding.png", title)
        write_run_views(work, est, ds, metrics, cfg.to_dict(), title)
        interrupts.check()
        est.save(work / "model")
        (work / CHECKPOINT).unlink(missing_ok=True)
    return metrics


def run_table(cfg, out: Path, columns: str | None = None, overwrite: bool = False) -> dict:
    """Cluster the rows of the table ``cfg.dataset`` (UMAP + K-Means, no encoder); write run folder ``out``.

    Returns the metrics dict (also written to ``metrics.json``). Needs ``cfg.n_clusters``: a
    table has no classes to count.
    """
    with claim(Path(out), overwrite, inputs_of(cfg)) as c:
        return _run_table(cfg, c, columns)


def _run_table(cfg, c: Claim, columns: str | None) -> dict:
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
    with building(c, resume=False) as work:
        cfg.to_yaml(work / "config.yaml")
        write_json(work / "metrics.json", metrics)
        method = cfg.manifold
        write_results(work, est.labels_, est.embedding_, method if method != "none" else "feature", gpu=gpu)
        title = f"{metrics['dataset']}: {metrics['n_samples']} rows, {cfg.n_clusters} clusters"
        plot_embedding(est.embedding_, est.labels_, work / "embedding.png", title)
        est.save(work / "model")
    return metrics
