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
  The sample's own rows keep the coordinates the fit gave them.
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
from .orchestrate import fit_distributed
from .runner import run_on_partitions
from .tasks import StageFailed, on_worker

__all__ = ["connect", "disconnect", "fit_distributed", "run_on_partitions", "on_worker", "StageFailed"]
