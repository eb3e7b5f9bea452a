"""The runnable rows of the paper's Tables 2–4 and the grids of Figures 5–9, as MFVC settings.

A :class:`Variant` is one clustering pipeline: where its features come from (``pixels``, the
β-VAE ``vae`` with a network variant, or the ``n2d`` MLP autoencoder), the manifold stage and
the clustering stage, each with the MFVC parameters that differ from the defaults. Two variants
with the same network share one trained encoder; two with the same manifold settings share one
embedding (:mod:`mfvc_gpu.reproduce.runner` caches both).

The paper's numbers beside the tables are those of ``DESIGN.md`` (the paper's Table 2, ACC /
NMI); cells it does not give stay "—" rather than being filled in from memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


class DatasetUnavailable(Exception):
    """The data set cannot be used (not found, or no labels); the message says why."""


@dataclass(frozen=True)
class Variant:
    """One row of a table or one point of a sweep.

    name : cache and ``--variants`` name. label : the row label in the tables.
    features : "pixels", "vae" or "n2d". network : MFVC network parameters that differ from the
    defaults ("attention", "residual"). manifold / cluster : MFVC parameters of those stages
    (method and settings; a clusterer left out is the profile's). max_samples / too_large : larger
    data sets are skipped with that reason.
    """

    name: str
    label: str
    features: str = "vae"
    network: dict = field(default_factory=dict)
    manifold: dict = field(default_factory=lambda: {"manifold": "umap"})
    cluster: dict = field(default_factory=dict)
    max_samples: int | None = None
    too_large: str = ""


ISOMAP_MAX = 20_000
_PIX = dict(features="pixels")
_NO_MANIFOLD = {"manifold": "none"}
_KMEANS = {"cluster": "kmeans"}
_EUCLIDEAN_UMAP = {
    "manifold": "umap",
    "metric": "euclidean",
}  # the baselines keep the distances they were measured with
_GMM_BASELINE = {"cluster": "gmm", "n_init": 2}  # the baselines' mixtures: 2 restarts, as measured in Table 3

MFVC = Variant("mfvc", "MFVC")
KMEANS_PIXELS = Variant("kmeans-pixels", "K-Means (pixels)", **_PIX, manifold=_NO_MANIFOLD, cluster=_KMEANS)
UMAP_KMEANS_PIXELS = Variant(
    "umap-kmeans-pixels", "UMAP + K-Means (pixels)", **_PIX, manifold=_EUCLIDEAN_UMAP, cluster=_KMEANS
)
VAE_KMEANS = Variant("vae-kmeans", "β-VAE + K-Means", manifold=_NO_MANIFOLD, cluster=_KMEANS)

TABLE3 = [
    KMEANS_PIXELS,
    Variant("gmm-pixels", "GMM (pixels)", **_PIX, manifold=_NO_MANIFOLD, cluster=_GMM_BASELINE),
    Variant("umap-gmm-pixels", "UMAP + GMM (pixels)", **_PIX, manifold=_EUCLIDEAN_UMAP, cluster=_GMM_BASELINE),
    Variant(
        "n2d",
        "N2D-style (MLP autoencoder + UMAP + GMM)",
        features="n2d",
        manifold=_EUCLIDEAN_UMAP,
        cluster=_GMM_BASELINE,
    ),
    MFVC,
]

TABLE4 = [
    replace(KMEANS_PIXELS, label="K-Means"),
    Variant(
        "mfvc-isomap",
        "MFVC (Isomap)",
        manifold={"manifold": "isomap"},
        max_samples=ISOMAP_MAX,
        too_large=f"Isomap's all-pairs geodesic distances grow as N² (memory and hours); run it on sets up to "
        f"{ISOMAP_MAX} images",
    ),
    Variant("mfvc-dbscan", "MFVC (DBSCAN)", cluster={"cluster": "dbscan"}),
    Variant("mfvc-no-simam", "MFVC without SimAM", network={"attention": "none"}),
    VAE_KMEANS,
    replace(UMAP_KMEANS_PIXELS, label="UMAP + K-Means"),
    Variant("mfvc-no-residual", "MFVC without the residual path", network={"residual": False}),
    Variant("mfvc-cbam", "MFVC with CBAM", network={"attention": "cbam"}),
    MFVC,
]

TABLE2 = [MFVC]
FIGURE5 = [MFVC]
FIGURE7 = [KMEANS_PIXELS, UMAP_KMEANS_PIXELS, VAE_KMEANS, MFVC]

TABLES = {2: TABLE2, 3: TABLE3, 4: TABLE4}

N_NEIGHBORS_GRID = (5, 10, 15, 20, 27, 30, 35, 40, 45, 50)
MIN_DIST_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MIN_SAMPLES_GRID = (5, 10, 15, 20, 25, 30, 40, 50)
DEFAULT_N_NEIGHBORS, DEFAULT_MIN_DIST = 27, 0.0


def n_neighbors_sweep(grid=N_NEIGHBORS_GRID) -> list[Variant]:
    """Figure 8, left: MFVC at every n_neighbors, min_dist fixed at the paper's 0.0."""
    return [
        Variant(
            f"umap-nn{v}",
            f"n_neighbors={v}",
            manifold={"manifold": "umap", "n_neighbors": int(v), "min_dist": DEFAULT_MIN_DIST},
        )
        for v in grid
    ]


def min_dist_sweep(grid=MIN_DIST_GRID) -> list[Variant]:
    """Figure 8, right: MFVC at every min_dist, n_neighbors fixed at the paper's 27."""
    return [
        Variant(
            f"umap-md{v:g}",
            f"min_dist={v:g}",
            manifold={"manifold": "umap", "n_neighbors": DEFAULT_N_NEIGHBORS, "min_dist": float(v)},
        )
        for v in grid
    ]


def min_samples_sweep(grid=MIN_SAMPLES_GRID) -> dict[str, list[Variant]]:
    """Figure 9: DBSCAN at every min_samples on the UMAP embedding of the β-VAE codes (MFVC
    features) and of the raw pixels (without them); eps stays at MFVC's default."""

    def row(v, feats):
        return Variant(
            f"dbscan-ms{v}-{feats}",
            f"min_samples={v}",
            features="vae" if feats == "mfvc" else "pixels",
            cluster={"cluster": "dbscan", "min_samples": int(v)},
        )

    return {
        "with MFVC features": [row(v, "mfvc") for v in grid],
        "pixels (no MFVC features)": [row(v, "pixels") for v in grid],
    }


# The paper's Table 2 (ACC, NMI), as quoted in DESIGN.md. Nothing else of the paper's tables is
# quoted there, so every other cell is "—".
PAPER_TABLE2 = {
    "mnist": (0.981, 0.951),
    "mnist-test": (0.969, 0.926),
    "fashion-mnist": (0.681, 0.655),
    "usps": (0.961, 0.903),
    "emnist-digits": (0.873, 0.907),
    "emnist-balanced": (0.713, 0.793),
}


def paper_numbers(variant: Variant, dataset: str) -> tuple[float, float] | None:
    """The paper's (ACC, NMI) for a row, where DESIGN.md gives them: MFVC's Table 2 values."""
    if variant.name == "mfvc":
        return PAPER_TABLE2.get(dataset)
    return None


def select(variants: list[Variant], names: str | None) -> list[Variant]:
    """The rows named in ``names`` ("a,b,c"), in table order; all rows when ``names`` is None."""
    if not names:
        return list(variants)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {v.name for v in variants}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        from mfvc_gpu.errors import MFVCError

        raise MFVCError(f"--variants: {', '.join(unknown)} not among this table's rows ({', '.join(sorted(known))})")
    return [v for v in variants if v.name in wanted]
