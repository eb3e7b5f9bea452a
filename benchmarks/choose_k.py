"""Which K would each criterion of ``n_clusters='auto'`` choose? The K search on finished embeddings.

    python benchmarks/choose_k.py --runs RUN_DIR [RUN_DIR ...]
    python benchmarks/choose_k.py --search runs/search --point default --datasets mnist-test fashion-mnist-test \\
        --seeds 0 1 2 --out runs/choose-k

``--runs``: folders of ``mfvc-gpu cluster`` with 10 clusters (their UMAP space is 10-D, the space
``n_clusters='auto'`` searches when ``n_components`` is unset); ``--search``: the embeddings a
``benchmarks/search_defaults.py`` point left in its cache (same space). On each embedding it runs
the K search of :mod:`mfvc_gpu.choose_k` with the run's seed and prints every criterion's K
against the true number of classes, then, per criterion, how many embeddings it puts within ±1
(and ±2) of the truth. Writes ``OUT/choose_k.md`` and one ``OUT/<name>.png`` (every criterion
per K) and ``OUT/<name>.json`` (every K's scores: rules can be compared on them without
searching again) per embedding.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # search_defaults, beside this file


def run_embeddings(runs: list[Path]):
    """(name, embedding, seed, true K) of each ``mfvc-gpu cluster`` folder."""
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        with np.load(run / "model" / "arrays.npz", allow_pickle=False) as f:
            emb = f["embedding"]
        seed = json.loads((run / "model" / "model.json").read_text())["seed"]
        yield run.name, emb, seed, int(m["n_clusters"])


def search_embeddings(out: Path, point: str, datasets: list[str], seeds: list[int], data_dir: str | None):
    """(name, embedding, seed, true K) of each cached run of a search point."""
    from search_defaults import POINTS, settings_of, variant_of

    from mfvc_gpu.reproduce.runner import Runner, load_npy

    grid, changes = POINTS[point]
    changes = settings_of(grid, changes)
    runner = Runner(out, "fast", changes.get("epochs"), "auto", "auto", data_dir, None, compute=False)
    v = variant_of(point, changes)
    for ds in datasets:
        for seed in seeds:
            path = runner.seed_dir(ds, seed) / "embeddings" / f"{runner.embedding_key(v)}.npy"
            if not path.exists():
                print(f"choose_k: {ds} seed {seed} of point {point} is not in the cache ({path.name}); skipped")
                continue
            yield f"{ds}-{point}-seed{seed}", load_npy(path, 2), seed, runner.dataset(ds).n_classes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", nargs="+", type=Path, default=[], help="mfvc-gpu cluster run folders")
    p.add_argument("--search", type=Path, help="a search_defaults --out folder (its cache/)")
    p.add_argument("--point", default="default", help="the search point whose embeddings are used")
    p.add_argument("--datasets", nargs="+", default=["mnist-test", "fashion-mnist-test"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data-dir", help="folder searched first for the data sets (their number of classes)")
    p.add_argument("--out", type=Path, default=Path("runs/choose-k"))
    a = p.parse_args(argv)
    if not a.runs and not a.search:
        p.error("give --runs and/or --search")

    from mfvc_gpu.bench.report import write_atomic
    from mfvc_gpu.choose_k import CRITERIA, plot_k_search, search_k
    from mfvc_gpu.fileio import write_json

    a.out.mkdir(parents=True, exist_ok=True)
    inputs = list(run_embeddings(a.runs))
    if a.search:
        inputs += list(search_embeddings(a.search, a.point, a.datasets, a.seeds, a.data_dir))
    command = "python benchmarks/choose_k.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Choosing K: every criterion on the same embeddings\n\n`{command}`\n",
        f"| embedding | true K | {' | '.join(CRITERIA)} | search s |",
        "|---|---:|" + "---:|" * len(CRITERIA) + "---:|",
    ]
    picks: dict[str, list[tuple[int, int]]] = {c: [] for c in CRITERIA}
    for name, emb, seed, true_k in inputs:
        s = search_k(emb, seed=seed)
        plot_k_search(s, a.out / f"{name}.png", f"{name}: true K = {true_k}")
        write_json(a.out / f"{name}.json", dict(s.to_dict(), true_k=true_k))
        for c in CRITERIA:
            picks[c].append((s.favourites[c], true_k))
        cells = " | ".join(
            f"**{s.favourites[c]}**" if s.favourites[c] == true_k else str(s.favourites[c]) for c in CRITERIA
        )
        lines.append(f"| {name} | {true_k} | {cells} | {s.seconds:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", "| criterion | within ±1 of the truth | within ±2 | exact |", "|---|---:|---:|---:|"]
    for c, pairs in picks.items():
        near = [abs(k - t) for k, t in pairs]
        lines.append(
            f"| {c} | {sum(d <= 1 for d in near)}/{len(near)} | {sum(d <= 2 for d in near)}/{len(near)} | "
            f"{sum(d == 0 for d in near)}/{len(near)} |"
        )
    text = "\n".join(lines) + "\n"
    write_atomic(a.out / "choose_k.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
