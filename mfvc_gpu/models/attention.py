"""Attention modules: SimAM (parameter-free, the paper's choice) and CBAM (ablation)."""

from __future__ import annotations

import torch
from torch import nn


class SimAM(nn.Module):
    """Parameter-free 3-D attention (Yang et al., ICML 2021).

    Every activation ``t`` of a channel gets the minimal energy

        e* = 4 (σ² + λ) / ((t − μ)² + 2σ² + 2λ)

    where μ and σ² are the mean and variance of the *other* activations of that channel
    (n = H·W − 1 in the variance), and the output is ``x · sigmoid(1 / e*)``.

    Parameters
    ----------
    lam : float
        The regulariser λ. Larger values flatten the attention towards a constant gate.
    """

    def __init__(self, lam: float = 1e-4) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        if n < 1:  # a 1×1 map has no neighbours to compare with: the gate is constant
            return x * torch.sigmoid(torch.full_like(x, 0.5))
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        var = d.sum(dim=(2, 3), keepdim=True) / n
        inv_energy = d / (4 * (var + self.lam)) + 0.5
        return x * torch.sigmoid(inv_energy)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel, then spatial."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        x = x * torch.sigmoid(avg + mx)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def make_attention(kind: str, channels: int) -> nn.Module:
    """Return the attention module named ``kind`` (``simam``, ``cbam`` or ``none``)."""
    if kind == "simam":
        return SimAM()
    if kind == "cbam":
        return CBAM(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"attention={kind!r} is not one of 'simam', 'cbam', 'none'")
