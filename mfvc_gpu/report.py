"""The run report: ``report.html``, one self-contained page to look at, and ``clusters.png``.

Everything is inline (CSS, and every figure as a PNG data URI); a Content-Security-Policy that
allows nothing but inline styles and data images means the page cannot fetch anything, whoever
opens it, online or not. Large data stays light: the scatter shows at most ``MAX_POINTS`` points
and each gallery ``GALLERY`` images.

Sections: the metrics; the training curve; the embedding coloured by cluster (and by label when
labels exist); the number of clusters chosen (with ``n_clusters='auto'``); every cluster's size
with a gallery (the images nearest its centre, then a few at random); with labels, the
confusion matrix (clusters × classes, Hungarian-ordered) and the worst-mixed clusters; the
settings as they ran.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

MAX_POINTS = 20_000
GALLERY = 12  # images per cluster: the 8 nearest the centre, then 4 at random
NEAREST = 8

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} .cluster{margin:1em 0} .cluster img{image-rendering:pixelated}
.small{color:#666;font-size:.85em} img.fig{max-width:100%}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(uri: str, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{uri}">'


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{html.escape(str(c))}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def gallery_indices(embedding: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[int, np.ndarray]:
    """For every cluster, the indices of its gallery: the NEAREST points to its centre, then random ones."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        centre = embedding[members].mean(axis=0)
        order = members[np.argsort(((embedding[members] - centre) ** 2).sum(axis=1))]
        near = order[:NEAREST]
        rest = np.setdiff1d(members, near)
        extra = rng.choice(rest, min(GALLERY - len(near), len(rest)), replace=False) if len(rest) else rest
        out[int(c)] = np.concatenate([near, np.sort(extra)]).astype(np.int64)
    return out


def _montage(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """One row of (1, S, S) uint8 images side by side, with a 2-pixel white gap."""
    s = images.shape[-1]
    row = np.full((s, len(idx) * (s + 2)), 255, dtype=np.uint8)
    for j, i in enumerate(idx):
        row[:, j * (s + 2) : j * (s + 2) + s] = images[i, 0]
    return row


def _gallery_png(images: np.ndarray, idx: np.ndarray, scale: int = 2) -> str:
    from PIL import Image

    row = _montage(images, idx)
    buf = io.BytesIO()
    Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), Image.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _scatter(xy: np.ndarray, colour: np.ndarray, title: str) -> str:
    from .plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    noise = colour < 0
    ax.scatter(xy[noise, 0], xy[noise, 1], s=2, c="lightgrey")
    ax.scatter(xy[~noise, 0], xy[~noise, 1], s=2, c=colour[~noise], cmap="tab20" if colour.max() >= 10 else "tab10")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def _curve(history: list[dict]) -> str:
    from .plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker=".", label="loss")
    ax.plot([h["epoch"] for h in history], [h["recon"] for h in history], marker=".", label="reconstruction")
    ax.set_xlabel("epoch")
    ax.set_ylabel("per image")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def _k_curve(search: dict) -> str:
    from .choose_k import plot_k_search
    from .plotting import pyplot

    fig = plot_k_search(search)
    try:
        return _png(fig)
    finally:
        pyplot().close(fig)


def _k_text(search: dict) -> str:
    """One paragraph: the K chosen, the runner-up, and the criteria that would have chosen otherwise."""
    text = (
        f"K = {search['chosen']} (runner-up {search['runner_up']}), by the {search['criterion']} "
        f"on {search['sample']} points, in {search['seconds']:.1f} s."
    )
    others = {c: k for c, k in (search.get("favourites") or {}).items() if k != search["chosen"]}
    if others:
        text += " The criteria disagree: " + ", ".join(f"the {c} prefers K = {k}" for c, k in others.items()) + "."
    elif search.get("favourites"):
        text += " Every criterion prefers this K."
    return text


def confusion(labels: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Counts (clusters × classes) with rows and columns Hungarian-ordered: matched pairs on the diagonal."""
    from scipy.optimize import linear_sum_assignment

    clusters, classes = np.unique(labels), np.unique(truth)
    c = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(c, (np.searchsorted(clusters, labels), np.searchsorted(classes, truth)), 1)
    rows, cols = linear_sum_assignment(c, maximize=True)
    row_order = list(rows) + [r for r in range(len(clusters)) if r not in set(rows)]
    col_order = list(cols) + [k for k in range(len(classes)) if k not in set(cols)]
    return c[np.ix_(row_order, col_order)], [int(clusters[r]) for r in row_order], [int(classes[k]) for k in col_order]


def write_report(
    path: Path,
    *,
    title: str,
    images: np.ndarray,
    embedding: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray | None,
    metrics: dict,
    settings: dict,
    history: list[dict],
    k_search: dict | None = None,
    class_names: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``report.html`` (atomically) for one run; ``images`` are the run's (N, 1, S, S) uint8 images."""
    from .fileio import shown as as_text
    from .fileio import write_text
    from .plotting import to_2d

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(len(labels), min(MAX_POINTS, len(labels)), replace=False))
    xy, how = to_2d(np.asarray(embedding, dtype=np.float32)[shown])
    parts = [f"<h1>{html.escape(title)}</h1>"]
    keys = [k for k in ("acc", "nmi", "purity", "ari") if k in metrics]
    rows = [[k.upper(), f"{metrics[k]:.4f}"] for k in keys]
    fs = metrics.get("fit_sample")
    if fs:  # fitted on a sample, the rest labelled through the learned map
        rows += [[f"{k.upper()} of the {fs['n_samples']} fitted images", f"{fs[k]:.4f}"] for k in keys if k in fs]
        rows.append(
            ["images fitted / labelled after the fit", f"{fs['n_samples']} / {metrics['n_samples'] - fs['n_samples']}"]
        )
    rows += [[k, metrics[k]] for k in ("n_samples", "n_clusters", "profile", "device", "backend") if k in metrics]
    rows += [[f"seconds: {k}", f"{v:.1f}"] for k, v in metrics.get("timings", {}).items()]
    parts += ["<h2>Metrics</h2>", _table(["", "value"], rows)]
    if history:
        parts += ["<h2>Training</h2>", _img(_curve(history), "training loss per epoch")]
    parts += [
        "<h2>Embedding</h2>",
        f'<p class="small">{html.escape(how)}; {len(shown)} of {len(labels)} points shown</p>',
        _img(_scatter(xy, labels[shown], "coloured by cluster"), "embedding coloured by cluster"),
    ]
    if truth is not None:
        parts.append(_img(_scatter(xy, np.asarray(truth)[shown], "coloured by label"), "embedding coloured by label"))
    if k_search:
        parts += [
            "<h2>Number of clusters</h2>",
            f"<p>{html.escape(_k_text(k_search))}</p>",
            _img(_k_curve(k_search), "every criterion per K"),
        ]
    galleries = gallery_indices(np.asarray(embedding, dtype=np.float32), labels, seed)
    parts.append("<h2>Clusters</h2>")

    def names(k: int) -> str:
        return class_names[k] if class_names and 0 <= k < len(class_names) else str(k)

    for c, idx in galleries.items():
        size = int((labels == c).sum())
        major = ""
        if truth is not None:
            vals, counts = np.unique(np.asarray(truth)[labels == c], return_counts=True)
            major = f"; most common label {names(int(vals[counts.argmax()]))} ({counts.max() / size:.0%})"
        parts.append(
            f'<div class="cluster"><b>cluster {c}</b>: {size} images{major}<br>'
            + _img(_gallery_png(images, idx), f"cluster {c} examples", "gallery")
            + "</div>"
        )
    if truth is not None:
        cm, row_ids, col_ids = confusion(labels, np.asarray(truth))
        parts += [
            "<h2>Confusion (clusters × classes, matched pairs on the diagonal)</h2>",
            _table(["cluster"] + [names(k) for k in col_ids], [[r] + list(cm[i]) for i, r in enumerate(row_ids)]),
        ]
        purity = cm.max(axis=1) / np.maximum(cm.sum(axis=1), 1)
        worst = np.argsort(purity)[:3]
        parts += [
            "<h3>Worst-mixed clusters</h3>",
            _table(
                ["cluster", "images", "largest class share", "its classes"],
                [
                    [
                        row_ids[i],
                        int(cm[i].sum()),
                        f"{purity[i]:.0%}",
                        ", ".join(f"{names(col_ids[j])}: {cm[i, j]}" for j in np.argsort(-cm[i])[:3] if cm[i, j]),
                    ]
                    for i in worst
                ],
            ),
        ]
    parts += ["<h2>Settings as they ran</h2>", _table(["setting", "value"], [[k, v] for k, v in settings.items()])]
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    return write_text(path, as_text(page))  # a path that is not UTF-8 (in the settings) shows as U+FFFD


def write_cluster_galleries(
    path: Path, images: np.ndarray, embedding: np.ndarray, labels: np.ndarray, seed: int = 0
) -> Path:
    """``clusters.png``: the same galleries as the report, one row per cluster."""
    from PIL import Image

    from .fileio import atomic_path

    rows = [
        (_montage(images, idx), c)
        for c, idx in gallery_indices(np.asarray(embedding, dtype=np.float32), np.asarray(labels), seed).items()
    ]
    width = max(r.shape[1] for r, _ in rows)
    sheet = np.full((sum(r.shape[0] + 4 for r, _ in rows), width), 255, dtype=np.uint8)
    y = 0
    for r, _ in rows:
        sheet[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + 4
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(tmp, format="PNG")
    return Path(path)


def write_run_views(folder: Path, est, ds, metrics: dict, settings: dict, title: str) -> None:
    """What a run folder shows a person: ``report.html``, ``clusters.png`` and, where K was chosen,
    ``k_search.json`` (every K's scores) and ``k_search.png``."""
    from .fileio import write_json

    search = est.k_search_.to_dict() if est.k_search_ is not None else None
    if search is not None:
        from .choose_k import plot_k_search

        write_json(folder / "k_search.json", search)
        plot_k_search(
            est.k_search_,
            folder / "k_search.png",
            f"{ds.name}: K = {search['chosen']} (runner-up {search['runner_up']})",
        )
    write_cluster_galleries(folder / "clusters.png", ds.images, est.embedding_, est.labels_, est.seed_)
    write_report(
        folder / "report.html",
        title=title,
        images=ds.images,
        embedding=est.embedding_,
        labels=est.labels_,
        truth=ds.labels,
        metrics=metrics,
        settings=settings,
        history=est.history_,
        k_search=search,
        seed=est.seed_,
    )


__all__ = [
    "write_run_views",
    "write_report",
    "write_cluster_galleries",
    "gallery_indices",
    "confusion",
    "CSP",
    "MAX_POINTS",
]
