"""Regenerate the paper's Tables 2–4 and Figures 5, 7, 8 and 9 (mean ± std over seeds).

    mfvc-gpu reproduce --table 2                   # MFVC on every data set found, 5 seeds
    mfvc-gpu reproduce --table 3                   # baselines: pixels K-Means / GMM / UMAP + GMM, N2D-style, MFVC
    mfvc-gpu reproduce --table 4                   # the ablations
    mfvc-gpu reproduce --figure 8                  # UMAP n_neighbors and min_dist against ACC
    mfvc-gpu reproduce --figure 9                  # DBSCAN min_samples against ACC, with and without MFVC features
    mfvc-gpu reproduce --figure 5                  # MFVC's embedding coloured by cluster (Figure 7: the ablations')

Every (data set, pipeline, seed) is computed once and cached under OUT/cache, and every trained
network once per (data set, seed, network, profile, epochs): the tables and figures share them,
and an interrupted command resumes where it stopped when run again. Data sets that are not
found are listed as skipped. Writes OUT/table<N>.md, OUT/figure<N>*.png and OUT/figure<N>.md.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mfvc_gpu.errors import MFVCError
from mfvc_gpu.fileio import check_writable_dir, write_text
from mfvc_gpu.runfolder import missing_ancestors, remove_empty

from . import variants as V

if TYPE_CHECKING:
    from .runner import Runner
from .report import fmt_seconds, footnotes, header, summarize, sweep_markdown, table2_markdown, variants_markdown

TABLE2_DATASETS = (
    "mnist-test",
    "fashion-mnist-test",
    "mnist",
    "fashion-mnist",
    "usps",
    "emnist-digits",
    "emnist-balanced",
)
SMALL_DATASETS = ("mnist-test", "fashion-mnist-test")
DEFAULT_SEEDS = {"table": 5, 8: 3, 9: 3, 5: 1, 7: 1}

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", type=int, choices=[2, 3, 4], help="2: MFVC per data set; 3: baselines; 4: ablations")
    what.add_argument(
        "--figure", type=int, choices=[5, 7, 8, 9], help="5/7: embeddings; 8: UMAP sweeps; 9: DBSCAN sweep"
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        help=f"data sets (names or paths; commas also separate). Default Table 2: {' '.join(TABLE2_DATASETS)} "
        f"(those not found are skipped); the rest: {' '.join(SMALL_DATASETS)}",
    )
    p.add_argument(
        "--seeds", type=int, help="seeds 0..N-1 (default: 5 for tables, 3 for Figures 8/9; Figures 5/7 draw seed 0)"
    )
    p.add_argument(
        "--profile",
        choices=["auto", "paper", "fast"],
        default="auto",
        help="training protocol (default auto: paper on CUDA, fast on the CPU)",
    )
    p.add_argument("--epochs", type=int, help="override the profile's epochs (also the N2D autoencoder's)")
    p.add_argument(
        "--data-dir", help="folder searched first for the data sets (then $MFVC_DATA_DIR, the cache, system folders)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("reproduce-results"), help="output folder (default reproduce-results/)"
    )
    p.add_argument("--variants", help="comma-separated subset of the rows of Tables 3/4 or the panels of Figure 7")
    p.add_argument("--limit", type=int, help="use a fixed random subset of N images of every data set (smoke runs)")
    p.add_argument("--n-neighbors-grid", help=f"Figure 8 (default {','.join(map(str, V.N_NEIGHBORS_GRID))})")
    p.add_argument("--min-dist-grid", help=f"Figure 8 (default {','.join(f'{v:g}' for v in V.MIN_DIST_GRID)})")
    p.add_argument("--min-samples-grid", help=f"Figure 9 (default {','.join(map(str, V.MIN_SAMPLES_GRID))})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "rapids"], help="where UMAP and clustering run")
    p.add_argument(
        "--report-only", action="store_true", help="compute nothing: write the tables/figures from the cache"
    )
    p.add_argument("--retry-failed", action="store_true", help="compute again the runs cached as failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def command_line(a: argparse.Namespace) -> str:
    parts = ["mfvc-gpu", "reproduce", f"--{'table' if a.table else 'figure'}", str(a.table or a.figure)]
    for name in (
        "datasets",
        "seeds",
        "profile",
        "epochs",
        "data_dir",
        "out",
        "variants",
        "limit",
        "n_neighbors_grid",
        "min_dist_grid",
        "min_samples_grid",
        "device",
        "backend",
        "report_only",
        "retry_failed",
    ):
        value = getattr(a, name, None)
        if (
            value in (None, False)
            or (name in ("profile", "device", "backend") and value == "auto")
            or (name == "out" and Path(value) == Path("reproduce-results"))
        ):
            continue
        flag = "--" + name.replace("_", "-")
        parts += [flag] if value is True else [flag, *(map(str, value) if isinstance(value, list) else [str(value)])]
    return " ".join(parts)


def _grid(text: str | None, default, cast, flag: str) -> list:
    if text is None:
        return list(default)
    try:
        values = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise MFVCError(f"{flag} {text!r}: not a comma-separated list of numbers") from exc
    if not values:
        raise MFVCError(f"{flag} {text!r}: no values")
    return values


def _datasets(a: argparse.Namespace, default) -> list[str]:
    names = [n.strip() for item in (a.datasets or default) for n in str(item).split(",") if n.strip()]
    return list(dict.fromkeys(names))


def run_grid(runner: Runner, datasets: list[str], seeds: list[int], variants: list, desc: str, progress: bool):
    """Every (data set, seed, variant), with a progress bar; returns (results, skipped, stats)."""
    from tqdm.auto import tqdm

    results, skipped, stats = {}, {}, dict(computed=0, cached=0)
    per_dataset = len(seeds) * len(variants)
    with tqdm(total=len(datasets) * per_dataset, desc=desc, unit="run", disable=not progress) as bar:
        for ds in datasets:
            done = 0
            try:
                for seed in seeds:
                    for v in variants:
                        bar.set_postfix_str(f"{ds} seed {seed} {v.name}")
                        rec = runner.result(ds, v, seed)
                        results[(ds, v.name, seed)] = rec
                        if rec is not None:
                            stats["cached" if rec["cached"] else "computed"] += 1
                        done += 1
                        bar.update()
            except V.DatasetUnavailable as exc:
                skipped[ds] = str(exc)
                bar.update(per_dataset - done)
                log.warning("%s: skipped — %s", ds, exc)
    return results, skipped, stats


def _cells(results: dict, ds: str, variants: list, seeds: list[int]) -> list[dict]:
    return [summarize([results.get((ds, v.name, s)) for s in seeds]) for v in variants]


def compute_seconds(recs: list[dict]) -> float:
    """Measured compute time of the cells, each trained network and each embedding counted once
    (several rows share them); the clustering of every cell counted."""
    shared: dict[tuple, float] = {}
    total = 0.0
    for r in recs:
        sec = r.get("seconds") or {}
        where = (r.get("dataset"), r.get("seed"))
        shared[(*where, "train", r.get("features"))] = sec.get("train", 0.0)
        if r.get("embedding"):
            shared[(*where, "manifold", r["embedding"])] = sec.get("manifold", 0.0)
        else:
            total += sec.get("manifold", 0.0)
        total += sec.get("cluster", 0.0)
    return float(total + sum(shared.values()))


def _run_facts(runner: Runner, a, seeds, results: dict, stats: dict, t0: float) -> dict:
    recs = [r for r in results.values() if r is not None]
    return dict(
        command=command_line(a),
        profile=runner.profile,
        epochs=runner.epochs,
        seeds=f"0–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0]),
        device=runner.device,
        backend=runner.backend,
        hardware=runner.hardware,
        limit=a.limit,
        result_hardware=[r.get("hardware") for r in recs if r.get("hardware")],
        wall_s=time.perf_counter() - t0,
        compute_s=compute_seconds(recs),
        **stats,
    )


write_atomic = write_text


# ---------------------------------------------------------------- tables
def do_table(runner: Runner, a, t0: float) -> tuple[list[Path], dict]:
    n = a.table
    rows = V.TABLES[n] if n == 2 else V.select(V.TABLES[n], a.variants)
    datasets = _datasets(a, TABLE2_DATASETS if n == 2 else SMALL_DATASETS)
    seeds = list(range(a.seeds or DEFAULT_SEEDS["table"]))
    results, skipped, stats = run_grid(runner, datasets, seeds, rows, f"table {n}", not a.no_progress)
    run = _run_facts(runner, a, seeds, results, stats, t0)
    live = [d for d in datasets if d not in skipped]
    if n == 2:
        md = table2_markdown(run, {d: _cells(results, d, rows, seeds)[0] for d in live}, V.PAPER_TABLE2, skipped)
    else:
        title = {3: "Table 3 — MFVC against the runnable baselines", 4: "Table 4 — ablations"}[n]
        per = {
            d: [(v.label, c, V.paper_numbers(v, d)) for v, c in zip(rows, _cells(results, d, rows, seeds))]
            for d in live
        }
        md = variants_markdown(title + " (mean ± std over seeds)", run, per, skipped)
    return [write_atomic(a.out / f"table{n}.md", md)], results


# ---------------------------------------------------------------- figures
def _mean_acc(cell: dict) -> float:
    vals = cell["acc_values"]
    return sum(vals) / len(vals) if vals else math.nan


def do_figure8(runner: Runner, a, t0: float):
    from mfvc_gpu.plotting import plot_curves

    nn = V.n_neighbors_sweep(_grid(a.n_neighbors_grid, V.N_NEIGHBORS_GRID, int, "--n-neighbors-grid"))
    md_ = V.min_dist_sweep(_grid(a.min_dist_grid, V.MIN_DIST_GRID, float, "--min-dist-grid"))
    datasets, seeds = _datasets(a, SMALL_DATASETS), list(range(a.seeds or DEFAULT_SEEDS[8]))
    results, skipped, stats = run_grid(runner, datasets, seeds, nn + md_, "figure 8", not a.no_progress)
    live = [d for d in datasets if d not in skipped]
    run = _run_facts(runner, a, seeds, results, stats, t0)
    written, text = (
        [],
        [
            header(
                "Figure 8 — UMAP n_neighbors and min_dist against ACC (MFVC, one trained encoder per data set "
                "and seed)",
                run,
            )
        ],
    )
    for param, sweep in (("n_neighbors", nn), ("min_dist", md_)):
        grid = [v.manifold[param] for v in sweep]
        series = {d: _cells(results, d, sweep, seeds) for d in live}
        other = f"min_dist {V.DEFAULT_MIN_DIST:g}" if param == "n_neighbors" else f"n_neighbors {V.DEFAULT_N_NEIGHBORS}"
        title = f"Figure 8 — UMAP {param} against ACC ({other}; mean over seeds)" + (
            f" on {live[0]}" if len(live) == 1 else ""
        )
        if series:
            written.append(
                plot_curves(
                    grid,
                    {d: [_mean_acc(c) for c in s] for d, s in series.items()},
                    a.out / f"figure8-{param}.png",
                    xlabel=param,
                    ylabel="ACC",
                    title=title,
                )
            )
        text.append(sweep_markdown(title, param, grid, series))
    text.append(footnotes([], skipped))
    written.append(write_atomic(a.out / "figure8.md", "\n".join(text)))
    return written, results


def do_figure9(runner: Runner, a, t0: float):
    from mfvc_gpu.plotting import plot_curves

    grid = _grid(a.min_samples_grid, V.MIN_SAMPLES_GRID, int, "--min-samples-grid")
    sweeps = V.min_samples_sweep(grid)
    datasets, seeds = _datasets(a, SMALL_DATASETS), list(range(a.seeds or DEFAULT_SEEDS[9]))
    results, skipped, stats = run_grid(
        runner, datasets, seeds, [v for s in sweeps.values() for v in s], "figure 9", not a.no_progress
    )
    run = _run_facts(runner, a, seeds, results, stats, t0)
    written = []
    text = [
        header("Figure 9 — DBSCAN min_samples against ACC, with and without MFVC features", run),
        "Without MFVC features: DBSCAN on the UMAP embedding of the raw pixels; with them: on the UMAP "
        "embedding of the β-VAE codes (MFVC with DBSCAN for K-Means).\n",
    ]
    for d in (d for d in datasets if d not in skipped):
        series = {name: _cells(results, d, s, seeds) for name, s in sweeps.items()}
        eps = runner.defaults["eps"]
        title = f"Figure 9 — DBSCAN min_samples against ACC on {d} (UMAP embedding, eps {eps:g}; mean over seeds)"
        written.append(
            plot_curves(
                grid,
                {n: [_mean_acc(c) for c in s] for n, s in series.items()},
                a.out / f"figure9-{runner.tag(d)}.png",
                xlabel="min_samples",
                ylabel="ACC",
                title=title,
            )
        )
        text.append(sweep_markdown(title, "min_samples", grid, series))
    text.append(footnotes([], skipped))
    written.append(write_atomic(a.out / "figure9.md", "\n".join(text)))
    return written, results


def do_embeddings(runner: Runner, a, t0: float):
    """Figure 5: MFVC's clusters; Figure 7: the clusters of the ablation pipelines, and the true classes.

    Each panel is a 2-D UMAP of the pipeline's input features (pixels or β-VAE codes), seed 0,
    coloured by the clusters that pipeline found (K-Means in its own space).
    """
    from mfvc_gpu.plotting import plot_embedding

    n = a.figure
    rows = V.FIGURE5 if n == 5 else V.select(V.FIGURE7, a.variants)
    datasets, seeds = _datasets(a, SMALL_DATASETS), [0]
    results, skipped, stats = run_grid(runner, datasets, seeds, rows, f"figure {n}", not a.no_progress)
    written, lines = [], []
    for d in (d for d in datasets if d not in skipped):
        for v in rows:
            rec = results.get((d, v.name, 0))
            if rec is None or rec["status"] != "ok":
                lines.append(f"* {d}, {v.label}: {'not yet measured' if rec is None else rec['status']}")
                continue
            view = runner.view(d, v, 0)
            if view is None:
                lines.append(f"* {d}, {v.label}: the 2-D view is not computed yet (run without --report-only)")
                continue
            title = f"{v.label} on {d} (seed 0): ACC {rec['acc']:.3f}, NMI {rec['nmi']:.3f}"
            path = a.out / f"figure{n}-{runner.tag(d)}{'' if n == 5 else '-' + v.name}.png"
            written.append(plot_embedding(view, runner.labels(d, v, 0), path, title=title))
            lines.append(f"![{v.label}, {d}]({path.name})")
        if n == 7 and runner.compute:
            try:
                truth = runner.dataset(d).labels
            except V.DatasetUnavailable:
                continue
            path = a.out / f"figure7-{runner.tag(d)}-classes.png"
            written.append(
                plot_embedding(runner.view(d, V.MFVC, 0), truth, path, title=f"true classes of {d} (β-VAE codes)")
            )
            lines.append(f"![true classes, {d}]({path.name})")
    lines += [f"* data set {d} skipped: {why}" for d, why in skipped.items()]
    title = {
        5: "Figure 5 — MFVC's embedding coloured by cluster",
        7: "Figure 7 — the ablation pipelines' clusters, each on a 2-D UMAP of its input features",
    }[n]
    run = _run_facts(runner, a, seeds, results, stats, t0)
    written.append(write_atomic(a.out / f"figure{n}.md", header(title, run) + "\n".join(lines) + "\n"))
    return written, results


def main(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if a.seeds is not None and a.seeds < 1:
        raise MFVCError(f"--seeds {a.seeds}: need at least one seed")
    if a.epochs is not None and a.epochs < 1:
        raise MFVCError(f"--epochs {a.epochs}: need at least one epoch")
    from .runner import Runner

    runner = Runner(
        a.out,
        a.profile,
        a.epochs,
        a.device,
        a.backend,
        a.data_dir,
        a.limit,
        compute=not a.report_only,
        retry_failed=a.retry_failed,
    )
    created = missing_ancestors(Path(a.out))
    job = do_table if a.table else {5: do_embeddings, 7: do_embeddings, 8: do_figure8, 9: do_figure9}[a.figure]
    try:
        check_writable_dir(a.out)
        written, results = job(runner, a, t0)  # Ctrl-C: the CLI says the finished runs are cached (exit 130)
    except BaseException:
        remove_empty(created)  # the folders this command made, unless it cached something in them
        raise
    failed = [k for k, r in results.items() if r is not None and r["status"] == "error"]
    if failed:
        log.warning("%d runs failed (see the footnotes; --retry-failed computes them again)", len(failed))
    lines = [str(path) for path in written]
    lines.append(
        f"profile {runner.profile}, {runner.epochs} epochs, device {runner.device}, backend {runner.backend}; "
        f"{fmt_seconds(time.perf_counter() - t0)}"
    )
    return (1 if failed else 0), lines
