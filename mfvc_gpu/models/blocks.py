"""The Res-VAE-Block: a residual convolution block with attention on its main path."""

from __future__ import annotations

import torch
from torch import nn

from .attention import make_attention


def conv_bn(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    """A bias-free convolution followed by batch normalisation."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class ResVAEBlock(nn.Module):
    """conv-BN-LeakyReLU-conv-BN then attention, plus a conv-BN residual path; sum, LeakyReLU.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    attention : {"simam", "cbam", "none"}
        Attention on the main path (the paper uses SimAM).
    residual : bool
        Keep the residual path. ``False`` is the paper's "no residual" ablation.
    """

    def __init__(self, c_in: int, c_out: int, attention: str = "simam", residual: bool = True) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3)
        self.act1 = nn.LeakyReLU(0.2)
        self.conv2 = conv_bn(c_out, c_out, 3)
        self.attention = make_attention(attention, c_out)
        self.shortcut = conv_bn(c_in, c_out, 1) if residual else None
        self.act_out = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        h = self.act1(h)
        h = self.conv2(h)
        h = self.attention(h)
        if self.shortcut is not None:
            h = h + self.shortcut(x)
        return self.act_out(h)
