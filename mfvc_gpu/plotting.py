"""Figures: the embedding coloured by cluster, curves of a score against a parameter."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save atomically: a temporary name in the same folder, then a rename."""
    from .fileio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def to_2d(embedding: np.ndarray) -> tuple[np.ndarray, str]:
    """A 2-D view of an embedding: itself when 2-D, else its first two principal components."""
    if embedding.shape[1] <= 2:
        return embedding[:, :2], "UMAP"
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(embedding), f"PCA of the {embedding.shape[1]}-D UMAP space"


def plot_embedding(
    embedding: np.ndarray, labels: np.ndarray, path: Path, title: str = "", max_points: int = 20000
) -> Path:
    """Scatter of the (2-D view of the) embedding, coloured by cluster; noise (-1) in grey."""
    plt = pyplot()
    xy, how = to_2d(np.asarray(embedding, dtype=np.float32))
    labels = np.asarray(labels)
    if len(xy) > max_points:
        idx = np.random.default_rng(0).choice(len(xy), max_points, replace=False)
        xy, labels = xy[idx], labels[idx]
    fig, ax = plt.subplots(figsize=(6.5, 6))
    noise = labels < 0
    ax.scatter(xy[noise, 0], xy[noise, 1], s=2, c="lightgrey", label="noise" if noise.any() else None)
    ax.scatter(xy[~noise, 0], xy[~noise, 1], s=2, c=labels[~noise], cmap="tab20" if labels.max() >= 10 else "tab10")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}\n{how}, coloured by cluster" if title else f"{how}, coloured by cluster", fontsize=10)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_curves(
    x, series: dict[str, list[float]], path: Path, xlabel: str, ylabel: str = "ACC", title: str = "", logy: bool = False
) -> Path:
    """One line per series against ``x``: parameter sweeps and scaling curves."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
