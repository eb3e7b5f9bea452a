"""The N2D-style baseline of Table 3: a fully connected autoencoder whose codes go to UMAP + GMM."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


class MLPAutoencoder(nn.Module):
    """N2D's autoencoder: fully connected D-500-500-2000-k, ReLU, a linear code and a mirrored decoder."""

    def __init__(self, n_in: int, n_code: int, hidden: tuple[int, ...] = (500, 500, 2000)) -> None:
        super().__init__()
        dims = (n_in, *hidden)
        enc: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*enc, nn.Linear(dims[-1], n_code))
        dec: list[nn.Module] = [nn.Linear(n_code, dims[-1])]
        for a, b in zip(dims[::-1][:-1], dims[::-1][1:]):
            dec += [nn.ReLU(), nn.Linear(a, b)]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        recon = self.decoder(code)
        return recon, code


def train_mlp_autoencoder(
    x: np.ndarray, n_code: int, epochs: int, seed: int, device: str = "cpu", batch_size: int = 256, lr: float = 1e-3
) -> tuple[np.ndarray, dict]:
    """Train :class:`MLPAutoencoder` on flattened images ``x`` (N, D) with MSE and Adam; return
    the codes (N, n_code) float32 and a record (seconds, final loss, epochs)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    model = MLPAutoencoder(x.shape[1], n_code).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    t0 = time.perf_counter()
    loss_sum = 0.0
    for _ in range(epochs):
        loss_sum = 0.0
        for idx in torch.randperm(len(data), generator=gen).split(batch_size):
            batch = data[idx.to(dev)]
            recon, _ = model(batch)
            loss = nn.functional.mse_loss(recon, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
    model.eval()
    with torch.no_grad():
        codes = torch.cat([model.encoder(data[i : i + 4096]) for i in range(0, len(data), 4096)])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    record = dict(train_s=time.perf_counter() - t0, loss=loss_sum / len(data), epochs=epochs)
    return codes.float().cpu().numpy(), record


__all__ = ["MLPAutoencoder", "train_mlp_autoencoder"]
