"""The ``train_step`` stage: the training loop's own step, variant against variant, alternating.

Eager against ``torch.compile`` (with CUDA graphs on a GPU), bfloat16 autocast against float32, channels_last
against contiguous, and the ``eager, synced`` step (a host read of the loss every step), at each batch size:
every variant gets its own model and optimiser, is warmed up once (the compile happens there; its seconds are
recorded as ``warmup_s``), then the variants take turns, ``steps`` optimiser steps each, for ``rounds``
rounds, the order rotating each round. On a noisy machine (another process on the cores) every variant is
slowed alike, so the ratios, taken in one run, hold where absolute seconds would not. One row per (variant,
batch size, round): seconds for the steps, images/s, the process's peak RSS (a high-water mark over the whole
run) and, on a GPU, the peak allocated memory of that round.
"""

from __future__ import annotations

import time

import numpy as np

# name -> (compile, channels_last, host-synced, amp); the first is what the loop does by default
# (amp=True: bfloat16 autocast where the device computes it natively, see train.use_amp). "eager,
# synced" is the loop as it was before: float32 images, the batch indices drawn on the host, three
# host reads (.item()) of the loss terms every step, and autocast on CUDA only.
VARIANTS = {
    "eager": ("off", True, False, True),
    "eager float32": ("off", True, False, False),
    "eager contiguous": ("off", False, False, True),
    "compiled": ("on", True, False, True),
    "eager, synced": ("off", True, True, "cuda"),
}
BASELINES = ("eager", "eager, synced")  # the ratios are taken against today's default and the old loop


def _stepper(
    x_all: np.ndarray, device, batch: int, compile_mode: str, channels_last: bool, synced: bool, amp, seed: int
):
    """A fresh model, optimiser and step function; returns ``run(steps)``, timing nothing itself."""
    import torch

    from mfvc_gpu.data.loading import unit_float
    from mfvc_gpu.models import BetaVAE, VAEConfig
    from mfvc_gpu.resolution import resolve
    from mfvc_gpu.train import forward_loss_fn, make_optimizer, memory_format, training_step, use_amp, use_compile

    torch.manual_seed(seed)
    model = BetaVAE(VAEConfig())
    fmt = memory_format(channels_last)
    model.to(device, memory_format=fmt).train()
    cfg = resolve({"profile": "paper", "device": "cpu", "epochs": 1, "batch_size": batch}).train
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10**9)
    autocast = device.type == "cuda" if amp == "cuda" else use_amp(amp, device)
    fl = forward_loss_fn(model, model.cfg.beta, autocast, device, use_compile(compile_mode, device))
    data = torch.from_numpy(np.ascontiguousarray(x_all)).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(data)
    if synced:
        floats = unit_float(data)  # 4 bytes a pixel, converted once
        host_gen = torch.Generator().manual_seed(seed)

        def run_synced(steps: int):
            total = 0.0
            for _ in range(steps):
                idx = torch.randint(0, n, (batch,), generator=host_gen).to(device)
                loss, rec, kl = training_step(opt, sched, fl, floats[idx].contiguous(memory_format=fmt))
                total += loss.item() + rec.item() + kl.item()  # three host syncs a step
            return total

        return run_synced

    def run(steps: int):
        total = torch.zeros(3, device=device)
        for _ in range(steps):
            idx = torch.randint(0, n, (batch,), generator=gen, device=device)
            total += training_step(opt, sched, fl, unit_float(data[idx]).contiguous(memory_format=fmt))
        return total

    return run


def race(
    x: np.ndarray,
    device: str,
    batch_sizes,
    *,
    rounds: int = 5,
    steps: int = 20,
    seed: int = 0,
    variants=tuple(VARIANTS),
    dataset: str = "images",
) -> list[dict]:
    """Rows for the bench (``stage="train_step"``): see the module docstring."""
    import torch

    from .timing import GpuMemory, device_sync, peak_rss_mb

    dev = torch.device(device)
    sync = device_sync(device)
    backend = "gpu" if dev.type == "cuda" else "cpu"
    rows = []
    for batch in batch_sizes:
        steppers, warm = {}, {}
        for name in variants:
            steppers[name] = _stepper(x, dev, batch, *VARIANTS[name], seed)
            t0 = time.perf_counter()
            steppers[name](2)  # the warm-up: compiles where compile is on
            sync()
            warm[name] = time.perf_counter() - t0
        for r in range(rounds):
            order = list(variants[r % len(variants) :]) + list(variants[: r % len(variants)])
            for name in order:
                gpu = GpuMemory(device) if backend == "gpu" else None
                if gpu is not None:
                    gpu.reset()
                sync()
                t0 = time.perf_counter()
                steppers[name](steps)
                sync()
                seconds = time.perf_counter() - t0
                alloc, used = gpu.read() if gpu is not None else (None, None)
                rows.append(
                    dict(
                        stage="train_step",
                        backend=backend,
                        device=device,
                        library="torch",
                        variant=f"{name} b={batch}",
                        baseline=name == variants[0],
                        dataset=dataset,
                        n_samples=steps * batch,
                        n_features=int(np.prod(x.shape[1:])),
                        rep=r + 1,
                        seconds=seconds,
                        status="ok",
                        note=f"{steps} steps of batch {batch}; warm-up (compile) {warm[name]:.1f} s",
                        images_per_s=steps * batch / seconds,
                        peak_rss_mb=peak_rss_mb(),
                        gpu_max_alloc_mb=alloc,
                        gpu_used_mb=used,
                        warmup_s=warm[name],
                    )
                )
    return rows


def ratios(rows: list[dict]) -> list[str]:
    """One line per (device, batch, variant): its median images/s over each baseline's, in this run."""
    import statistics

    med: dict[tuple, float] = {}
    for r in rows:
        if r.get("stage") == "train_step" and r.get("status") == "ok":
            name, batch = r["variant"].rsplit(" b=", 1)
            med.setdefault((r["device"], batch, name), []).append(r["images_per_s"])
    med = {k: statistics.median(v) for k, v in med.items()}
    lines = []
    for (device, batch, name), v in sorted(med.items()):
        against = [
            f"{v / med[(device, batch, b)]:.2f}× {b} ({med[(device, batch, b)]:.0f})"
            for b in BASELINES
            if b != name and (device, batch, b) in med
        ]
        if against:
            lines.append(f"train_step {device} batch {batch}: {name} {v:.0f} images/s = " + ", ".join(against))
    return lines


__all__ = ["VARIANTS", "race", "ratios"]
