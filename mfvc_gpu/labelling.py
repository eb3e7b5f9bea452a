"""Labelling images in streamed chunks: encoder → learned map (or the manifold's ``transform``) → clusterer.

A :class:`Labeller` holds what a fitted model needs to label an image; :func:`label` runs it over a stack
of images chunk by chunk, so memory holds one chunk's codes and coordinates besides the outputs (the
labels, and the coordinates and codes where asked). With the learned map every step is torch on the
model's device: on a GPU nothing reaches the host before each chunk's labels. Images the model was
fitted on (found by their codes, :class:`RowMatcher`) keep the coordinates and labels of the fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import interrupts
from .backends.interop import is_cupy

CHUNK = 16_384  # images per chunk: 16 MiB of 32×32 uint8, 2 MiB of codes


class RowMatcher:
    """Which rows are training codes: a training code within ``rtol`` × the codes' spread in every coordinate
    (the encoder's kernels differ with the batch size, so the same image's code differs in the last bits).

    The training codes are sorted once by their widest coordinate; a row's candidates are the few codes within
    the tolerance on that coordinate (two binary searches), checked on every coordinate. Memory and time grow
    with the rows and their candidates, not with rows × training codes; it runs where the codes are."""

    def __init__(self, reference: np.ndarray, device: torch.device, rtol: float = 1e-4):
        ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32)).to(device)
        self.atol = rtol * max(1.0, float(ref.std())) if len(ref) else 0.0
        self.axis = int(ref.std(0).argmax()) if len(ref) > 1 else 0
        self.keys, self.order = torch.sort(ref[:, self.axis]) if len(ref) else (ref[:, 0], None)
        self.ref = ref

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """For each row of ``z``, the index of the training row it is, or -1 (on ``z``'s device)."""
        out = torch.full((len(z),), -1, dtype=torch.int64, device=z.device)
        if len(self.ref) == 0 or z.shape[1] != self.ref.shape[1] or len(z) == 0:
            return out
        q = z.to(self.ref.device, torch.float32)
        lo = torch.searchsorted(self.keys, q[:, self.axis] - self.atol)
        hi = torch.searchsorted(self.keys, q[:, self.axis] + self.atol, right=True)
        counts = hi - lo
        if int(counts.sum()) == 0:
            return out
        rows = torch.repeat_interleave(torch.arange(len(q), device=q.device), counts)
        starts = torch.repeat_interleave(lo, counts)
        offsets = torch.arange(len(rows), device=q.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        cand = self.order[starts + offsets]
        hit = (self.ref[cand] - q[rows]).abs().amax(1) <= self.atol
        out[rows[hit].to(z.device)] = cand[hit].to(z.device)
        return out


@dataclass
class Labeller:
    """A fitted model's way from images to labels. ``codes``: images (a uint8 chunk) → codes on the device;
    ``embed``: codes → coordinates; ``cluster``: coordinates → labels (tensors on the device, or arrays the
    backend returns for the manifold's ``transform``). ``embedding`` / ``labels``: the training rows'."""

    codes: Callable[[np.ndarray], torch.Tensor]
    embed: Callable[[torch.Tensor], Any]
    cluster: Callable[[Any], Any]
    embedding: np.ndarray
    labels: np.ndarray
    matcher: RowMatcher | None = None
    chunk: int | None = CHUNK  # None: one chunk (the manifold's transform gives the same result only whole)


@dataclass
class Labelled:
    """What :func:`label` returns: labels (N,), coordinates (N, C) and codes (N, D) where asked, and for each
    row the training row it is (-1 for a new image)."""

    labels: np.ndarray
    embedding: np.ndarray | None
    latent: np.ndarray | None
    seen: np.ndarray


def _host(a) -> np.ndarray:
    """A NumPy copy of a tensor, a CuPy array (the manifold's transform on cuML) or an array."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return a.get() if is_cupy(a) else np.asarray(a)


def label(
    lab: Labeller,
    images: np.ndarray,
    *,
    embedding: bool = True,
    latent: bool = False,
    skip: np.ndarray | None = None,
    progress: bool = False,
) -> Labelled:
    """Label ``images`` (N, ...) chunk by chunk. ``skip``: a boolean mask of rows not to touch (their outputs
    stay zero / -1: the caller fills them). ``progress``: a bar over the images."""
    from tqdm.auto import tqdm

    n = len(images)
    labels = np.full(n, -1, dtype=np.int64)
    seen = np.full(n, -1, dtype=np.int64)
    emb = np.zeros((n, lab.embedding.shape[1]), dtype=np.float32) if embedding else None
    codes = None
    chunk = lab.chunk or max(n, 1)
    bar = tqdm(total=n, desc="label", unit="img", unit_scale=True, disable=not progress)
    with bar, torch.no_grad():  # not inference_mode: encode() may move the network's weights (channels_last)
        for i in range(0, n, chunk):
            interrupts.check()  # a safe point between chunks
            rows = np.arange(i, min(i + chunk, n))
            if skip is not None:
                rows = rows[~skip[rows]]
            if len(rows) == 0:
                bar.update(min(chunk, n - i))
                continue
            z = lab.codes(images[rows] if skip is not None else images[i : i + len(rows)])
            if latent:
                if codes is None:
                    codes = np.zeros((n, z.shape[1]), dtype=np.float32)
                codes[rows] = _host(z)
            hit = _host(lab.matcher(z)) if lab.matcher is not None else np.full(len(z), -1, dtype=np.int64)
            known = hit >= 0
            out_labels = np.empty(len(rows), dtype=np.int64)
            out_labels[known] = lab.labels[hit[known]]
            if emb is not None:
                emb[rows[known]] = lab.embedding[hit[known]]
            if not known.all():
                u = lab.embed(z[torch.from_numpy(~known).to(z.device)] if known.any() else z)
                out_labels[~known] = _host(lab.cluster(u))
                if emb is not None:
                    emb[rows[~known]] = _host(u)
            labels[rows], seen[rows] = out_labels, hit
            bar.update(min(chunk, n - i))
    return Labelled(labels, emb, codes, seen)


__all__ = ["CHUNK", "Labeller", "Labelled", "RowMatcher", "label"]
