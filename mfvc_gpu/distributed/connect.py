"""Connecting to a Dask cluster: a local CPU cluster, dask-cuda's one worker per GPU, or a scheduler."""

from __future__ import annotations

import os

from ..errors import MFVCError
from ..optional import DASK_HINT, RAPIDS_HINT, require


def import_distributed():
    """``dask.distributed``, or :class:`MFVCError` with the install hint."""
    return require("distributed", "the Dask path", DASK_HINT)


def connect(cluster: str = "local", n_workers: int | None = None, *, timeout: float = 120.0):
    """A ``dask.distributed.Client`` on ``cluster``.

    ``"local"``: a ``LocalCluster`` of ``n_workers`` processes (default: one per CPU core), one
    thread each. ``"local-cuda"``: dask-cuda's ``LocalCUDACluster``, one worker per GPU
    (``n_workers`` takes the first N GPUs). Anything else is a scheduler address
    (``tcp://HOST:8786``); with ``n_workers`` it waits for that many workers. A cluster started
    here is closed by :func:`disconnect`; an existing one is left running.
    """
    distributed = import_distributed()
    if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
        raise MFVCError(f"n_workers={n_workers!r} must be a positive integer")
    if cluster == "local":
        from .tasks import cores_per_process

        w = n_workers or (os.cpu_count() or 1)
        share = str(cores_per_process(w))  # each worker's torch / OpenMP / numba threads: its share of the cores
        lc = distributed.LocalCluster(
            n_workers=w,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env={"NUMBA_NUM_THREADS": share, "OMP_NUM_THREADS": share, "MFVC_THREADS": share},
        )
    elif cluster == "local-cuda":
        LocalCUDACluster = require("dask_cuda", "--dask-cluster local-cuda", RAPIDS_HINT).LocalCUDACluster
        try:
            lc = LocalCUDACluster(n_workers=n_workers, threads_per_worker=1)
        except Exception as exc:  # noqa: BLE001 - NVML and CUDA errors have no common base class
            raise MFVCError(
                f"--dask-cluster local-cuda could not start ({type(exc).__name__}: {exc}); it needs NVIDIA "
                f"GPUs with a driver; use --dask-cluster local on CPUs, or {RAPIDS_HINT}"
            ) from exc
    else:
        if ":" not in cluster:
            raise MFVCError(
                f"cluster={cluster!r} is not 'local', 'local-cuda' or a scheduler address such as tcp://HOST:8786"
            )
        try:
            client = distributed.Client(cluster, timeout=timeout)
            if n_workers:
                client.wait_for_workers(n_workers, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise MFVCError(
                f"cannot use the Dask scheduler at {cluster} ({exc}); start it with 'dask scheduler' and its "
                f"workers with 'dask worker {cluster}' (or 'dask cuda worker {cluster}' on GPU machines)"
            ) from exc
        client._mfvc_owned = None
        return client
    client = distributed.Client(lc, timeout=timeout)
    client._mfvc_owned = lc
    return client


def disconnect(client) -> None:
    """Close ``client``, and the local cluster :func:`connect` started for it."""
    owned = getattr(client, "_mfvc_owned", None)
    client.close()
    if owned is not None:
        owned.close()


__all__ = ["connect", "disconnect", "import_distributed"]
