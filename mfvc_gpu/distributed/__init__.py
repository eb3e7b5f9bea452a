"""Scale-out on Dask: the stages after training on a cluster of GPU (dask-cuda) or CPU workers.

What runs where (``fit_distributed``)
-------------------------------------
* train: not on Dask. The β-VAE trains in the client process on one device, or beforehand on
  several GPUs with PyTorch DDP (``torchrun ... -m mfvc_gpu.distributed.ddp``, see :mod:`mfvc_gpu.distributed.ddp`).
* scatter: the weights go to every worker once (``client.scatter(..., broadcast=True)``); the
  image partitions go round-robin, one partition to one worker.
* encode: each worker rebuilds the network once and encodes its partitions in batches on its
  own GPU (dask-cuda gives every worker one GPU) or CPU (one thread per task). The codes stay on
  the workers as one Dask array, CuPy-backed when the workers run cuML.
* umap_fit: UMAP on a random sample of at most ``sample_size`` codes, on one worker.
* umap_transform: every partition through that model, in parallel: ``cuml.dask.manifold.UMAP
  (model=...)`` on GPUs, ``map_blocks`` over umap-learn's ``transform`` (in batches) on CPUs.
  The sample's own rows keep the coordinates the fit gave them. With ``out_of_sample='map'`` instead:
  map_fit (the learned map trained on the sample, on the client) and map_transform (every row through
  the map on its worker's device); ``'auto'`` (the default) is UMAP's transform here.
* kmeans: ``cuml.dask.cluster.KMeans`` on GPUs, ``dask_ml.cluster.KMeans`` on CPUs: Lloyd's
  iterations over every row on the workers, started from scikit-learn's K-Means (``n_init``
  restarts) on the sample's embedding, so the restarts cost ``sample_size`` rows, not all of them.
* gather: labels, embedding and codes come back to the client (the run folder needs them).

Every stage runs under a timeout and a task-stream recorder: ``est.distributed_`` says which
worker ran how many tasks of each stage, and each worker's peak memory. A task that raises
surfaces as :class:`MFVCError` naming the stage and the worker; a stage that outlives
``timeout`` seconds raises one too, never a hang.
"""

from __future__ import annotations

from .connect import connect, disconnect
from .runner import run_on_partitions
from .tasks import StageFailed, on_worker


def fit_distributed(est, X, *args, **kwargs):
    """Fit the :class:`~mfvc_gpu.MFVC` estimator ``est`` on images ``X``, every stage after training on Dask;
    the same as ``est.fit_distributed(X, cluster="local", n_workers=None, *, model=None, sample_size=20_000,
    partition_rows=None, batch_size=1024, timeout=900.0)``. Returns ``est``.

    Parameters
    ----------
    est : MFVC
        Its settings are used as by ``est.fit``; K-Means only, with UMAP or no manifold stage.
    cluster : "local", "local-cuda", a scheduler address, or a ``dask.distributed.Client``
        Where to run (see :func:`connect`). A cluster started here is closed at the end.
    n_workers : int or None
        Workers to start (local clusters) or to wait for (an address).
    model : BetaVAE or None
        Trained weights (from ``python -m mfvc_gpu.distributed.ddp``, say); None trains in the client process
        first. With ``encoder="none"`` the pixels are clustered.
    sample_size : int
        Rows UMAP is fitted on, on one worker; they keep the fit's coordinates and every other row
        is transformed. A larger sample gives an embedding closer to a fit on everything, at more
        time and memory on that one worker; with ``sample_size >= len(X)`` nothing is transformed.
    partition_rows : int or None
        Rows per partition (default: two partitions per worker, at most 65 536 rows). Smaller
        partitions bound each worker's memory and balance the load, at more scheduling overhead.
    batch_size : int
        Images per forward pass inside a partition.
    timeout : float
        Seconds any one stage may take before :class:`MFVCError` is raised.

    Sets the fitted attributes ``est.fit`` sets, plus ``distributed_``: the workers, how many tasks
    of each stage each worker ran, seconds per stage, and each worker's peak memory.
    """
    return est.fit_distributed(X, *args, **kwargs)


__all__ = ["connect", "disconnect", "fit_distributed", "run_on_partitions", "on_worker", "StageFailed"]
