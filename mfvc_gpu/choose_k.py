"""Choosing the number of clusters when nobody knows it: ``n_clusters="auto"``.

The encoder and UMAP are fitted once; then K-Means runs for every K of a range in the UMAP space
and each K gets a score; the best K is kept. The criterion is the mean silhouette on a fixed
random sample of the embedding (at most ``sample`` points, the same sample for every K, on
which the K-Means of the search also runs): UMAP
with ``min_dist=0`` packs each group into a tight clump, which is exactly what the silhouette
(cohesion against separation) rewards, and it needs no assumption about the clumps' shapes
beyond that. The alternatives were measured the same way (docs/RESULTS.md, "Choosing K") and
are recorded beside it for every K: the Calinski-Harabasz index and the Davies-Bouldin index.

Cost: for every K, one K-Means (``n_init`` restarts) and one silhouette, both on the sample;
then the pipeline's own K-Means at the chosen K on every point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RANGE = (2, 30)


@dataclass
class KSearch:
    """Every K's scores and the choice. ``scores``: one dict per K (k, silhouette, calinski_harabasz,
    davies_bouldin, inertia); ``chosen`` / ``runner_up``: the best and second-best K by silhouette."""

    scores: list[dict] = field(default_factory=list)
    chosen: int = 0
    runner_up: int | None = None
    seconds: float = 0.0
    sample: int = 0
    criterion: str = "silhouette"

    def to_dict(self) -> dict:
        return dict(
            criterion=self.criterion,
            chosen=self.chosen,
            runner_up=self.runner_up,
            seconds=round(self.seconds, 3),
            sample=self.sample,
            scores=self.scores,
        )


def search_k(
    embedding: np.ndarray,
    k_range: tuple[int, int] = DEFAULT_RANGE,
    *,
    n_init: int = 3,
    seed: int = 0,
    sample: int = 5000,
) -> KSearch:
    """Score K = k_range[0] … k_range[1] (inclusive) on ``embedding`` (N, d) and pick the best."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    t0 = time.perf_counter()
    x = np.ascontiguousarray(embedding, dtype=np.float32)
    lo, hi = int(k_range[0]), min(int(k_range[1]), len(x) - 1)
    idx = np.sort(np.random.default_rng(seed).choice(len(x), min(sample, len(x)), replace=False))
    out = KSearch(sample=len(idx))
    xs = x[idx]
    for k in range(lo, hi + 1):
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(xs)
        labels = km.labels_
        if len(np.unique(labels)) < 2:
            continue  # one cluster only: no silhouette
        out.scores.append(
            dict(
                k=k,
                silhouette=float(silhouette_score(xs, labels)),
                calinski_harabasz=float(calinski_harabasz_score(xs, labels)),
                davies_bouldin=float(davies_bouldin_score(xs, labels)),
                inertia=float(km.inertia_),
            )
        )
    if not out.scores:
        raise ValueError(f"no K in {lo}..{hi} could be scored on {len(x)} points")
    ranked = sorted(out.scores, key=lambda s: -s["silhouette"])
    out.chosen = ranked[0]["k"]
    out.runner_up = ranked[1]["k"] if len(ranked) > 1 else None
    out.seconds = time.perf_counter() - t0
    return out


def plot_k_search(search: KSearch, path, title: str = ""):
    """The silhouette against K, the chosen K marked."""
    from .plotting import pyplot, save_figure

    plt = pyplot()
    ks = [s["k"] for s in search.scores]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(ks, [s["silhouette"] for s in search.scores], marker="o")
    ax.axvline(search.chosen, color="tab:red", ls="--", label=f"chosen K = {search.chosen}")
    ax.set_xlabel("K (number of clusters)")
    ax.set_ylabel(f"silhouette ({search.sample} points)")
    ax.set_title(title or "Choosing K in the UMAP space", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


__all__ = ["KSearch", "search_k", "plot_k_search", "DEFAULT_RANGE"]
