"""The Dask path of ``MFVC.fit_distributed``: every stage after training on Dask workers (see
:mod:`mfvc_gpu.distributed`)."""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .. import backends
from ..errors import MFVCError
from ..optional import DASK_HINT, require
from ..resolution import has_map
from . import tasks
from .connect import connect, disconnect, import_distributed
from .runner import StageRunner, settle, to_numpy

log = logging.getLogger(__name__)


TRANSFORM_BATCH = 4096  # rows per umap-learn transform call on a CPU worker


@dataclass
class DaskResult:
    """What a distributed fit produced, for the estimator to keep."""

    latent: np.ndarray
    embedding: np.ndarray
    labels: np.ndarray
    manifold_model: Any
    cluster_model: Any
    timings: dict[str, float]
    handoff: dict
    device: str  # where the workers ran the stages: cuda or cpu
    note: str
    record: dict  # becomes est.distributed_
    embedding_map: Any = None  # the learned map (out_of_sample='map'), trained on the UMAP sample


class DaskJob:
    """One distributed fit: connect (a context manager that closes what it started), :meth:`probe` the
    workers, then :meth:`run` every stage after training. Reads the resolved settings; sets nothing."""

    @staticmethod
    def check(params: dict, sample_size, partition_rows, model) -> None:
        """The Dask arguments, refused before any cluster starts."""
        if not isinstance(sample_size, int) or sample_size <= params["n_neighbors"]:
            raise MFVCError(
                f"sample_size={sample_size!r} must be an integer above n_neighbors ({params['n_neighbors']})"
            )
        if partition_rows is not None and (not isinstance(partition_rows, int) or partition_rows < 1):
            raise MFVCError(f"partition_rows={partition_rows!r} must be a positive integer")
        if model is not None and params["encoder"] != "vae":
            raise MFVCError("a trained model was given but encoder='none'; use encoder='vae'")

    def __init__(self, cluster, n_workers: int | None, timeout: float) -> None:
        self.cluster, self.n_workers, self.timeout = cluster, n_workers, timeout
        self.owned = isinstance(cluster, str)
        self.cluster_name = cluster if self.owned else "client"
        self.connect_seconds = 0.0

    def __enter__(self) -> DaskJob:
        import_distributed()
        t0 = time.perf_counter()
        self.client = (
            connect(self.cluster, self.n_workers, timeout=min(self.timeout, 120.0)) if self.owned else self.cluster
        )
        self.connect_seconds = time.perf_counter() - t0
        self.run_stage = StageRunner(self.client, self.timeout)
        return self

    def __exit__(self, *exc) -> None:
        if self.owned:
            disconnect(self.client)

    def run(
        self, res, images: np.ndarray, model, sample_size: int, partition_rows: int | None, batch_size: int
    ) -> DaskResult:
        """Scatter, encode, UMAP (fit on a sample; the rest through UMAP's transform, or every row through the
        learned map with ``out_of_sample='map'``), K-Means, gather."""
        self.res, self.images, self.timings = res, images, {}
        if not self.gpu:
            require("dask_ml.cluster", "the Dask path on CPU workers", DASK_HINT)
        client = self.client
        n, w = len(images), len(self.workers)
        rows = partition_rows or min(65_536, max(256, math.ceil(n / (2 * w))))
        self.bounds = [(s, min(n, s + rows)) for s in range(0, n, rows)]
        weights, parts = self.run_stage("scatter", lambda: self.scatter(model))
        enc_futs, Z = self.encode(model, weights, parts, batch_size)
        k = res.n_components
        m = min(n, sample_size)
        fit_worker = embedding_map = None
        umap = res.manifold.method == "umap"
        mapped = has_map(res.manifold, res.cluster)  # the one rule (the Dask path runs UMAP or none, K-Means)
        if umap:
            fitted = self.run_stage("umap_fit", lambda: self.umap_fit(Z, m, k))
            manifold_model = fitted[2]
            fit_worker = list(client.who_has([fitted[0]]).get(fitted[0].key, ()))
            sample_points = fitted[3]
            if mapped:  # every row, the sample's too, through the map: one function places them all
                embedding_map = self.run_stage("map_fit", lambda: self.map_fit(Z, fitted))
                U = self.run_stage("map_transform", lambda: self.map_transform(Z, embedding_map, k))
                sample_points = to_numpy(U[fitted[1]].compute())
            else:
                U = self.run_stage("umap_transform", lambda: self.umap_transform(Z, fitted, k))
        else:
            manifold_model, U = None, Z
            idx = np.sort(np.random.default_rng(res.seed).choice(n, m, replace=False)) if m < n else np.arange(n)
            sample_points = Z[idx]
        cluster_model, labels = self.run_stage("kmeans", lambda: self.kmeans(U, sample_points))
        z_host, u_host = self.run_stage("gather", lambda: [to_numpy(a) for a in client.compute([Z, U], sync=True)])
        memory = self.run_stage("memory", lambda: client.run(tasks.peak_memory))
        for helper in ("memory", "probe"):
            self.run_stage.stages.pop(helper, None)
        who = client.who_has(enc_futs)
        self.timings.update({s: r["seconds"] for s, r in self.run_stage.stages.items()})
        return DaskResult(
            latent=np.ascontiguousarray(z_host, dtype=np.float32),
            embedding=np.ascontiguousarray(u_host, dtype=np.float32),
            labels=np.asarray(labels, dtype=np.int64),
            manifold_model=manifold_model,
            cluster_model=cluster_model,
            embedding_map=embedding_map,
            device=self.device,
            timings=self.timings,
            handoff=self.handoff_record(),
            note=f"Dask: {w} workers ({self.cluster_name}), {'cuML' if self.gpu else 'umap-learn + dask-ml'}",
            record=self.record(
                {
                    "partitions": len(self.bounds),
                    "partition_rows": rows,
                    "encode_partitions_per_worker": {
                        a: sum(a in who.get(f.key, ()) for f in enc_futs) for a in self.workers
                    },
                    "umap_sample": m if umap else None,
                    "umap_fit_worker": fit_worker,
                    "kmeans_init": f"scikit-learn KMeans (n_init={res.cluster.n_init}) on the {m}-row sample",
                    "stages": self.run_stage.stages,
                    "peak_memory": memory,
                    "client_peak_memory": tasks.peak_memory(),
                }
            ),
        )

    # ------------------------------------------------------------------ stages
    def probe(self) -> tuple[bool, bool]:
        """Which workers there are: (every worker has a CUDA GPU, every worker has cuML too)."""
        client = self.client
        self.workers_info, probe = self.run_stage(
            "probe", lambda: (client.scheduler_info(n_workers=-1)["workers"], client.run(tasks.probe))
        )
        self.workers = sorted(self.workers_info)
        if not self.workers:
            raise MFVCError(
                f"the Dask cluster at {client.scheduler.address} has no workers; start some with 'dask worker ADDRESS'"
            )
        self.probe_ = probe
        gpus = bool(probe) and all(p["cuda"] for p in probe.values())
        return gpus, gpus and all(p["rapids"] for p in probe.values())

    @property
    def gpu(self) -> bool:
        return self.res.placement.backend == "rapids"

    @property
    def device(self) -> str:
        return "cuda" if self.res.placement.on_gpu else "cpu"  # a dask-cuda worker sees its own GPU as cuda:0

    def scatter(self, model):
        """The weights once to every worker; the image partitions round-robin, each to one worker."""
        client, w = self.client, len(self.workers)
        weights = None
        if model is not None:
            payload = {
                "config": asdict(model.cfg),
                "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            }
            weights = client.scatter([payload], broadcast=True, hash=False)[0]
        parts = [
            client.scatter(self.images[s:e], workers=[self.workers[i % w]], hash=False)
            for i, (s, e) in enumerate(self.bounds)
        ]
        return weights, parts

    def encode(self, model, weights, parts, batch_size: int):
        """One task per partition, on the worker that holds it; the codes as one Dask array."""
        import dask.array as da

        client, w, token = self.client, len(self.workers), uuid.uuid4().hex
        dim = model.cfg.latent_dim if model is not None else int(np.prod(self.images.shape[1:]))
        if self.gpu:
            from ..backends import interop

            meta = interop.import_cupy().empty((0, dim), dtype=np.float32)
        else:
            meta = np.empty((0, dim), dtype=np.float32)

        def stage():
            futs = [
                client.submit(
                    tasks.encode_partition,
                    p,
                    token,
                    weights,
                    self.device,
                    batch_size,
                    self.gpu,
                    workers=[self.workers[i % w]],
                    allow_other_workers=True,
                    pure=False,
                )
                for i, p in enumerate(parts)
            ]
            settle(futs)
            z = da.concatenate(
                [
                    da.from_delayed(f, shape=(e - s, dim), dtype=np.float32, meta=meta)
                    for f, (s, e) in zip(futs, self.bounds)
                ]
            )
            return futs, z, bool(da.isfinite(z).all().compute())

        futs, z, finite = self.run_stage("encode", stage)
        if not finite:
            raise MFVCError("the features contain NaN or infinite values; lower the learning rate or check the input")
        return futs, z

    def umap_fit(self, Z, m: int, k: int):
        """UMAP on ``m`` random rows, on one worker; returns (its future, the rows, the model, their embedding)."""
        res, n = self.res, len(self.images)
        idx = np.sort(np.random.default_rng(res.seed).choice(n, m, replace=False)) if m < n else np.arange(n)
        sample = self.client.compute(Z[idx])
        f = self.client.submit(tasks.fit_umap, sample, asdict(res.manifold), k, res.seed, self.gpu, pure=False)
        settle([f])
        model, embedding = f.result()
        return f, idx, model, embedding

    def umap_transform(self, Z, fitted, k: int):
        """Every partition's embedding, in parallel: rows in the sample keep the fit's coordinates,
        the others go through the fitted model's ``transform``. Persisted on the workers."""
        from operator import getitem

        import dask.array as da
        from distributed import futures_of

        client = self.client
        fit_fut, idx, model, _ = fitted
        emb_fut = client.submit(getitem, fit_fut, 1, pure=False)
        rows_fut = client.scatter(idx, broadcast=True, hash=False)
        if self.gpu:
            from cuml.dask.manifold import UMAP as DaskUMAP

            from ..backends import interop

            meta = interop.import_cupy().empty((0, k), dtype=np.float32)
            out = DaskUMAP(model=model, client=client).transform(Z)
            # cuML returns blocks of unknown length under a 1-D signature: give them their rows back
            blocks = out.to_delayed().ravel()
            U = da.concatenate(
                [da.from_delayed(b, shape=(r, k), dtype=np.float32, meta=meta) for b, r in zip(blocks, Z.chunks[0])]
            )
            U = U.map_blocks(tasks.keep_sample_rows, rows_fut, emb_fut, dtype=np.float32, meta=meta)
        else:
            model_fut = client.submit(getitem, fit_fut, 0, pure=False)
            U = Z.map_blocks(
                tasks.transform_block,
                model_fut,
                rows_fut,
                emb_fut,
                k,
                TRANSFORM_BATCH,
                dtype=np.float32,
                chunks=(Z.chunks[0], (k,)),
                meta=np.empty((0, k), dtype=np.float32),
            )
        U = client.persist(U)
        settle(futures_of(U))
        return U

    def map_fit(self, Z, fitted):
        """The learned map, trained on this process's training device from the UMAP sample's codes to their
        coordinates."""
        import torch

        from ..embedding_map import fit_map

        _, idx, _, embedding = fitted
        codes = self.client.compute(Z[idx], sync=True)
        embedding_map, _, record = fit_map(codes, embedding, self.res.seed, torch.device(self.res.train_device))
        log.info("learned map on the %d-row sample: RMSE %.3f of the spread", len(idx), record["relative_rmse"])
        return embedding_map

    def map_transform(self, Z, embedding_map, k: int):
        """Every partition through the learned map on its worker's device. Persisted on the workers."""
        from distributed import futures_of

        client = self.client
        state = {name: t.detach().cpu().numpy() for name, t in embedding_map.state_dict().items()}
        state_fut = client.scatter([state], broadcast=True, hash=False)[0]  # one future, not one per tensor
        U = Z.map_blocks(tasks.map_block, state_fut, dtype=np.float32, chunks=(Z.chunks[0], (k,)), meta=Z._meta)
        U = client.persist(U)
        settle(futures_of(U))
        return U

    def kmeans(self, U, sample_points):
        """Distributed K-Means, seeded with scikit-learn's K-Means (``n_init`` restarts) on the sample.

        Lloyd's iterations over every row run on the workers (cuML's or dask-ml's K-Means); the
        restarts, which decide which local optimum is found, run on the sample's ``m`` rows only.
        Returns (a local model with the final centres, the labels).
        """
        from sklearn.cluster import KMeans

        res = self.res
        cfg, k, seed = res.cluster, int(res.params["n_clusters"]), res.seed
        init = (
            KMeans(n_clusters=k, n_init=cfg.n_init, random_state=seed)
            .fit(np.asarray(to_numpy(sample_points), dtype=np.float32))
            .cluster_centers_.astype(np.float32)
        )
        if self.gpu:
            from cuml.dask.cluster import KMeans as DaskKMeans

            from ..backends.rapids import kmeans_params

            params = kmeans_params(cfg, k, seed)
            params.pop("output_type", None)  # cuML's Dask K-Means sets the output type itself
            params.update(init=init, n_init=1)
            km = DaskKMeans(client=self.client, **params).fit(U)
            # labels by predict over U, which keeps U's partition order; cuML's labels_ come per worker
            return backends.get_backend("rapids").kmeans_from_centres(km.cluster_centers_, seed), to_numpy(
                km.predict(U)
            )
        from dask_ml.cluster import KMeans as DaskKMeans

        km = DaskKMeans(n_clusters=k, init=init, random_state=seed).fit(U)
        return backends.get_backend("cpu").kmeans_from_centres(to_numpy(km.cluster_centers_), seed), to_numpy(
            km.predict(U)
        )

    # ------------------------------------------------------------------ record
    def handoff_record(self) -> dict:
        return {
            "backend": self.res.placement.backend,
            "source": "dask",
            "array": "cupy" if self.gpu else "numpy",
            "partitions": len(self.bounds),
            "note": "the codes stay on the workers between stages; only the UMAP sample moves to the fitting "
            "worker, and codes, embedding and labels come back to the client at the end",
        }

    def record(self, stages: dict) -> dict:
        gpu, info = self.gpu, self.workers_info
        return {
            "cluster": self.cluster_name,
            "scheduler": self.client.scheduler.address,
            "n_workers": len(self.workers),
            "workers": {
                a: {
                    "nthreads": info[a].get("nthreads"),
                    "memory_limit": info[a].get("memory_limit"),
                    **self.probe_.get(a, {}),
                }
                for a in self.workers
            },
            "device": self.device,
            "backend": self.res.placement.backend,
            "engines": {
                "umap_fit": "cuml.UMAP" if gpu else "umap.UMAP",
                "umap_transform": "cuml.dask.manifold.UMAP(model=...)"
                if gpu
                else "dask.array.map_blocks(umap.UMAP.transform)",
                "map_transform": "dask.array.map_blocks(EmbeddingMap) in torch on each worker's device",
                "kmeans": "cuml.dask.cluster.KMeans" if gpu else "dask_ml.cluster.KMeans",
            },
            **stages,
        }


__all__ = ["DaskJob", "DaskResult"]
