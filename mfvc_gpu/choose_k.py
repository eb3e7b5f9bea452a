"""Choosing the number of clusters when nobody knows it: ``n_clusters="auto"``.

The encoder and UMAP are fitted once; then every K of a range is scored in the UMAP space, on a
fixed random sample of it (at most ``sample`` points, the same for every K), by several criteria:

* ``silhouette`` (K-Means labels; higher is better): cohesion against separation. UMAP with
  ``min_dist=0`` packs each group into a tight clump, which is what it rewards;
* ``bic`` (a Gaussian mixture with full covariances; lower is better): the mixture's likelihood
  against its number of parameters;
* ``icl`` (the same mixture; lower is better): BIC plus twice the entropy of the mixture's
  assignments, which also penalises components that overlap (Biernacki, Celeux & Govaert 2000);
* ``stability`` (higher is better): K-Means fitted on two random halves of the sample, both
  applied to the whole sample, the adjusted Rand index of the two labelings, averaged over
  ``STABILITY_PAIRS`` pairs (Ben-Hur, Elisseeff & Guyon 2002; Lange et al. 2004);
* ``bic_knee`` (higher is better): where the BIC curve bends. With UMAP's tight, curved clumps the
  BIC itself keeps falling as K grows (more Gaussians always fit them better), but it falls
  steeply up to the number of clumps and slowly after; with K and the BIC scaled to [0, 1] over the
  range, this is how far below the straight line between the range's two ends the curve lies
  (the "Kneedle" knee, Satopää et al. 2011);
* ``calinski_harabasz`` (higher) and ``davies_bouldin`` (lower), kept for comparison.

One of them, :data:`CRITERION` (the BIC's knee), chooses; it was chosen by measurement (docs/RESULTS.md, "Choosing
K"), and every criterion's favourite K is kept beside the choice, so a report can say where they
disagree. Everything is seeded by ``seed``: a seed gives the same scores and the same K.

Cost, for every K: K-Means (``n_init`` restarts), a silhouette, a mixture (``n_init`` restarts)
and ``2 × STABILITY_PAIRS`` single-start K-Means, all on the sample; then the pipeline's own
clustering at the chosen K on every point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RANGE = (2, 30)
CRITERION = "bic_knee"
STABILITY_PAIRS = 4
# criterion -> +1 where higher is better, -1 where lower is
CRITERIA = {
    "silhouette": +1,
    "bic": -1,
    "icl": -1,
    "bic_knee": +1,
    "stability": +1,
    "calinski_harabasz": +1,
    "davies_bouldin": -1,
}


@dataclass
class KSearch:
    """Every K's scores and the choice. ``scores``: one dict per K (k, inertia and one value per criterion
    of :data:`CRITERIA`); ``chosen`` / ``runner_up``: the best and second-best K by ``criterion``;
    ``favourites``: each criterion's best K."""

    scores: list[dict] = field(default_factory=list)
    chosen: int = 0
    runner_up: int | None = None
    seconds: float = 0.0
    sample: int = 0
    criterion: str = CRITERION
    favourites: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(
            criterion=self.criterion,
            chosen=self.chosen,
            runner_up=self.runner_up,
            seconds=round(self.seconds, 3),
            sample=self.sample,
            scores=self.scores,
            favourites=self.favourites,
        )


def ranked(scores: list[dict], criterion: str) -> list[int]:
    """The K of ``scores`` from best to worst by ``criterion`` (ties: the smaller K first)."""
    sign = CRITERIA[criterion]
    return [s["k"] for s in sorted(scores, key=lambda s: (-sign * s[criterion], s["k"]))]


def knee_depth(ks: list[int], values: list[float]) -> list[float]:
    """For a curve falling with K: how far below the chord between its two ends each point lies, with K and
    the values scaled to [0, 1] (0 at the ends; all 0 for a flat curve or a single K)."""
    k, y = np.asarray(ks, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(k) < 2 or np.ptp(y) == 0:
        return [0.0] * len(k)
    kn, yn = (k - k.min()) / np.ptp(k), (y - y.min()) / np.ptp(y)
    chord = yn[0] + (yn[-1] - yn[0]) * kn
    return [float(v) for v in chord - yn]


def _mixture_scores(xs: np.ndarray, k: int, n_init: int, seed: int) -> tuple[float, float]:
    """BIC and ICL of a full-covariance Gaussian mixture with ``k`` components on ``xs``."""
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=k, covariance_type="full", n_init=n_init, random_state=seed).fit(xs)
    bic = float(gmm.bic(xs))
    tau = gmm.predict_proba(xs)
    entropy = float(-(tau * np.log(np.clip(tau, 1e-300, None))).sum())
    return bic, bic + 2.0 * entropy


def _stability(xs: np.ndarray, k: int, rng: np.random.Generator, seed: int) -> float:
    """Mean adjusted Rand index between K-Means fitted on two random halves, both labelling all of ``xs``."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    values = []
    for p in range(STABILITY_PAIRS):
        order = rng.permutation(len(xs))
        halves = order[: len(xs) // 2], order[len(xs) // 2 :]
        a, b = (KMeans(n_clusters=k, n_init=1, random_state=seed + 2 * p + i).fit(xs[h]) for i, h in enumerate(halves))
        values.append(adjusted_rand_score(a.predict(xs), b.predict(xs)))
    return float(np.mean(values))


def search_k(
    embedding: np.ndarray,
    k_range: tuple[int, int] = DEFAULT_RANGE,
    *,
    n_init: int = 3,
    seed: int = 0,
    sample: int = 5000,
    criterion: str = CRITERION,
) -> KSearch:
    """Score K = k_range[0] … k_range[1] (inclusive) on ``embedding`` (N, d) and pick the best by ``criterion``."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not one of {', '.join(CRITERIA)}")
    t0 = time.perf_counter()
    embedding = np.asarray(embedding)  # no copy for an array
    n = len(embedding)
    lo, hi = int(k_range[0]), min(int(k_range[1]), n - 1)
    idx = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    out = KSearch(sample=len(idx), criterion=criterion)
    xs = np.asarray(embedding[idx], dtype=np.float64)  # only the sample is converted
    for k in range(lo, hi + 1):
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(xs)
        labels = km.labels_
        if len(np.unique(labels)) < 2:
            continue  # one cluster only: no silhouette
        bic, icl = _mixture_scores(xs, k, n_init, seed)
        out.scores.append(
            dict(
                k=k,
                silhouette=float(silhouette_score(xs, labels)),
                bic=bic,
                icl=icl,
                stability=_stability(xs, k, np.random.default_rng([seed, k]), seed),
                calinski_harabasz=float(calinski_harabasz_score(xs, labels)),
                davies_bouldin=float(davies_bouldin_score(xs, labels)),
                inertia=float(km.inertia_),
            )
        )
    if not out.scores:
        raise ValueError(f"no K in {lo}..{hi} could be scored on {n} points")
    for row, knee in zip(out.scores, knee_depth([r["k"] for r in out.scores], [r["bic"] for r in out.scores])):
        row["bic_knee"] = knee
    order = ranked(out.scores, criterion)
    out.chosen = order[0]
    out.runner_up = order[1] if len(order) > 1 else None
    out.favourites = {c: ranked(out.scores, c)[0] for c in CRITERIA}
    out.seconds = time.perf_counter() - t0
    return out


def plot_k_search(search: KSearch | dict, path=None, title: str = ""):
    """Every criterion against K (one panel each), the chosen K marked; written to ``path`` (PNG), or returned
    as a figure when ``path`` is None."""
    from .plotting import pyplot, save_figure

    s = search if isinstance(search, dict) else search.to_dict()
    plt = pyplot()
    names = [c for c in CRITERIA if all(c in r for r in s["scores"])]
    cols = 3
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 2.6 * rows), squeeze=False)
    ks = [r["k"] for r in s["scores"]]
    for ax, name in zip(axes.flat, names):
        ax.plot(ks, [r[name] for r in s["scores"]], marker="o", ms=3)
        ax.axvline(s["chosen"], color="tab:red", ls="--", lw=1)
        best = (s.get("favourites") or {}).get(name)
        chose = " (chooses)" if name == s["criterion"] else ""
        ax.set_title(
            f"{name}{chose}: best K = {best} ({'higher' if CRITERIA[name] > 0 else 'lower'} is better)", fontsize=8
        )
        ax.set_xlabel("K", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title or f"Choosing K: K = {s['chosen']} by the {s['criterion']} ({s['sample']} points)", fontsize=10)
    fig.tight_layout()
    if path is None:
        return fig
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


__all__ = ["KSearch", "search_k", "plot_k_search", "ranked", "knee_depth", "DEFAULT_RANGE", "CRITERIA", "CRITERION"]
