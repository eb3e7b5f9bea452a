"""Running one Dask stage: under a timeout, with a task-stream record, failures named by worker."""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

import numpy as np

from ..errors import MFVCError
from .tasks import StageFailed


def _stage_error(stage: str, exc: BaseException, records: list[dict], timeout: float) -> MFVCError:
    what = {
        "scatter": "check that every worker can be reached and has memory for its partitions",
        "encode": "check that the workers run the same mfvc_gpu and torch as the client, and lower "
        "partition_rows if they run out of memory",
        "umap_fit": "lower sample_size if the fitting worker runs out of memory",
        "umap_transform": "lower partition_rows if the workers run out of memory",
        "kmeans": "check the workers' logs (client.get_worker_logs())",
    }.get(stage, "check the workers' logs (client.get_worker_logs())")
    if isinstance(exc, (FuturesTimeout, TimeoutError)):
        busy = sorted({t.get("worker", "?") for t in records}) or ["no worker started a task"]
        return MFVCError(
            f"the {stage} stage did not finish within {timeout:.0f} s (workers with tasks: {', '.join(busy)}); "
            f"raise the timeout, add workers, or {what}"
        )
    if isinstance(exc, StageFailed):
        return MFVCError(f"the {stage} stage failed on worker {exc.args[1]}: {exc.args[2]}; {what}")
    if type(exc).__name__ == "KilledWorker":
        return MFVCError(
            f"the {stage} stage lost its workers ({exc}): a worker process died, often out of memory; {what}"
        )
    erred = sorted({t.get("worker", "?") for t in records if t.get("status") == "error"})
    where = f"on worker {', '.join(erred)}" if erred else "on the cluster"
    return MFVCError(f"the {stage} stage failed {where}: {type(exc).__name__}: {exc}; {what}")


class StageRunner:
    """Runs stages under a timeout and records, per stage, the seconds and each worker's tasks."""

    def __init__(self, client, timeout: float) -> None:
        self.client, self.timeout = client, float(timeout)
        self.stages: dict[str, dict] = {}

    def __call__(self, stage: str, fn):
        from distributed import get_task_stream

        t0, error, out = time.perf_counter(), None, None
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"mfvc-{stage}")
        with self.client.as_current(), get_task_stream(self.client) as ts:
            fut = pool.submit(contextvars.copy_context().run, fn)
            try:
                out = fut.result(timeout=self.timeout)
            except BaseException as exc:  # noqa: BLE001 - mapped to MFVCError below
                error = exc
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        records = list(ts.data)
        if error is not None:
            if isinstance(error, (MFVCError, KeyboardInterrupt)):
                raise error
            raise _stage_error(stage, error, records, self.timeout) from error
        per_worker: dict[str, dict] = {}
        for t in records:
            w = per_worker.setdefault(t.get("worker", "?"), {"tasks": 0, "busy_s": 0.0})
            w["tasks"] += 1
            w["busy_s"] += sum(s["stop"] - s["start"] for s in t.get("startstops", ()) if s.get("action") == "compute")
        for w in per_worker.values():
            w["busy_s"] = round(w["busy_s"], 4)
        self.stages[stage] = {"seconds": time.perf_counter() - t0, "workers": per_worker}
        return out


def run_on_partitions(
    client, stage: str, fn, partitions: list, *args, timeout: float = 600.0, run: StageRunner | None = None
):
    """Run ``fn(partition, *args)`` on the worker that holds each partition future; gather the results.

    ``fn`` should be decorated with :func:`on_worker` so that failures name their worker.
    """
    run = run or StageRunner(client, timeout)
    return run(stage, lambda: client.gather([client.submit(fn, p, *args, pure=False) for p in partitions]))


def to_numpy(a) -> np.ndarray:
    """A NumPy array from a NumPy, CuPy or Dask array (a Dask array is computed first)."""
    if hasattr(a, "dask"):
        a = a.compute()
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)


def settle(futures: list) -> None:
    """Wait for ``futures``; raise the first task error as soon as it arrives (not after the rest)."""
    from distributed import as_completed

    for f in as_completed(futures):
        if f.status == "error":
            raise f.exception()
        if f.status == "cancelled":
            raise RuntimeError(f"task {f.key} was cancelled (its worker left or the client closed)")


__all__ = ["StageRunner", "run_on_partitions", "to_numpy", "settle"]
