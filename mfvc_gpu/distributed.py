"""Scale-out on Dask: the stages after training on a cluster of GPU (dask-cuda) or CPU workers.

What runs where (``fit_distributed``)
-------------------------------------
* train: not on Dask. The β-VAE trains in the client process on one device, or beforehand on
  several GPUs with PyTorch DDP (``torchrun ... -m mfvc_gpu.ddp``, see :mod:`mfvc_gpu.ddp`).
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

import contextvars
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import dask_tasks as tasks
from .dask_tasks import StageFailed, on_worker
from .errors import MFVCError

log = logging.getLogger(__name__)

DASK_HINT = "install the Dask extra: pip install 'mfvc_gpu[dask]'"
DASK_CUDA_HINT = "dask-cuda comes with RAPIDS: 'conda env create -f environment.yml', or use the container"


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise MFVCError(f"the Dask path needs dask.distributed, which is not installed; {DASK_HINT}") from exc
    return distributed


def connect(cluster: str = "local", n_workers: int | None = None, *, timeout: float = 120.0):
    """A ``dask.distributed.Client`` on ``cluster``.

    ``"local"``: a ``LocalCluster`` of ``n_workers`` processes (default: one per CPU core), one
    thread each. ``"local-cuda"``: dask-cuda's ``LocalCUDACluster``, one worker per GPU
    (``n_workers`` takes the first N GPUs). Anything else is a scheduler address
    (``tcp://HOST:8786``); with ``n_workers`` it waits for that many workers. A cluster started
    here is closed by :func:`disconnect`; an existing one is left running.
    """
    distributed = _import_distributed()
    if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
        raise MFVCError(f"n_workers={n_workers!r} must be a positive integer")
    if cluster == "local":
        lc = distributed.LocalCluster(
            n_workers=n_workers or (os.cpu_count() or 1), threads_per_worker=1, processes=True,
            dashboard_address=None, env={"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        )
    elif cluster == "local-cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise MFVCError(f"--dask-cluster local-cuda needs dask-cuda, which is not installed; {DASK_CUDA_HINT}") from exc
        lc = LocalCUDACluster(n_workers=n_workers, threads_per_worker=1)
    else:
        if ":" not in cluster:
            raise MFVCError(f"cluster={cluster!r} is not 'local', 'local-cuda' or a scheduler address such as tcp://HOST:8786")
        try:
            client = distributed.Client(cluster, timeout=timeout)
            if n_workers:
                client.wait_for_workers(n_workers, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise MFVCError(f"cannot use the Dask scheduler at {cluster} ({exc}); start it with 'dask scheduler' and its "
                            f"workers with 'dask worker {cluster}' (or 'dask cuda worker {cluster}' on GPU machines)") from exc
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


def _stage_error(stage: str, exc: BaseException, records: list[dict], timeout: float) -> MFVCError:
    what = {
        "scatter": "check that every worker can be reached and has memory for its partitions",
        "encode": "check that the workers run the same mfvc_gpu and torch as the client, and lower partition_rows if they run out of memory",
        "umap_fit": "lower sample_size if the fitting worker runs out of memory",
        "umap_transform": "lower partition_rows if the workers run out of memory",
        "kmeans": "check the workers' logs (client.get_worker_logs())",
    }.get(stage, "check the workers' logs (client.get_worker_logs())")
    if isinstance(exc, (FuturesTimeout, TimeoutError)):
        busy = sorted({t.get("worker", "?") for t in records}) or ["no worker started a task"]
        return MFVCError(f"the {stage} stage did not finish within {timeout:.0f} s (workers with tasks: {', '.join(busy)}); "
                         f"raise the timeout, add workers, or {what}")
    if isinstance(exc, StageFailed):
        return MFVCError(f"the {stage} stage failed on worker {exc.args[1]}: {exc.args[2]}; {what}")
    if type(exc).__name__ == "KilledWorker":
        return MFVCError(f"the {stage} stage lost its workers ({exc}): a worker process died, often out of memory; {what}")
    erred = sorted({t.get("worker", "?") for t in records if t.get("status") == "error"})
    where = f"on worker {', '.join(erred)}" if erred else "on the cluster"
    return MFVCError(f"the {stage} stage failed {where}: {type(exc).__name__}: {exc}; {what}")


class _Run:
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


def run_on_partitions(client, stage: str, fn, partitions: list, *args, timeout: float = 600.0, run: _Run | None = None):
    """Run ``fn(partition, *args)`` on the worker that holds each partition future; gather the results.

    ``fn`` should be decorated with :func:`on_worker` so that failures name their worker.
    """
    run = run or _Run(client, timeout)
    return run(stage, lambda: client.gather([client.submit(fn, p, *args, pure=False) for p in partitions]))


def _placement(est, probe: dict) -> tuple[str, str]:
    """(worker device, backend) from the estimator's settings and what the workers have."""
    gpus = bool(probe) and all(p["cuda"] for p in probe.values())
    rapids = gpus and all(p["rapids"] for p in probe.values())
    device = est.device
    if device.startswith("cuda") and not gpus:
        raise MFVCError(f"device={device!r} but not every Dask worker sees a CUDA GPU; use --device cpu or GPU workers")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise MFVCError(f"device={device!r} is not one of auto, cpu, cuda, cuda:N")
    on_gpu = device != "cpu" and gpus
    worker_device = "cuda" if on_gpu else "cpu"  # a dask-cuda worker sees its own GPU as cuda:0
    if est.backend == "rapids" and not (on_gpu and rapids):
        raise MFVCError("backend='rapids' but not every Dask worker has a CUDA GPU with cuML; use --backend cpu")
    if est.backend not in ("auto", "cpu", "rapids"):
        raise MFVCError(f"backend={est.backend!r} is not one of auto, cpu, rapids")
    backend = "rapids" if est.backend != "cpu" and on_gpu and rapids else "cpu"
    return worker_device, backend


def _to_numpy(a) -> np.ndarray:
    """A NumPy array from a NumPy, CuPy or Dask array (a Dask array is computed first)."""
    if hasattr(a, "dask"):
        a = a.compute()
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)


def _settle(futures: list) -> None:
    """Wait for ``futures``; raise the first task error as soon as it arrives (not after the rest)."""
    from distributed import as_completed

    for f in as_completed(futures):
        if f.status == "error":
            raise f.exception()
        if f.status == "cancelled":
            raise RuntimeError(f"task {f.key} was cancelled (its worker left or the client closed)")


def _local_kmeans(centers, seed: int, gpu: bool = False):
    """The distributed K-Means' centres in a single-process ``KMeans`` (scikit-learn's, or cuML's
    on GPUs), so ``predict`` works after the cluster is gone.

    One Lloyd step on the centres themselves leaves every centre where it is.
    """
    c = np.ascontiguousarray(_to_numpy(centers), dtype=np.float32)
    if gpu:
        from .backends import interop
        from .backends.rapids import import_cuml

        c = interop.import_cupy().asarray(c)
        return import_cuml().KMeans(n_clusters=len(c), init=c, n_init=1, max_iter=1, random_state=seed, output_type="cupy").fit(c)
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=len(c), init=c, n_init=1, max_iter=1, random_state=seed).fit(c)


TRANSFORM_BATCH = 4096  # rows per umap-learn transform call on a CPU worker


def fit_distributed(est, X, cluster="local", n_workers: int | None = None, *, model=None, sample_size: int = 20_000,
                    partition_rows: int | None = None, batch_size: int = 1024, timeout: float = 900.0):
    """Fit the :class:`~mfvc_gpu.MFVC` estimator ``est`` on images ``X``, every stage after training on Dask.

    Parameters
    ----------
    est : MFVC
        Its settings are used as by ``est.fit``; K-Means only, with UMAP or no manifold stage.
    cluster : "local", "local-cuda", a scheduler address, or a ``dask.distributed.Client``
        Where to run (see :func:`connect`). A cluster started here is closed at the end.
    n_workers : int or None
        Workers to start (local clusters) or to wait for (an address).
    model : BetaVAE or None
        Trained weights (from ``python -m mfvc_gpu.ddp``, say); None trains in the client process
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
    t_start = time.perf_counter()
    images = est._prepare(X)
    est._validate(len(images))
    if est.cluster != "kmeans":
        raise MFVCError(f"cluster={est.cluster!r}: the Dask path clusters with K-Means only; use kmeans or leave out --dask-cluster")
    if est.manifold not in ("umap", "none"):
        raise MFVCError(f"manifold={est.manifold!r}: the Dask path runs UMAP or no manifold stage; leave out --dask-cluster for {est.manifold}")
    if not isinstance(sample_size, int) or sample_size <= est.n_neighbors:
        raise MFVCError(f"sample_size={sample_size!r} must be an integer above n_neighbors ({est.n_neighbors})")
    if partition_rows is not None and (not isinstance(partition_rows, int) or partition_rows < 1):
        raise MFVCError(f"partition_rows={partition_rows!r} must be a positive integer")
    if model is not None and est.encoder != "vae":
        raise MFVCError("a trained model was given but encoder='none'; use encoder='vae'")
    _import_distributed()
    own = isinstance(cluster, str)
    t0 = time.perf_counter()
    client = connect(cluster, n_workers, timeout=min(timeout, 120.0)) if own else cluster
    t_connect = time.perf_counter() - t0
    try:
        job = _DaskFit(est, images, client, cluster if own else "client", _Run(client, timeout))
        job.fit(model, sample_size, partition_rows, batch_size)
    finally:
        if own:
            disconnect(client)
    if own:
        est.timings_["connect"] = t_connect
    est.timings_["total"] = time.perf_counter() - t_start
    return est


class _DaskFit:
    """One distributed fit, stage by stage; fills the estimator's fitted attributes at the end."""

    def __init__(self, est, images: np.ndarray, client, cluster_name: str, run: _Run) -> None:
        self.est, self.images, self.client, self.cluster_name, self.run = est, images, client, cluster_name, run
        self.timings: dict[str, float] = {}

    def fit(self, model, sample_size: int, partition_rows: int | None, batch_size: int) -> None:
        est, client = self.est, self.client
        self.probe()
        model = self.train(model)
        n, w = len(self.images), len(self.workers)
        rows = partition_rows or min(65_536, max(256, math.ceil(n / (2 * w))))
        self.bounds = [(s, min(n, s + rows)) for s in range(0, n, rows)]
        weights, parts = self.run("scatter", lambda: self.scatter(model))
        enc_futs, Z = self.encode(model, weights, parts, batch_size)
        k = est.n_components or est.n_clusters
        m = min(n, sample_size)
        fit_worker = None
        if est.manifold == "umap":
            fitted = self.run("umap_fit", lambda: self.umap_fit(Z, m, k))
            est.manifold_model_ = fitted[2]
            fit_worker = list(client.who_has([fitted[0]]).get(fitted[0].key, ()))
            U = self.run("umap_transform", lambda: self.umap_transform(Z, fitted, k))
            sample_points = fitted[3]
        else:
            est.manifold_model_, U = None, Z
            idx = np.sort(np.random.default_rng(est.random_state).choice(n, m, replace=False)) if m < n else np.arange(n)
            sample_points = Z[idx]
        est.cluster_model_, labels = self.run("kmeans", lambda: self.kmeans(U, sample_points))
        z_host, u_host = self.run("gather", lambda: [_to_numpy(a) for a in client.compute([Z, U], sync=True)])
        memory = self.run("memory", lambda: client.run(tasks.peak_memory))
        for helper in ("memory", "probe"):
            self.run.stages.pop(helper, None)
        who = client.who_has(enc_futs)
        self.finish(labels, z_host, u_host, {
            "partitions": len(self.bounds),
            "partition_rows": rows,
            "encode_partitions_per_worker": {a: sum(a in who.get(f.key, ()) for f in enc_futs) for a in self.workers},
            "umap_sample": m if est.manifold == "umap" else None,
            "umap_fit_worker": fit_worker,
            "kmeans_init": f"scikit-learn KMeans (n_init={est.cluster_config_.n_init}) on the {m}-row sample",
            "stages": self.run.stages,
            "peak_memory": memory,
            "client_peak_memory": tasks.peak_memory(),
        })

    # ------------------------------------------------------------------ stages
    def probe(self) -> None:
        """Which workers there are, and whether they have GPUs and cuML: sets the placement."""
        client = self.client
        self.workers_info, probe = self.run("probe", lambda: (client.scheduler_info(n_workers=-1)["workers"], client.run(tasks.probe)))
        self.workers = sorted(self.workers_info)
        if not self.workers:
            raise MFVCError(f"the Dask cluster at {client.scheduler.address} has no workers; start some with 'dask worker ADDRESS'")
        self.probe_ = probe
        self.device, self.backend = _placement(self.est, probe)
        self.gpu = self.backend == "rapids"
        if not self.gpu:
            try:
                import dask_ml.cluster  # noqa: F401
            except ImportError as exc:
                raise MFVCError(f"the Dask path on CPU workers needs dask-ml, which is not installed; {DASK_HINT}") from exc

    def train(self, model):
        """Train in the client process (Dask is not a training engine), unless ``model`` is given."""
        from . import backends
        from .models import BetaVAE
        from .train import seed_everything, train_vae

        est = self.est
        device = torch.device(backends.resolve(est.device, "cpu").device)
        est.profile_, est.vae_config_, est.train_config_, est.manifold_config_, est.cluster_config_ = est._configs(device.type)
        seed_everything(est.random_state)
        est.history_ = []
        if model is None and est.encoder == "vae":
            log.info("training the β-VAE in the client process: %d epochs on %s", est.train_config_.epochs, device)
            model = BetaVAE(est.vae_config_)
            ckpt = Path(est.checkpoint) if est.checkpoint is not None else None
            t0 = time.perf_counter()
            est.history_ = train_vae(model, self.images, est.train_config_, device, est.random_state, ckpt, est.resume, est.progress)
            self.timings["train"] = time.perf_counter() - t0
        elif model is not None:
            est.vae_config_ = model.cfg
        est.model_ = model
        return model

    def scatter(self, model):
        """The weights once to every worker; the image partitions round-robin, each to one worker."""
        client, w = self.client, len(self.workers)
        weights = None
        if model is not None:
            payload = {"config": asdict(model.cfg), "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
            weights = client.scatter([payload], broadcast=True, hash=False)[0]
        parts = [client.scatter(self.images[s:e], workers=[self.workers[i % w]], hash=False) for i, (s, e) in enumerate(self.bounds)]
        return weights, parts

    def encode(self, model, weights, parts, batch_size: int):
        """One task per partition, on the worker that holds it; the codes as one Dask array."""
        import dask.array as da

        client, w, token = self.client, len(self.workers), uuid.uuid4().hex
        dim = model.cfg.latent_dim if model is not None else int(np.prod(self.images.shape[1:]))
        if self.gpu:
            from .backends import interop

            meta = interop.import_cupy().empty((0, dim), dtype=np.float32)
        else:
            meta = np.empty((0, dim), dtype=np.float32)

        def stage():
            futs = [client.submit(tasks.encode_partition, p, token, weights, self.device, batch_size, self.gpu,
                                  workers=[self.workers[i % w]], allow_other_workers=True, pure=False) for i, p in enumerate(parts)]
            _settle(futs)
            z = da.concatenate([da.from_delayed(f, shape=(e - s, dim), dtype=np.float32, meta=meta) for f, (s, e) in zip(futs, self.bounds)])
            return futs, z, bool(da.isfinite(z).all().compute())

        futs, z, finite = self.run("encode", stage)
        if not finite:
            raise MFVCError("the features contain NaN or infinite values; lower the learning rate or check the input")
        return futs, z

    def umap_fit(self, Z, m: int, k: int):
        """UMAP on ``m`` random rows, on one worker; returns (its future, the rows, the model, their embedding)."""
        est, n = self.est, len(self.images)
        idx = np.sort(np.random.default_rng(est.random_state).choice(n, m, replace=False)) if m < n else np.arange(n)
        sample = self.client.compute(Z[idx])
        f = self.client.submit(tasks.fit_umap, sample, asdict(est.manifold_config_), k, est.random_state, self.gpu, pure=False)
        _settle([f])
        model, embedding = f.result()
        return f, idx, model, embedding

    def umap_transform(self, Z, fitted, k: int):
        """Every partition's embedding, in parallel: rows in the sample keep the fit's coordinates,
        the others go through the fitted model's ``transform``. Persisted on the workers."""
        from operator import getitem

        from distributed import futures_of

        import dask.array as da

        client = self.client
        fit_fut, idx, model, _ = fitted
        emb_fut = client.submit(getitem, fit_fut, 1, pure=False)
        rows_fut = client.scatter(idx, broadcast=True, hash=False)
        if self.gpu:
            from cuml.dask.manifold import UMAP as DaskUMAP

            from .backends import interop

            meta = interop.import_cupy().empty((0, k), dtype=np.float32)
            out = DaskUMAP(model=model, client=client).transform(Z)
            # cuML returns blocks of unknown length under a 1-D signature: give them their rows back
            blocks = out.to_delayed().ravel()
            U = da.concatenate([da.from_delayed(b, shape=(r, k), dtype=np.float32, meta=meta) for b, r in zip(blocks, Z.chunks[0])])
            U = U.map_blocks(tasks.keep_sample_rows, rows_fut, emb_fut, dtype=np.float32, meta=meta)
        else:
            model_fut = client.submit(getitem, fit_fut, 0, pure=False)
            U = Z.map_blocks(tasks.transform_block, model_fut, rows_fut, emb_fut, k, TRANSFORM_BATCH, dtype=np.float32,
                             chunks=(Z.chunks[0], (k,)), meta=np.empty((0, k), dtype=np.float32))
        U = client.persist(U)
        _settle(futures_of(U))
        return U

    def kmeans(self, U, sample_points):
        """Distributed K-Means, seeded with scikit-learn's K-Means (``n_init`` restarts) on the sample.

        Lloyd's iterations over every row run on the workers (cuML's or dask-ml's K-Means); the
        restarts, which decide which local optimum is found, run on the sample's ``m`` rows only.
        Returns (a local model with the final centres, the labels).
        """
        from sklearn.cluster import KMeans

        est = self.est
        cfg = est.cluster_config_
        init = KMeans(n_clusters=est.n_clusters, n_init=cfg.n_init, random_state=est.random_state).fit(
            np.asarray(_to_numpy(sample_points), dtype=np.float32)).cluster_centers_.astype(np.float32)
        if self.gpu:
            from cuml.dask.cluster import KMeans as DaskKMeans

            from .backends.rapids import kmeans_params

            params = kmeans_params(cfg, est.n_clusters, est.random_state)
            params.pop("output_type", None)  # cuML's Dask K-Means sets the output type itself
            params.update(init=init, n_init=1)
            km = DaskKMeans(client=self.client, **params).fit(U)
            return _local_kmeans(km.cluster_centers_, est.random_state, gpu=True), _to_numpy(km.labels_.compute())
        from dask_ml.cluster import KMeans as DaskKMeans

        km = DaskKMeans(n_clusters=est.n_clusters, init=init, random_state=est.random_state).fit(U)
        return _local_kmeans(km.cluster_centers_, est.random_state), np.asarray(km.labels_.compute())

    # ------------------------------------------------------------------ record
    def finish(self, labels, z_host, u_host, record: dict) -> None:
        from . import backends

        est, gpu, w = self.est, self.gpu, len(self.workers)
        est.backend_, est.device_ = self.backend, self.device
        est.placement_note_ = f"Dask: {w} workers ({self.cluster_name}), {'cuML' if gpu else 'umap-learn + dask-ml'}"
        est._backend = backends.get_backend(self.backend)
        est.latent_ = np.ascontiguousarray(z_host, dtype=np.float32)
        est.embedding_ = np.ascontiguousarray(u_host, dtype=np.float32)
        est.labels_ = np.asarray(labels, dtype=np.int64)
        est.n_features_in_ = est.latent_.shape[1]
        est.handoff_ = {"backend": self.backend, "source": "dask", "array": "cupy" if gpu else "numpy", "partitions": len(self.bounds),
                        "note": "the codes stay on the workers between stages; only the UMAP sample moves to the fitting "
                                "worker, and codes, embedding and labels come back to the client at the end"}
        self.timings.update({s: r["seconds"] for s, r in self.run.stages.items()})
        est.timings_ = self.timings
        est.distributed_ = {
            "cluster": self.cluster_name,
            "scheduler": self.client.scheduler.address,
            "n_workers": w,
            "workers": {a: {"nthreads": self.workers_info[a].get("nthreads"), "memory_limit": self.workers_info[a].get("memory_limit"),
                            **self.probe_.get(a, {})} for a in self.workers},
            "device": self.device,
            "backend": self.backend,
            "engines": {"umap_fit": "cuml.UMAP" if gpu else "umap.UMAP",
                        "umap_transform": "cuml.dask.manifold.UMAP(model=...)" if gpu else "dask.array.map_blocks(umap.UMAP.transform)",
                        "kmeans": "cuml.dask.cluster.KMeans" if gpu else "dask_ml.cluster.KMeans"},
            **record,
        }


__all__ = ["connect", "disconnect", "fit_distributed", "run_on_partitions", "on_worker", "StageFailed"]
