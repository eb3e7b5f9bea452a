"""Random affine views of a training batch: the features learn to ignore small shifts, turns and scales.

``augment`` (the setting) is one strength ``s``: every image of a batch gets its own shift of up to
``s`` of the image's side along each axis, a rotation of up to ``100·s`` degrees and a scale in
``[1 − s, 1 + s]``, drawn uniformly. At ``s = 0.1`` that is the range DEC-DA and DynAE train with
(shifts of 10 %, rotations of 10°). The batch is resampled on the training device with
``affine_grid`` / ``grid_sample`` (bilinear, the background filled with zeros), from the loop's own
random generator, so a seed gives the same views. The network reconstructs the view it was given.
Only training sees views: encoding (``train.encode``) and prediction use the images as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEGREES_PER_UNIT = 100.0  # rotation range per unit of strength: 0.1 -> ±10°


def affine_view(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` (N, C, H, W, float) under one random affine map per image; ``x`` itself when ``strength`` is 0."""
    if strength <= 0:
        return x
    n = x.shape[0]

    def uniform(size):  # U(-strength, strength), drawn where x is
        return (torch.rand(size, generator=generator, device=x.device) * 2 - 1) * strength

    angle = uniform(n) * (DEGREES_PER_UNIT * math.pi / 180)
    scale = 1 + uniform(n)
    shift = uniform((n, 2)) * 2  # normalised coordinates span [-1, 1]: a fraction f of the side is 2f
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # the grid maps output to input: inverse scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


__all__ = ["affine_view", "DEGREES_PER_UNIT"]
