"""The learned map into the UMAP space: a small network from the latent codes to the coordinates the
manifold stage gave them, so a new image is placed by one forward pass instead of UMAP's ``transform``.

After the manifold is fitted, :func:`fit_map` trains :class:`EmbeddingMap` by regression onto the fitted
coordinates (mean squared error, codes and coordinates standardised), on the device the encoder runs on.
The run's embedding is then the map's output and the clusterer is refitted on it
(:func:`mfvc_gpu.pipeline.fit_learned_map`), so fitted and new images go through the same function.
Its size and training were chosen by measurement (docs/BENCHMARKS.md, "Labelling new images: the learned
map"). The clusterer that labels the mapped points runs in torch too (:class:`TorchClusterer`: the saved K-Means
centres or the Gaussian mixture), so on a GPU nothing reaches the host before the labels.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from .errors import MFVCError

HIDDEN = 256  # width of the two hidden layers
STEPS = 2500  # Adam steps on random batches: 256 passes over the codes, at least MIN_STEPS, at most STEPS
MIN_STEPS = 300
EPOCHS = 256
BATCH = 256
LR = 3e-3  # cosine-annealed to zero


class EmbeddingMap(nn.Module):
    """codes (N, D) → coordinates (N, C): standardise, two GELU layers of :data:`HIDDEN`, un-standardise."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = HIDDEN):
        super().__init__()
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        for name, size in (("z_mean", in_dim), ("z_scale", in_dim), ("e_mean", out_dim), ("e_scale", out_dim)):
            self.register_buffer(name, torch.zeros(size) if "mean" in name else torch.ones(size))
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net((z - self.z_mean) / self.z_scale) * self.e_scale + self.e_mean

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> EmbeddingMap:
        """The map a state dict describes (its shapes say the sizes); :class:`MFVCError` when it is not one."""
        try:
            in_dim, out_dim = int(state["z_mean"].shape[0]), int(state["e_mean"].shape[0])
            m = cls(in_dim, out_dim, int(state["net.0.weight"].shape[0]))
            m.load_state_dict(state)
        except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as exc:
            raise MFVCError(f"not a learned map's weights ({str(exc).splitlines()[0]})") from None
        return m.eval()


def as_tensor(a, device: torch.device) -> torch.Tensor:
    """A float32 tensor on ``device`` from a tensor, a NumPy array or a CuPy array (through DLPack, no copy)."""
    if isinstance(a, torch.Tensor):
        t = a
    elif isinstance(a, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
    else:
        t = torch.from_dlpack(a)
    return t.to(device=device, dtype=torch.float32)


def fit_map(z, embedding, seed: int, device: torch.device) -> tuple[EmbeddingMap, torch.Tensor, dict]:
    """Train a map from codes ``z`` (N, D) to the fitted coordinates ``embedding`` (N, C) on ``device``.

    Returns the map (in eval mode), its output on ``z`` (N, C, on ``device``) and a record: seconds, steps,
    and the root-mean-square error on the training codes as a share of the coordinates' spread."""
    t0 = time.perf_counter()
    z, e = as_tensor(z, device), as_tensor(embedding, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        m = EmbeddingMap(z.shape[1], e.shape[1]).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    m.z_mean.copy_(z.mean(0))
    spread = z.std(0)  # floored at a tenth of the mean: a column (nearly) constant in the fitted codes (a pixel
    m.z_scale.copy_(spread.clamp_min(0.1 * float(spread.mean()) + 1e-12))  # never lit there) cannot blow up
    m.e_mean.copy_(e.mean(0))
    m.e_scale.copy_(e.std(0).clamp_min(1e-6))
    target = (e - m.e_mean) / m.e_scale
    steps = min(STEPS, max(MIN_STEPS, EPOCHS * math.ceil(len(z) / BATCH)))
    opt = torch.optim.Adam(m.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    m.train()
    for _ in range(steps):
        idx = torch.randint(0, len(z), (BATCH,), generator=gen, device=device)
        loss = nn.functional.mse_loss(m.net((z[idx] - m.z_mean) / m.z_scale), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    m.eval()
    mapped = apply_map(m, z, device)
    rel = float((mapped - e).pow(2).mean().sqrt() / e.std(0).mean())
    if not math.isfinite(rel):
        raise MFVCError("the learned map did not converge (NaN loss); use out_of_sample='umap' (--out-of-sample umap)")
    return m, mapped, dict(seconds=time.perf_counter() - t0, steps=steps, relative_rmse=rel)


def apply_map(m: EmbeddingMap, z, device: torch.device, chunk: int = 65_536) -> torch.Tensor:
    """``m`` on all codes ``z`` (a tensor or array), chunk by chunk, as one float32 tensor on ``device``."""
    z = as_tensor(z, device)
    with torch.no_grad():
        return torch.cat([m(z[i : i + chunk]) for i in range(0, len(z), chunk)]) if len(z) else m(z)


class TorchClusterer:
    """The fitted clusterer's ``predict`` in torch, from the arrays :meth:`Backend.cluster_state` saves:
    nearest K-Means centre, or the Gaussian mixture's most probable component (full covariances, the
    computation scikit-learn's ``predict`` does, in float64)."""

    def __init__(self, state: dict[str, np.ndarray], device: torch.device):
        self.device = device
        if "kmeans_centres" in state:
            self.kind = "kmeans"
            self.centres = torch.as_tensor(np.asarray(state["kmeans_centres"], np.float64), device=device)
        elif "gmm_means" in state:
            self.kind = "gmm"
            self.means = torch.as_tensor(np.asarray(state["gmm_means"], np.float64), device=device)
            chol = torch.as_tensor(np.asarray(state["gmm_precisions_cholesky"], np.float64), device=device)
            if chol.ndim != 3:
                raise MFVCError("the saved mixture does not have full covariances, which this version labels with")
            self.chol = chol
            log_det = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
            d = self.means.shape[1]
            weights = torch.as_tensor(np.asarray(state["gmm_weights"], np.float64), device=device)
            self.offset = torch.log(weights) + log_det - 0.5 * d * math.log(2 * math.pi)
            self.mu_chol = torch.einsum("kd,kde->ke", self.means, chol)
        else:
            raise MFVCError("this clusterer labels no new points (DBSCAN); use cluster='kmeans' or 'gmm' to predict")

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        u = u.to(self.device, torch.float64)
        if self.kind == "kmeans":
            return torch.cdist(u, self.centres).argmin(1)
        y = torch.einsum("nd,kde->nke", u, self.chol) - self.mu_chol[None]
        return (self.offset[None] - 0.5 * y.pow(2).sum(2)).argmax(1)


__all__ = ["EmbeddingMap", "fit_map", "apply_map", "TorchClusterer", "as_tensor", "HIDDEN", "STEPS"]
