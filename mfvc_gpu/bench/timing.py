"""The timing protocol: warm-up, repeats, the device synchronised before every clock read, medians.

Every timed call goes through :func:`measure`:

1. ``warmup`` untimed calls first (JIT compilation, CUDA context, caches); the runner does this
   once per setting, at the first size it meets, so later sizes are not charged for it again;
2. ``repeats`` timed calls, each: ``setup()`` (untimed, e.g. a fresh model), reset of the GPU
   peak counter, ``sync()``, clock, the call, ``sync()``, clock;
3. per call: the seconds, the process's peak host RSS so far, and on CUDA the peak memory torch
   allocated during the call and the memory in use on the device afterwards.

``sync`` waits for queued GPU work (torch and CuPy/cuML) so the clock measures finished work,
not launched work; on the CPU it does nothing.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mfvc_gpu import interrupts

Clock = Callable[[], float]


def _noop() -> None:
    return None


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, in MiB (``getrusage``; never decreases)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def device_sync(device: str) -> Callable[[], None]:
    """The function run right before every clock read: waits for all queued work on ``device``.

    On CUDA: ``torch.cuda.synchronize`` (every stream of the device, hence cuML's too) and, when
    CuPy is loaded, its current stream. On the CPU: nothing to wait for.
    """
    if not str(device).startswith("cuda"):
        return _noop

    def sync() -> None:
        import torch

        torch.cuda.synchronize(device)
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            cupy.cuda.get_current_stream().synchronize()

    return sync


class GpuMemory:
    """Peak memory torch allocated on a CUDA device during a call, and what the device has in use.

    ``max_allocated_mb`` covers torch's allocator only; cuML and CuPy allocate outside it, so
    ``used_mb`` (device total minus free, read after the call) is the number that includes them.
    """

    def __init__(self, device: str) -> None:
        self.device = device

    def reset(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> tuple[float, float]:
        import torch

        free, total = torch.cuda.mem_get_info(self.device)
        return torch.cuda.max_memory_allocated(self.device) / 2**20, (total - free) / 2**20


@dataclass
class Measurement:
    """What :func:`measure` saw: one entry per timed call."""

    seconds: list[float]
    results: list[Any] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    gpu_max_alloc_mb: list[float | None] = field(default_factory=list)
    gpu_used_mb: list[float | None] = field(default_factory=list)
    warmup_seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(statistics.median(self.seconds))

    @property
    def min(self) -> float:
        return float(min(self.seconds))


def measure(
    fn: Callable,
    *,
    repeats: int = 3,
    warmup: int = 1,
    setup: Callable[[], Any] | None = None,
    sync: Callable[[], None] = _noop,
    clock: Clock = time.perf_counter,
    gpu: GpuMemory | None = None,
    keep_results: bool = True,
) -> Measurement:
    """Time ``fn`` (called as ``fn()``, or ``fn(setup())`` when ``setup`` is given).

    ``setup`` runs before every call, outside the clock. ``sync`` runs right before each clock
    read. With ``keep_results`` every timed call's return value is kept (to score its quality
    after the clock stopped).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r}: at least one timed call is needed")
    if warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be >= 0")
    m = Measurement(seconds=[])
    for _ in range(warmup):
        arg = setup() if setup is not None else None
        sync()
        t0 = clock()
        fn() if setup is None else fn(arg)
        sync()
        m.warmup_seconds.append(clock() - t0)
    for _ in range(repeats):
        arg = setup() if setup is not None else None
        if gpu is not None:
            gpu.reset()
        sync()
        t0 = clock()
        out = fn() if setup is None else fn(arg)
        sync()
        m.seconds.append(clock() - t0)
        m.peak_rss_mb.append(peak_rss_mb())
        alloc, used = gpu.read() if gpu is not None else (None, None)
        m.gpu_max_alloc_mb.append(alloc)
        m.gpu_used_mb.append(used)
        if keep_results:
            m.results.append(out)
        del out
    return m


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None: leave as is); the old count is restored."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _row(case, rep=None, **values) -> dict:
    row = dict(
        stage=case.stage,
        backend=case.backend,
        device=case.device,
        library=case.library,
        variant=case.variant,
        baseline=case.baseline,
        dataset=case.dataset,
        n_samples=case.n_samples,
        n_features=case.n_features,
        rep=rep,
        seconds=None,
        status=case.status,
        note=case.note,
    )
    row.update(values)
    return row


def run_cases(
    cases, *, repeats: int = 3, warmup: int = 1, clock: Clock = time.perf_counter, progress: bool = True
) -> list[dict]:
    """Time every case: one row per timed call (``rep`` 1..repeats), or one row when it did not run.

    The first case of each setting (stage, backend, device, library, variant, code path) gets
    ``warmup`` untimed calls; later sizes of the same setting reuse that warm state. A case that raises
    gives one row with ``status="error"`` and the message; the others still run.
    """
    from tqdm.auto import tqdm

    rows: list[dict] = []
    warmed: set = set()
    bar = tqdm(cases, desc="bench", unit="case", disable=not progress, dynamic_ncols=True)
    for case in bar:
        interrupts.check()  # a safe point between cases
        bar.set_description(case.label)
        if case.status != "ok":
            rows.append(_row(case))
            continue
        try:
            if case.prepare is not None:
                case.prepare()
            on_gpu = str(case.device).startswith("cuda")
            with torch_threads(case.threads):
                m = measure(
                    case.run,
                    repeats=repeats,
                    warmup=0 if case.key in warmed else warmup,
                    setup=case.setup,
                    sync=device_sync(case.device),
                    clock=clock,
                    gpu=GpuMemory(case.device) if on_gpu else None,
                )
            warmed.add(case.key)
            for i, seconds in enumerate(m.seconds):
                extra = case.score(m.results[i], seconds) if case.score is not None else {}
                rows.append(
                    _row(
                        case,
                        i + 1,
                        seconds=seconds,
                        peak_rss_mb=m.peak_rss_mb[i],
                        gpu_max_alloc_mb=m.gpu_max_alloc_mb[i],
                        gpu_used_mb=m.gpu_used_mb[i],
                        warmup_s=sum(m.warmup_seconds) or None,
                        **extra,
                    )
                )
            bar.set_postfix(median=f"{m.median:.3g}s")
        except Exception as exc:  # one broken case must not lose the others' timings
            rows.append(_row(case, status="error", note=f"{type(exc).__name__}: {exc}"))
        finally:
            if case.cleanup is not None:
                case.cleanup()
    return rows


__all__ = ["measure", "Measurement", "device_sync", "GpuMemory", "peak_rss_mb", "run_cases", "torch_threads"]
