"""The one training loop: AdamW + cosine annealing, AMP on CUDA, progress bar, checkpoint/resume."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .models import BetaVAE, vae_loss
from .params import PROFILES, stage_dataclass
from .fileio import atomic_path

log = logging.getLogger(__name__)


# The ``train`` settings; where the table leaves a value to the profile, the paper's protocol.
TrainConfig = stage_dataclass(
    "TrainConfig", "train", "How the β-VAE is trained (fields left to the profile default to the paper's protocol).",
    defaults=PROFILES["paper"], module=__name__,
)


def _atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train_vae(
    model: BetaVAE,
    images: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    seed: int = 0,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Train ``model`` on ``images`` (N, 1, S, S) float32 in [0, 1]; return one record per epoch.

    With ``checkpoint`` set, the model, optimiser, scheduler and random state are written there
    after every epoch (atomically); ``resume`` continues from it.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the sampling noise is seeded; the caller's streams stay as they were
        torch.manual_seed(seed)
        return _train(model, images, cfg, device, seed, None if checkpoint is None else Path(checkpoint), resume, progress)


def _train(model, images, cfg, device, seed, checkpoint, resume, progress) -> list[dict]:
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)  # the data order
    model.to(device, memory_format=torch.channels_last).train()  # faster convolutions on CPU and GPU
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-len(images) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    history: list[dict] = []
    start = 0
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["epoch"])
        history = [dict(zip(state["history_keys"], map(float, row))) for row in state["history"].tolist()]
        log.info("resumed from %s at epoch %d", checkpoint, start)
    data = torch.from_numpy(images)
    if device.type == "cuda":
        data = data.to(device, non_blocking=True)
    use_amp = cfg.amp and device.type == "cuda"
    beta = model.cfg.beta
    bar = tqdm(range(start, cfg.epochs), desc="train β-VAE", unit="epoch", disable=not progress, initial=start, total=cfg.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        order = torch.randperm(len(data), generator=gen)
        totals = torch.zeros(3, dtype=torch.float64)
        for i in range(0, len(data), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = data[idx.to(data.device)].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                recon, mu, logvar = model(x)
            loss, rec, kl = vae_loss(x, recon.float(), mu.float(), logvar.float(), beta)  # the loss in float32, outside autocast
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals += torch.tensor([loss.item(), rec.item(), kl.item()], dtype=torch.float64) * len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        loss, rec, kl = (totals / len(data)).tolist()
        record = dict(epoch=epoch + 1, loss=loss, recon=rec, kl=kl, seconds=seconds, images_per_s=len(data) / seconds)
        history.append(record)
        bar.set_postfix(loss=f"{loss:.2f}", rec=f"{rec:.2f}", kl=f"{kl:.1f}")
        if checkpoint is not None:
            keys = list(record)
            _atomic_save(
                dict(
                    model=model.state_dict(),
                    optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(),
                    generator=gen.get_state(),
                    torch_rng=torch.get_rng_state(),
                    epoch=epoch + 1,
                    history_keys=keys,
                    history=torch.tensor([[h[k] for k in keys] for h in history], dtype=torch.float64),
                    train_config=asdict(cfg),
                ),
                checkpoint,
            )
    model.eval()
    return history


@torch.no_grad()
def encode(model: BetaVAE, images: np.ndarray | torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Posterior means μ of ``images`` as one float32 tensor on ``device`` (it stays there)."""
    model.to(device, memory_format=torch.channels_last).eval()  # as in training: the same kernels, the same codes
    data = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    out = torch.empty((len(data), model.cfg.latent_dim), dtype=torch.float32, device=device)
    for i in range(0, len(data), batch_size):
        x = data[i : i + batch_size].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        mu, _ = model.encoder(x)
        out[i : i + batch_size] = mu.float()
    return out
