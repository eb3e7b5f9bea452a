"""The search behind the defaults: the choices the paper leaves open, tried on MNIST-test and
Fashion-MNIST-test, every point with the same seeds, one tidy CSV.

    python benchmarks/search_defaults.py --grid network --points default,beta=0.1 --seeds 0 1
    python benchmarks/search_defaults.py --grid manifold --seeds 0 1
    python benchmarks/search_defaults.py --report-only          # the CSV and table from the cache
    python benchmarks/search_defaults.py --points default --datasets fashion-mnist-test --confusion

A point is a set of MFVC settings that differ from today's defaults (``POINTS`` below; the
``network`` grid changes the β-VAE or its training, the ``manifold`` grid the UMAP and clustering
stages on the default network). Every run goes through the reproduction cache
(:mod:`mfvc_gpu.reproduce.runner`, ``--out`` shared with ``mfvc-gpu reproduce``): a trained
network, an embedding and a score are computed once, points that share a network share its
training, and an interrupted search resumes where it stopped when the same command runs again.

Writes ``OUT/search/search.csv`` (one row per point, data set and seed: the settings, ACC, NMI,
ARI, purity and seconds) and ``OUT/search/search.md`` (mean ± std over the seeds of each point),
both rewritten whole (atomically) after every result. ``--confusion`` adds, for each point, data
set and seed, the confusion matrix (clusters × classes, Hungarian-ordered) from the cached labels,
printed and written to ``OUT/search/confusion-<point>-<data set>-seed<k>.md``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

# name -> (grid, changes); "default" is the package's defaults as they are now (the fast profile).
# A network point changes the defaults' network or training; a manifold point changes the paper's
# UMAP and clustering settings (GRID_BASE) on the default network. Names hold no commas (--points is
# a comma-separated list); "+" joins two changes.
POINTS: dict[str, tuple[str, dict]] = {
    "default": ("network", {}),
    "beta=0.001": ("network", {"beta": 0.001}),
    "beta=0.1": ("network", {"beta": 0.1}),
    "beta=1": ("network", {"beta": 1.0}),
    "latent=10": ("network", {"latent_dim": 10}),
    "latent=16": ("network", {"latent_dim": 16}),
    "latent=64": ("network", {"latent_dim": 64}),
    "weight_decay=0": ("network", {"weight_decay": 0.0}),
    "decoder=upsample": ("network", {"decoder": "upsample"}),
    "batch=256+lr=0.01": ("network", {"batch_size": 256, "lr": 0.01}),
    "epochs=20": ("network", {"epochs": 20}),
    "epochs=50": ("network", {"epochs": 50}),
    "float32": ("network", {"amp": False}),
    "augment=0.05": ("network", {"augment": 0.05}),
    "augment=0.1": ("network", {"augment": 0.1}),
    "augment=0.2": ("network", {"augment": 0.2}),
    # the same networks, the mixture with 50 restarts: less of the clustering's luck in the comparison
    "augment=0.05+n_init=50": ("network", {"augment": 0.05, "n_init": 50}),
    "augment=0.1+n_init=50": ("network", {"augment": 0.1, "n_init": 50}),
    "paper": ("manifold", {}),
    "nn=10": ("manifold", {"n_neighbors": 10}),
    "nn=15": ("manifold", {"n_neighbors": 15}),
    "nn=20": ("manifold", {"n_neighbors": 20}),
    "nn=50": ("manifold", {"n_neighbors": 50}),
    "cosine": ("manifold", {"metric": "cosine"}),
    "min_dist=0.1": ("manifold", {"min_dist": 0.1}),
    "gmm": ("manifold", {"cluster": "gmm"}),
    "nn=15+gmm": ("manifold", {"n_neighbors": 15, "cluster": "gmm"}),
    "cosine+nn=15": ("manifold", {"metric": "cosine", "n_neighbors": 15}),
    "cosine+nn=50": ("manifold", {"metric": "cosine", "n_neighbors": 50}),
    "cosine+gmm": ("manifold", {"metric": "cosine", "cluster": "gmm"}),
    "cosine+gmm+n_init=2": ("manifold", {"metric": "cosine", "cluster": "gmm", "n_init": 2}),
    "cosine+gmm+n_init=50": ("manifold", {"metric": "cosine", "cluster": "gmm", "n_init": 50}),
    "cosine+gmm+nn=15": ("manifold", {"metric": "cosine", "cluster": "gmm", "n_neighbors": 15}),
    "n_init=50": ("manifold", {"n_init": 50}),
}
GRID_BASE = {"network": {}, "manifold": {"metric": "euclidean", "cluster": "kmeans"}}  # the paper's profile's
# every network point also clustered the paper's way ("beta=0.1+paper"), which is how the first search
# measured it
POINTS |= {
    f"{name}+paper": ("network", changes | GRID_BASE["manifold"])
    for name, (grid, changes) in list(POINTS.items())
    if grid == "network" and name != "default"
}
DATASETS = ("fashion-mnist-test", "mnist-test")
COLUMNS = (
    "grid",
    "point",
    "dataset",
    "seed",
    "status",
    "acc",
    "nmi",
    "ari",
    "purity",
    "train_s",
    "manifold_s",
    "cluster_s",
    "total_s",
    "latent_dim",
    "beta",
    "decoder",
    "weight_decay",
    "batch_size",
    "lr",
    "epochs",
    "amp",
    "augment",
    "n_neighbors",
    "min_dist",
    "metric",
    "cluster",
    "n_init",
    "error",
)

FASHION_CLASSES = (
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

log = logging.getLogger("search_defaults")


def settings_of(grid: str, changes: dict) -> dict:
    """What a point sets: its grid's base, then its changes."""
    return GRID_BASE[grid] | changes


def variant_of(name: str, changes: dict):
    """The reproduction variant of a point (``changes``: :func:`settings_of`): its network, manifold and
    cluster settings; the rest are the package's defaults."""
    from mfvc_gpu.reproduce.runner import CLUSTER_KEYS, MANIFOLD_KEYS
    from mfvc_gpu.reproduce.variants import Variant

    manifold = {"manifold": "umap"} | {k: v for k, v in changes.items() if k in MANIFOLD_KEYS}
    cluster = {k: v for k, v in changes.items() if k in CLUSTER_KEYS}
    network = {k: v for k, v in changes.items() if k not in manifold and k not in cluster and k != "epochs"}
    return Variant(f"search-{name}", name, network=network, manifold=manifold, cluster=cluster)


def row_of(runner, grid: str, name: str, changes: dict, dataset: str, seed: int, rec: dict) -> dict:
    """One tidy CSV row: the point's effective settings (defaults filled in) and its scores."""
    eff = runner.resolved(runner.defaults | changes | {"epochs": runner.epochs})
    row = {k: eff.get(k) for k in COLUMNS if k in eff}
    row.update(grid=grid, point=name, dataset=dataset, seed=seed, status=rec["status"])
    if rec["status"] == "ok":
        sec = rec["seconds"]
        row.update(
            acc=rec["acc"],
            nmi=rec["nmi"],
            ari=rec.get("ari"),
            purity=rec["purity"],
            train_s=sec.get("train"),
            manifold_s=sec.get("manifold"),
            cluster_s=sec.get("cluster"),
            total_s=rec["total_s"],
        )
    else:
        row["error"] = rec.get("error") or rec.get("reason")
    return row


def summary_lines(rows: list[dict]) -> list[str]:
    """Markdown: per point and data set, mean ± std of ACC and NMI over the seeds that finished, seconds."""

    def ms(vals):
        if not vals:
            return "—"
        return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else f"{vals[0]:.4f}"

    out = [
        "| grid | point | data set | seeds | ACC | NMI | ARI | train s | UMAP s | per-seed ACC |",
        "|---|---|---|---:|---|---|---|---:|---:|---|",
    ]
    keys = list(dict.fromkeys((r["grid"], r["point"], r["dataset"]) for r in rows))
    for grid, point, ds in keys:
        ok = [r for r in rows if (r["grid"], r["point"], r["dataset"]) == (grid, point, ds) and r["status"] == "ok"]
        if not ok:
            continue
        acc = [r["acc"] for r in ok]
        out.append(
            f"| {grid} | {point} | {ds} | {len(ok)} | {ms(acc)} | {ms([r['nmi'] for r in ok])} | "
            f"{ms([r['ari'] for r in ok])} | {statistics.mean(r['train_s'] for r in ok):.0f} | "
            f"{statistics.mean(r['manifold_s'] for r in ok):.0f} | {', '.join(f'{a:.4f}' for a in acc)} |"
        )
    return out


def confusion_lines(runner, v, dataset: str, seed: int) -> list[str]:
    """Markdown: the clusters × classes counts of one cached run, matched pairs on the diagonal."""
    from mfvc_gpu.report import confusion

    cm, clusters, classes = confusion(runner.labels(dataset, v, seed), runner.dataset(dataset).labels)
    names = FASHION_CLASSES if dataset.startswith("fashion") else tuple(map(str, range(max(classes) + 1)))
    out = [f"| cluster | {' | '.join(names[k] for k in classes)} | size |", "|---" * (len(classes) + 2) + "|"]
    for i, c in enumerate(clusters):
        cells = [f"**{n}**" if i == j else str(n) for j, n in enumerate(cm[i])]
        out.append(f"| {c} | {' | '.join(cells)} | {int(cm[i].sum())} |")
    return out


def write_outputs(out: Path, rows: list[dict], command: str) -> None:
    from mfvc_gpu.bench.report import write_atomic, write_csv

    folder = out / "search"
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(rows, folder / "search.csv", COLUMNS)
    text = [f"# Search of the defaults\n\n`{command}`\n", *summary_lines(rows), ""]
    write_atomic(folder / "search.md", "\n".join(text))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--grid", choices=["network", "manifold", "all"], default="all", help="which points (default all)")
    p.add_argument("--points", help=f"comma-separated subset of: {', '.join(POINTS)}")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), help=f"default {' '.join(DATASETS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="default 0 1")
    p.add_argument("--out", type=Path, default=Path("reproduce-results"), help="the reproduction folder (its cache/)")
    p.add_argument("--data-dir", help="folder searched first for the data sets")
    p.add_argument("--limit", type=int, help="a fixed random subset of N images of every data set (smoke runs)")
    p.add_argument("--report-only", action="store_true", help="compute nothing: write the CSV and table from the cache")
    p.add_argument("--confusion", action="store_true", help="also print and write each run's confusion matrix")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from mfvc_gpu.bench.report import write_atomic
    from mfvc_gpu.errors import MFVCError
    from mfvc_gpu.reproduce.runner import Runner
    from mfvc_gpu.reproduce.variants import DatasetUnavailable

    names = (
        [n.strip() for n in a.points.split(",")]
        if a.points
        else [n for n, (g, _) in POINTS.items() if a.grid in ("all", g)]
    )
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        print(f"search_defaults: unknown point(s) {', '.join(unknown)}; known: {', '.join(POINTS)}", file=sys.stderr)
        return 2
    command = "python benchmarks/search_defaults.py " + " ".join(argv if argv is not None else sys.argv[1:])
    runners: dict[int | None, Runner] = {}
    rows: list[dict] = []
    missing = 0
    try:
        for name in names:
            grid, changes = POINTS[name]
            changes = settings_of(grid, changes)
            epochs = changes.get("epochs")
            if epochs not in runners:
                runners[epochs] = Runner(
                    a.out, "fast", epochs, "auto", "auto", a.data_dir, a.limit, compute=not a.report_only
                )
            runner, v = runners[epochs], variant_of(name, changes)
            for ds in a.datasets:
                for seed in a.seeds:
                    t0 = time.perf_counter()
                    try:
                        rec = runner.result(ds, v, seed)
                    except DatasetUnavailable as exc:
                        log.warning("%s: skipped — %s", ds, exc)
                        break
                    if rec is None:  # --report-only and not computed yet: no row
                        missing += 1
                        continue
                    rows.append(row_of(runner, grid, name, changes, ds, seed, rec))
                    r = rows[-1]
                    log.info(
                        "%-18s %-18s seed %d: %s ACC %s NMI %s (%s, %.0f s)",
                        name,
                        ds,
                        seed,
                        r["status"],
                        f"{r['acc']:.4f}" if r.get("acc") is not None else "—",
                        f"{r['nmi']:.4f}" if r.get("nmi") is not None else "—",
                        "cached" if rec.get("cached") else "computed",
                        time.perf_counter() - t0,
                    )
                    write_outputs(a.out, rows, command)
                    if a.confusion and rec["status"] == "ok":  # the data set loaded above, or raises DatasetUnavailable
                        lines = [
                            f"# {name}, {ds}, seed {seed}: ACC {r['acc']:.4f}\n",
                            *confusion_lines(runner, v, ds, seed),
                            "",
                        ]
                        write_atomic(a.out / "search" / f"confusion-{name}-{ds}-seed{seed}.md", "\n".join(lines))
                        print("\n".join(lines))
    except KeyboardInterrupt:
        print("search_defaults: interrupted; finished runs are cached: the same command resumes", file=sys.stderr)
        return 130
    except (MFVCError, DatasetUnavailable) as exc:
        print(f"search_defaults: {exc}", file=sys.stderr)
        return 1
    write_outputs(a.out, rows, command)
    print("\n".join(summary_lines(rows)))
    if missing:
        print(f"{missing} run(s) of these points are not in the cache yet (run without --report-only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
