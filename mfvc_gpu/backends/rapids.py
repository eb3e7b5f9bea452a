"""RAPIDS backend: cuML UMAP, K-Means and DBSCAN on CuPy arrays that stay on the GPU.

The encoder's output (a CUDA tensor) reaches cuML through DLPack: the CuPy array cuML receives
starts at the tensor's address. Every cuML estimator is built with ``output_type="cupy"``, so
embeddings and labels stay on the device until :meth:`RapidsBackend.to_numpy` (the edge).

What ``last_handoff`` records (copied into ``MFVC.handoff_`` and ``metrics.json``):

* ``torch_ptr`` / ``cupy_ptr`` / ``same_pointer``: the latent tensor's ``data_ptr()``, the CuPy
  array's ``data.ptr`` and whether they are equal, read at run time.
* ``device_to_host_bytes_before_labels``: the bytes this backend itself copied from the device to
  the host up to the moment the labels exist, with each copy listed in ``device_to_host_copies``.
  It counts the backend's own transfers; copies inside cuML are not visible to it. With the
  environment variable ``MFVC_TRACE_COPIES=1`` every stage also runs under the CUDA profiler
  (CUPTI), and ``cupti_device_to_host`` holds the device→host copies any library made.
* ``knn_build``: the kNN graph build cuML UMAP was told to use. ``nn_descent`` makes cuML stage
  the input in host memory, so only ``brute_force_knn`` (the default) keeps the input on the device.

Isomap and Gaussian mixtures have no cuML implementation: they run on the CPU (umap-learn's
sibling libraries), with a warning, and the stage is listed in ``cpu_fallback`` and its copies counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import MFVCError
from ..optional import RAPIDS_HINT, require
from ..settings import ClusterConfig, ManifoldConfig
from . import interop

log = logging.getLogger(__name__)

# --knn value -> cuML UMAP's build_algo
KNN_BUILDS = {"brute": "brute_force_knn", "nn-descent": "nn_descent"}
NN_DESCENT_METRICS = ("euclidean", "cosine")  # cuML's nn_descent on dense input


def umap_params(cfg: ManifoldConfig, n_components: int, seed: int) -> dict:
    """Keyword arguments for ``cuml.UMAP``: the CPU backend's settings under cuML's names.

    ``knn`` picks ``build_algo`` explicitly (never cuML's "auto", which switches to nn_descent
    above 50 000 rows when no seed is given), so the build that runs is the one recorded.
    """
    if cfg.knn not in KNN_BUILDS:
        raise MFVCError(f"knn={cfg.knn!r} is not one of {', '.join(KNN_BUILDS)}")
    if cfg.knn == "nn-descent" and cfg.metric not in NN_DESCENT_METRICS:
        raise MFVCError(
            f"metric={cfg.metric!r} with knn='nn-descent': cuML's nn-descent supports only "
            f"{', '.join(NN_DESCENT_METRICS)}; use knn='brute' or one of those metrics"
        )
    return dict(
        n_neighbors=int(cfg.n_neighbors),
        min_dist=float(cfg.min_dist),
        n_components=int(n_components),
        metric=cfg.metric,
        random_state=int(seed),
        build_algo=KNN_BUILDS[cfg.knn],
        output_type="cupy",
    )


def kmeans_params(cfg: ClusterConfig, n_clusters: int, seed: int) -> dict:
    """Keyword arguments for ``cuml.KMeans`` (same restarts and seed as scikit-learn's on the CPU)."""
    return dict(n_clusters=int(n_clusters), n_init=int(cfg.n_init), random_state=int(seed), output_type="cupy")


def dbscan_params(cfg: ClusterConfig) -> dict:
    """Keyword arguments for ``cuml.DBSCAN``."""
    return dict(eps=float(cfg.eps), min_samples=int(cfg.min_samples), output_type="cupy")


def import_cuml():
    """Import cuML, or raise :class:`MFVCError` naming the fix (and the import error, if it failed)."""
    return require("cuml", "backend 'rapids'", RAPIDS_HINT)


_RMM_FOR_TORCH = False  # set once per process: PyTorch's allocator can be swapped only before its first allocation


def share_gpu_memory(mode: str) -> None:
    """Before the network touches the GPU. ``"rmm"``: PyTorch and CuPy allocate from RMM, the pool
    cuML uses, so the stages draw from one pool instead of two caches that cannot see each other."""
    global _RMM_FOR_TORCH
    if mode != "rmm" or _RMM_FOR_TORCH:
        return
    import torch

    rmm_torch = require("rmm.allocators.torch", "gpu_memory='rmm'", RAPIDS_HINT)
    rmm_cupy = require("rmm.allocators.cupy", "gpu_memory='rmm'", RAPIDS_HINT)
    if rmm_torch.rmm_torch_allocator is None:
        raise MFVCError(
            "gpu_memory='rmm' needs a CUDA GPU (RMM builds its PyTorch allocator only where torch sees one); "
            "use gpu_memory='release'"
        )
    try:
        torch.cuda.memory.change_current_allocator(rmm_torch.rmm_torch_allocator)
    except RuntimeError as exc:
        raise MFVCError(
            f"gpu_memory='rmm': PyTorch has already allocated GPU memory in this process ({exc}); "
            "choose it before any CUDA work, or use gpu_memory='release'"
        ) from exc
    interop.import_cupy().cuda.set_allocator(rmm_cupy.rmm_cupy_allocator)
    _RMM_FOR_TORCH = True


def release_torch_cache(mode: str, device) -> None:
    """``"release"``: hand PyTorch's cached, unused GPU blocks back to the driver before cuML allocates."""
    if mode == "release":
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


class OnHost:
    """A CPU model standing in for a stage cuML lacks (Isomap, Gaussian mixtures)."""

    def __init__(self, model: Any) -> None:
        self.model = model


class RapidsBackend:
    """Every stage after the encoder on the GPU with cuML; arrays are CuPy float32 inside.

    Parameters
    ----------
    trace_copies : bool or None
        Also measure every device→host copy with CUPTI (``torch.profiler``); slower. None reads
        the environment variable ``MFVC_TRACE_COPIES`` ("1" turns it on).
    """

    name = "rapids"

    def __init__(self, trace_copies: bool | None = None) -> None:
        if trace_copies is None:
            trace_copies = os.environ.get("MFVC_TRACE_COPIES", "") == "1"
        self.trace_copies = bool(trace_copies)
        self.last_handoff: dict = {}
        self._device_id: int | None = None

    # ------------------------------------------------------------ bookkeeping
    @contextlib.contextmanager
    def _device(self) -> Iterator[None]:
        """Run on the GPU that holds the data (cuML works on CuPy's current device)."""
        if self._device_id is None:
            yield
            return
        cupy = interop.import_cupy()
        with cupy.cuda.Device(self._device_id):
            yield

    @contextlib.contextmanager
    def _traced(self, stage: str) -> Iterator[None]:
        if not self.trace_copies:
            yield
            return
        rec: dict = {}
        with interop.trace_device_to_host(rec):
            yield
        # new containers, never in-place updates: MFVC.handoff_ keeps a shallow snapshot
        self.last_handoff["cupti_device_to_host"] = {**self.last_handoff.get("cupti_device_to_host", {}), stage: rec}

    def _count_d2h(self, what: str, nbytes: int) -> None:
        h = self.last_handoff
        h["device_to_host_copies"] = [*h.get("device_to_host_copies", []), {"what": what, "bytes": int(nbytes)}]
        h["device_to_host_bytes"] = h.get("device_to_host_bytes", 0) + int(nbytes)

    def _to_host(self, a, what: str) -> np.ndarray:
        if interop.is_cupy(a):
            out = a.get()
            self._count_d2h(what, out.nbytes)
            return out
        if hasattr(a, "detach"):
            t = a.detach()
            if t.device.type != "cpu":
                self._count_d2h(what, t.element_size() * t.nelement())
            return t.cpu().numpy()
        return np.asarray(a)

    def _to_device(self, a):
        cupy = interop.import_cupy()
        host = np.ascontiguousarray(a)
        with self._device():
            out = cupy.asarray(host)
        self.last_handoff["host_to_device_bytes"] = self.last_handoff.get("host_to_device_bytes", 0) + host.nbytes
        return out

    # ------------------------------------------------------------ the contract
    def handoff(self, z):
        """The latent codes as a C-contiguous float32 CuPy array; a CUDA tensor is not copied.

        Accepts a torch tensor (CUDA: DLPack view; CPU: copied to the device), a CuPy array, a
        cuDF frame or a NumPy array. Resets and fills :attr:`last_handoff`.
        """
        self.last_handoff = {}
        with self._traced("handoff"):
            arr, info = interop.to_cupy_float32(z)
        cupti = self.last_handoff.get("cupti_device_to_host")
        self._device_id = int(arr.device.id)
        on_torch = info["source"].startswith("torch.")
        self.last_handoff = {
            "backend": self.name,
            "source": info["source"],
            "torch_ptr": info["input_ptr"] if on_torch else None,
            "input_ptr": info["input_ptr"],
            "cupy_ptr": info["array_ptr"],
            "same_pointer": info["input_ptr"] == info["array_ptr"],
            "device_copy": bool(info["device_copy"]),
            "shape": [int(s) for s in arr.shape],
            "dtype": str(arr.dtype),
            "gpu": self._device_id,
            "host_to_device_bytes": int(info["host_to_device_bytes"]),
            "device_to_host_bytes": 0,
            "device_to_host_copies": [],
            "device_to_host_bytes_before_labels": None,
            "knn_build": None,
            "cpu_fallback": [],
        }
        if cupti is not None:
            self.last_handoff["cupti_device_to_host"] = cupti
        if on_torch and not self.last_handoff["same_pointer"]:
            log.warning(
                "the latent tensor was not contiguous float32 (%s): it was copied once on the device", info["source"]
            )
        return arr

    def all_finite(self, x) -> bool:
        """True when ``x`` holds no NaN or infinity; checked on the device (one byte comes back)."""
        if not interop.is_cupy(x):
            return bool(np.isfinite(np.asarray(x)).all())
        cupy = interop.import_cupy()
        with self._device(), self._traced("finite_check"):
            ok = bool(cupy.isfinite(x).all())
        self._count_d2h("finite check: one bool", 1)
        return ok

    def to_numpy(self, a) -> np.ndarray:
        """A NumPy copy of ``a`` (the edge: labels and embeddings out); counted in ``device_to_host_bytes``."""
        return self._to_host(a, "to_numpy")

    def fit_manifold(self, x, cfg: ManifoldConfig, n_components: int, seed: int):
        """Fit cuML UMAP (or Isomap on the CPU); returns (model, embedding as CuPy float32)."""
        if cfg.method == "none":
            return None, x
        if cfg.method == "isomap":
            return self._on_cpu("manifold", "isomap", x, lambda cpu, h: cpu.fit_manifold(h, cfg, n_components, seed))
        if cfg.method != "umap":
            raise MFVCError(f"manifold={cfg.method!r} is not one of umap, isomap, none")
        cuml = import_cuml()
        cupy = interop.import_cupy()
        params = umap_params(cfg, n_components, seed)
        self.last_handoff.update(knn_build=params["build_algo"], cuml_version=str(cuml.__version__))
        if params["build_algo"] == "nn_descent":
            log.warning("knn='nn-descent': cuML stages the UMAP input in host memory, so the handoff is not zero-copy")
            self.last_handoff["input_staged_on_host_by_cuml"] = True
        with self._device(), self._traced("manifold"):
            model = cuml.UMAP(**params)
            emb = cupy.ascontiguousarray(model.fit_transform(x), dtype=cupy.float32)
        return model, emb

    def transform_manifold(self, model, x):
        if model is None:
            return x
        if isinstance(model, OnHost):
            from .cpu import CPUBackend

            return self._to_device(
                CPUBackend().transform_manifold(model.model, self._to_host(x, "isomap transform on the CPU"))
            )
        cupy = interop.import_cupy()
        with self._device():
            return cupy.ascontiguousarray(model.transform(x), dtype=cupy.float32)

    def fit_cluster(self, u, cfg: ClusterConfig, n_clusters: int, seed: int):
        """Cluster ``u`` with cuML K-Means or DBSCAN (GMM on the CPU); returns (model, labels as CuPy int64)."""
        if cfg.method == "gmm":
            model, labels = self._on_cpu("cluster", "gmm", u, lambda cpu, h: cpu.fit_cluster(h, cfg, n_clusters, seed))
        else:
            cuml = import_cuml()
            cupy = interop.import_cupy()
            if cfg.method == "kmeans":
                model = cuml.KMeans(**kmeans_params(cfg, n_clusters, seed))
            elif cfg.method == "dbscan":
                model = cuml.DBSCAN(**dbscan_params(cfg))
            else:
                raise MFVCError(f"cluster={cfg.method!r} is not one of kmeans, dbscan, gmm")
            with self._device(), self._traced("cluster"):
                labels = cupy.asarray(model.fit_predict(u)).astype(cupy.int64)
        self._labels_exist()
        return model, labels

    def refine_cluster(self, model, u, seed: int):
        """cuML K-Means refitted on ``u`` from its own centres (one restart); a mixture on the CPU (cuML has none)."""
        if isinstance(model, OnHost):
            return self._on_cpu("cluster", "gmm", u, lambda cpu, h: cpu.refine_cluster(model.model, h, seed))
        if not hasattr(model, "cluster_centers_"):
            raise MFVCError(f"{type(model).__name__} cannot be refitted from its state; use cluster='kmeans' or 'gmm'")
        cupy = interop.import_cupy()
        with self._device(), self._traced("cluster"):
            c = cupy.ascontiguousarray(cupy.asarray(model.cluster_centers_, dtype=cupy.float32))
            refined = import_cuml().KMeans(n_clusters=len(c), init=c, n_init=1, random_state=seed, output_type="cupy")
            labels = cupy.asarray(refined.fit_predict(u)).astype(cupy.int64)
        self._labels_exist()
        return refined, labels

    def kmeans_from_centres(self, centres, seed: int):
        """A fitted cuML ``KMeans`` whose centres are exactly ``centres`` (one Lloyd step on the
        centres themselves leaves every centre where it is)."""
        cupy = interop.import_cupy()
        c = cupy.ascontiguousarray(cupy.asarray(centres, dtype=cupy.float32))
        with self._device():
            return (
                import_cuml()
                .KMeans(n_clusters=len(c), init=c, n_init=1, max_iter=1, random_state=seed, output_type="cupy")
                .fit(c)
            )

    def predict_cluster(self, model, u):
        if isinstance(model, OnHost):
            from .cpu import CPUBackend

            return CPUBackend().predict_cluster(model.model, self._to_host(u, "gmm predict on the CPU"))
        if not hasattr(model, "predict"):  # cuML's DBSCAN
            raise MFVCError(f"{type(model).__name__} cannot label new points; use cluster='kmeans' or 'gmm' to predict")
        cupy = interop.import_cupy()
        with self._device():
            return cupy.asarray(model.predict(u)).astype(cupy.int64)

    def cluster_state(self, model) -> dict[str, np.ndarray]:
        """cuML K-Means centres (copied to the host), or the state of a clusterer that ran on the CPU."""
        from .cpu import CPUBackend

        if isinstance(model, OnHost):
            return CPUBackend().cluster_state(model.model)
        if hasattr(model, "cluster_centers_"):
            return {
                "kmeans_centres": np.asarray(self._to_host(model.cluster_centers_, "K-Means centres"), dtype=np.float32)
            }
        return {}

    def cluster_from_state(self, state: dict[str, np.ndarray], seed: int):
        """A cuML K-Means from saved centres; a Gaussian mixture stays on the CPU (cuML has none)."""
        from .cpu import CPUBackend

        if "kmeans_centres" in state:
            return self.kmeans_from_centres(state["kmeans_centres"], seed)
        model = CPUBackend().cluster_from_state(state, seed)
        return None if model is None else OnHost(model)

    def handoff_record(self) -> dict:
        """A snapshot of :attr:`last_handoff` (the backend starts a new record at the next handoff)."""
        return dict(self.last_handoff)

    def prepare(self, manifold: ManifoldConfig, n_components: int, seed: int, gpu_memory: str) -> None:
        """Refuse UMAP settings cuML cannot run (before any training), and share the GPU's memory."""
        if manifold.method == "umap":
            umap_params(manifold, n_components, seed)
        share_gpu_memory(gpu_memory)

    def before_manifold(self, gpu_memory: str, device: str) -> None:
        if device.startswith("cuda"):
            import torch

            release_torch_cache(gpu_memory, torch.device(device))

    # ------------------------------------------------------------ helpers
    def _on_cpu(self, stage: str, method: str, x, run):
        """Run a stage cuML lacks on the CPU: copy in, fit there, copy the result back to the device."""
        from .cpu import CPUBackend

        log.warning(
            "%s has no cuML implementation: the %s stage runs on the CPU (copies to host and back)", method, stage
        )
        self.last_handoff["cpu_fallback"] = [*self.last_handoff.get("cpu_fallback", []), method]
        model, out = run(CPUBackend(), self._to_host(x, f"{method} on the CPU"))
        return OnHost(model), self._to_device(out)

    def _labels_exist(self) -> None:
        """Freeze the copy count at the moment the labels exist (before any of them leave the device)."""
        h = self.last_handoff
        h["device_to_host_bytes_before_labels"] = int(h.get("device_to_host_bytes", 0))
        cupti = h.get("cupti_device_to_host")
        if cupti:
            h["cupti_device_to_host_bytes_before_labels"] = int(sum(r.get("bytes", 0) for r in cupti.values()))
            h["cupti_copies_without_size"] = int(sum(r.get("copies_without_size", 0) for r in cupti.values()))


__all__ = ["RapidsBackend", "umap_params", "kmeans_params", "dbscan_params", "import_cuml", "KNN_BUILDS", "OnHost"]
