"""The one training loop: AdamW + cosine annealing, bfloat16 autocast, progress bar, checkpoint/resume.

What keeps it fast on both devices:

* the images stay uint8 on the training device and each batch is converted to float32 there;
* the data order is drawn on that device, and the loss terms are summed on the device and read
  once per epoch (no host sync per step); finiteness is tracked the same way and checked at
  the end of the epoch, naming the first step that went wrong;
* every step has the same batch shape: the last partial batch of an epoch is dropped (its
  images are in other batches in other epochs, since the order is reshuffled each epoch);
* AdamW's fused kernel where the device has one, ``foreach`` otherwise;
* ``amp``: bfloat16 autocast of the network where the device computes bfloat16 natively (CUDA;
  CPUs with AVX512-BF16 or AMX), the loss in float32;
* ``compile`` (torch.compile of the network's forward and backward; CUDA graphs on a GPU);
* ``augment``: each batch is seen as random affine views (:mod:`mfvc_gpu.augment`), drawn on the device.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import interrupts
from .augment import affine_view
from .data.loading import unit_float
from .errors import MFVCError
from .fileio import write_torch
from .models import BetaVAE, vae_loss
from .settings import TrainConfig, VAEConfig

log = logging.getLogger(__name__)


# torch.compile on the CPU (docs/BENCHMARKS.md, "Training step"): the compiled step is faster than eager
# (batch 64), but compiling costs tens of seconds first; 'auto' compiles where the run has at least this
# many optimiser steps, where the measured gain repays the measured compile time. On CUDA nothing has
# been measured, so 'auto' stays eager there.
COMPILE_BREAK_EVEN_STEPS = 3500


def use_compile(setting: str, device: torch.device, steps: int = 0) -> bool:
    """``compile`` as it applies to a run of ``steps`` optimiser steps on ``device``: 'on' compiles; 'auto'
    compiles on a CPU with a C++ compiler when ``steps`` reaches :data:`COMPILE_BREAK_EVEN_STEPS`."""
    if setting == "auto":
        return device.type == "cpu" and steps >= COMPILE_BREAK_EVEN_STEPS and cpp_compiler() is not None
    return setting == "on"


def planned_steps(cfg, n_images: int) -> int:
    """The optimiser steps a run of ``cfg`` makes on ``n_images`` images (the last partial batch is dropped)."""
    return cfg.epochs * (n_images // max(1, min(cfg.batch_size, n_images)))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere bfloat16 is emulated and slower than float32)."""
    if device.type == "cuda":  # Ampere (compute capability 8) and later; before it bfloat16 is emulated
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def use_amp(setting: bool, device: torch.device) -> bool:
    """``amp`` as it applies on ``device``: on only where bfloat16 is native (docs/BENCHMARKS.md)."""
    return bool(setting) and native_bf16(device)


def numerics(cfg, device: torch.device | str, n_images: int) -> dict:
    """How the training step ran on ``device`` for ``n_images`` images: its precision, whether it was compiled
    and the strength of the augmentation (for the run record)."""
    device = torch.device(device)
    return dict(
        precision="bfloat16 autocast" if use_amp(cfg.amp, device) else "float32",
        compiled=use_compile(cfg.compile, device, planned_steps(cfg, n_images)),
        augment=cfg.augment,
    )


def memory_format(channels_last: bool = True) -> torch.memory_format:
    """channels_last, which measured faster for this network on both devices (docs/BENCHMARKS.md), unless told "
    "otherwise."""
    return torch.channels_last if channels_last else torch.contiguous_format


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused on the device where PyTorch has the fused kernel, else the ``foreach`` one."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def training_step(opt, sched, forward_loss, x):
    """One optimiser step on batch ``x``; returns the (loss, recon, kl) tensors, still on the device."""
    loss, rec, kl = forward_loss(x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return torch.stack([loss.detach(), rec.detach(), kl.detach()])


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile would build CPU kernels with ($CXX, else g++), or None."""
    import os
    import shutil

    return shutil.which(os.environ.get("CXX") or "g++")


def forward_loss_fn(model, beta: float, autocast: bool, device: torch.device, compiled: bool):
    """The forward pass and the loss of one batch; compiled (forward and backward graphs) when asked."""

    def forward_loss(x):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            recon, mu, logvar = model(x)
        return vae_loss(x, recon.float(), mu.float(), logvar.float(), beta)  # the loss in float32, outside autocast

    if not compiled:
        return forward_loss
    if device.type == "cpu" and not cpp_compiler():
        raise MFVCError(
            "compile='on' on the CPU needs a C++ compiler (torch.compile builds its CPU kernels with g++, or $CXX); "
            "install one (e.g. apt-get install g++) or use --compile off"
        )
    import torch._inductor.config as inductor

    inductor.fallback_random = True  # the sampling noise is eager's: the same seed gives the same losses
    mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs: one launch per step
    return torch.compile(forward_loss, mode=mode, dynamic=False)


def _checkpoint_settings(cfg, model: BetaVAE, images: np.ndarray, seed: int) -> dict:
    return dict(
        train=asdict(cfg),
        network=asdict(model.cfg),
        n_images=int(len(images)),
        seed=int(seed),
        data=fingerprint(images),
    )


def fingerprint(images: np.ndarray) -> str:
    """A hash of the stored images (their bytes, dtype and shape): a checkpoint records it, and ``resume``
    refuses a checkpoint written for other images."""
    import hashlib

    a = np.ascontiguousarray(images)
    h = hashlib.blake2b(f"{a.dtype.str}{a.shape}".encode(), digest_size=16)
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _load_checkpoint(path: Path, device: torch.device, expected: dict) -> dict:
    """The checkpoint at ``path`` if it was written by a run with the ``expected`` settings; else MFVCError."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or foreign: refused whole, never half-loaded
        raise MFVCError(
            f"the checkpoint {path} cannot be read ({type(exc).__name__}); it is damaged: delete it, "
            "or run again without --resume"
        ) from exc
    written = state.get("settings") if isinstance(state, dict) else None
    if (
        isinstance(written, dict)
        and "data" in written
        and {k: v for k, v in written.items() if k != "data"} == {k: v for k, v in expected.items() if k != "data"}
        and written.get("data") != expected["data"]
    ):
        raise MFVCError(
            f"the checkpoint {path} was written for other images ({expected['n_images']} images of other pixels); "
            "run without --resume to start again, or resume with the images it was trained on"
        )
    if written != expected:
        diff = _differences(written or {}, expected)
        raise MFVCError(
            f"the checkpoint {path} was written with other settings ({diff}); run without --resume, "
            "or resume with the settings it was written with"
        )
    return state


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{k}.")
            out += [inner] if inner else []
        elif a != b:
            out.append(f"{prefix}{k} {a!r} there, {b!r} now")
    return ", ".join(out)


def fit_vae(
    network: VAEConfig,
    images: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    seed: int = 0,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[BetaVAE, list[dict]]:
    """A new network built from ``network`` and trained on ``images``: its initial weights and its
    training are seeded by ``seed``, and the caller's random streams stay as they were. Returns the
    network (in eval mode) and one record per epoch (see :func:`train_vae`)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = BetaVAE(network)
        torch.manual_seed(seed)  # the training's noise starts from the seed, as in train_vae
        return model, _train(model, images, cfg, device, seed, checkpoint, resume, progress)


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
    """Train ``model`` on ``images`` (N, 1, S, S): uint8 (255 = white) or float32 in [0, 1].

    Returns one record per epoch. With ``checkpoint`` set, the model, optimiser, scheduler, random
    state and settings are written there after every epoch (atomically); ``resume`` continues from
    it, refusing a checkpoint written with other settings or one that cannot be read.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the sampling noise is seeded; the caller's streams stay as they were
        torch.manual_seed(seed)
        return _train(model, images, cfg, device, seed, checkpoint, resume, progress)


def _train(model, images, cfg, device, seed, checkpoint, resume, progress) -> list[dict]:
    from tqdm.auto import tqdm

    checkpoint = None if checkpoint is None else Path(checkpoint)
    n = len(images)
    batch = min(cfg.batch_size, n)
    if batch < 2:
        raise MFVCError(f"{n} image(s): training needs at least 2 (BatchNorm)")
    steps = n // batch  # the last partial batch is dropped: every step has the same shape
    fmt = memory_format()
    model.to(device, memory_format=fmt).train()
    opt = make_optimizer(model, cfg)
    total_steps = planned_steps(cfg, n)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    gen = torch.Generator(device=device).manual_seed(seed)  # the data order, drawn where the data is
    settings = _checkpoint_settings(cfg, model, images, seed)
    history: list[dict] = []
    start = 0
    if resume and checkpoint is not None and checkpoint.exists():
        state = _load_checkpoint(checkpoint, device, settings)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        start = int(state["epoch"])
        history = [dict(zip(state["history_keys"], map(float, row))) for row in state["history"].tolist()]
        log.info("resumed from %s at epoch %d", checkpoint, start)
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # uint8 stays uint8: 1 byte a pixel
    compiled = use_compile(cfg.compile, device, total_steps)
    forward_loss = forward_loss_fn(model, model.cfg.beta, use_amp(cfg.amp, device), device, compiled)
    bar = tqdm(
        range(start, cfg.epochs),
        desc="train β-VAE",
        unit="epoch",
        disable=not progress,
        initial=start,
        total=cfg.epochs,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen, device=device)
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        for s in range(steps):
            interrupts.check()  # a safe point: Ctrl-C or SIGTERM stops here, the last epoch's checkpoint kept
            x = affine_view(unit_float(data[order[s * batch : (s + 1) * batch]]), cfg.augment, gen)
            x = x.contiguous(memory_format=fmt)
            terms = training_step(opt, sched, forward_loss, x).double()
            totals += terms * batch
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(terms).all(), s, first_bad)
        bad = int(first_bad)  # the one host sync of the epoch, with the totals below
        if bad >= 0:
            raise MFVCError(
                f"the loss stopped being a finite number at epoch {epoch + 1}, step {bad + 1}: training "
                "diverged; lower the learning rate (--lr) or check the input images"
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        loss_v, rec_v, kl_v = (totals / (steps * batch)).tolist()
        record = dict(
            epoch=epoch + 1, loss=loss_v, recon=rec_v, kl=kl_v, seconds=seconds, images_per_s=steps * batch / seconds
        )
        history.append(record)
        bar.set_postfix(loss=f"{loss_v:.2f}", rec=f"{rec_v:.2f}", kl=f"{kl_v:.1f}")
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, opt, sched, gen, device, epoch + 1, history, settings)
    model.eval()
    return history


def _save_checkpoint(
    path: Path, model, opt, sched, gen, device, epoch: int, history: list[dict], settings: dict
) -> None:
    keys = list(history[-1])
    state = dict(
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        generator=gen.get_state(),
        torch_rng=torch.get_rng_state(),
        epoch=epoch,
        settings=settings,
        history_keys=keys,
        history=torch.tensor([[h[k] for k in keys] for h in history], dtype=torch.float64),
    )
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    write_torch(path, state)


@torch.no_grad()
def encode(
    model: BetaVAE, images: np.ndarray | torch.Tensor, device: torch.device, batch_size: int = 1024
) -> torch.Tensor:
    """Posterior means μ of ``images`` (uint8 or float) as one float32 tensor on ``device`` (it stays there).

    Streams: one batch at a time goes to the device and is converted there, so memory stays near
    the input's own size plus a batch, whatever the number of images.
    """
    fmt = memory_format()
    model.to(device, memory_format=fmt).eval()  # as in training: the same kernels, the same codes
    data = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    out = torch.empty((len(data), model.cfg.latent_dim), dtype=torch.float32, device=device)
    for i in range(0, len(data), batch_size):
        interrupts.check()
        x = unit_float(data[i : i + batch_size].to(device, non_blocking=True)).contiguous(memory_format=fmt)
        mu, _ = model.encoder(x)
        out[i : i + batch_size] = mu.float()
    return out
