"""Which K would ``n_clusters='auto'`` choose on finished runs? The K search on their embeddings.

    python benchmarks/choose_k.py RUN_DIR [RUN_DIR ...]

For each run folder (``mfvc-gpu cluster`` with 10 clusters, whose UMAP space is 10-D, the same
space ``n_clusters='auto'`` searches in when ``n_components`` is unset) it runs the K search of
:mod:`mfvc_gpu.choose_k` on the saved embedding and prints the chosen K, the runner-up, every
criterion's favourite, the search's seconds next to the run's UMAP seconds, and the scores of
the run at the true number of classes. A Markdown table (docs/RESULTS.md, "Choosing K").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from mfvc_gpu.choose_k import search_k

    runs = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not runs:
        print(__doc__)
        return 2
    print(
        "| run | true K | chosen K | runner-up | silhouette at chosen / at true K | best K by Calinski-Harabasz | "
        "by Davies-Bouldin | search s | UMAP s | ACC at true K |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        with np.load(run / "model" / "arrays.npz", allow_pickle=False) as f:
            emb = f["embedding"]
        seed = json.loads((run / "model" / "model.json").read_text())["seed"]
        s = search_k(emb, seed=seed)
        by = {r["k"]: r for r in s.scores}
        ch = max(s.scores, key=lambda r: r["calinski_harabasz"])["k"]
        db = min(s.scores, key=lambda r: r["davies_bouldin"])["k"]
        k = m["n_clusters"]
        print(
            f"| {run.name} | {k} | {s.chosen} | {s.runner_up} | {by[s.chosen]['silhouette']:.3f} / "
            f"{by[k]['silhouette']:.3f} | "
            f"{ch} | {db} | {s.seconds:.1f} | {m['timings']['manifold']:.1f} | {m.get('acc', float('nan')):.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
