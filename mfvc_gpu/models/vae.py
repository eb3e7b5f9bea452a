"""The β-VAE of MFVC: Res-VAE-Block encoder with early (multi-scale) fusion, mirrored decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import VAEConfig
from .blocks import ResVAEBlock

CHANNELS = (16, 32, 64, 128, 256)


class Encoder(nn.Module):
    """Five Res-VAE-Blocks with 2×2 max pooling after each; GAP early fusion of every block."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        c_in = (cfg.in_channels,) + CHANNELS[:-1]
        self.blocks = nn.ModuleList(ResVAEBlock(i, o, cfg.attention, cfg.residual) for i, o in zip(c_in, CHANNELS))
        self.pool = nn.MaxPool2d(2)
        self.fusion = cfg.fusion
        # layer 5: block, pool, flatten, BatchNorm, LeakyReLU
        last_spatial = cfg.image_size // 2 ** len(CHANNELS)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.BatchNorm1d(CHANNELS[-1] * last_spatial**2),
            nn.LeakyReLU(0.2),
        )
        n_features = (
            sum(CHANNELS[:-1]) + CHANNELS[-1] * last_spatial**2 if cfg.fusion else CHANNELS[-1] * last_spatial**2
        )
        self.n_features = n_features
        self.fc_mu = nn.Linear(n_features, cfg.latent_dim)
        self.fc_logvar = nn.Linear(n_features, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = []
        for block in self.blocks[:-1]:
            x = self.pool(block(x))
            pooled.append(x.mean(dim=(2, 3)))
        x = self.pool(self.blocks[-1](x))
        last = self.head(x)
        fused = torch.cat(pooled + [last], dim=1) if self.fusion else last
        return self.fc_mu(fused), self.fc_logvar(fused)


def up_block(c_in: int, c_out: int, kind: str = "transpose") -> nn.Sequential:
    """Double the spatial size (a transposed convolution, or nearest upsampling + convolution), BN, LeakyReLU."""
    if kind == "upsample":
        up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    elif kind == "transpose":
        up = [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)]
    else:
        raise ValueError(f"decoder={kind!r}: must be 'transpose' or 'upsample'")
    return nn.Sequential(*up, nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


class Decoder(nn.Module):
    """Mirror of the encoder: latent → 256×1×1 → five doublings → 1×32×32 in [0, 1]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.start = cfg.image_size // 2 ** len(CHANNELS)
        self.fc = nn.Linear(cfg.latent_dim, CHANNELS[-1] * self.start**2)
        rev = CHANNELS[::-1]
        self.ups = nn.Sequential(*(up_block(i, o, cfg.decoder) for i, o in zip(rev, rev[1:] + (rev[-1],))))
        self.out = nn.Conv2d(CHANNELS[0], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], CHANNELS[-1], self.start, self.start)
        h = self.ups(h)
        return torch.sigmoid(self.out(h))


class BetaVAE(nn.Module):
    """β-VAE: ``forward`` returns the reconstruction, μ and log σ²."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar


def vae_loss(
    x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """‖x − x′‖² + β·KL(N(μ, σ²) ‖ N(0, I)), summed over pixels / latent units, mean over the batch.

    Returns (total, reconstruction, kl).
    """
    rec = F.mse_loss(recon.float(), x.float(), reduction="sum") / x.shape[0]
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / x.shape[0]
    return rec + beta * kl, rec, kl
