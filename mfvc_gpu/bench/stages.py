"""What is timed: every stage of the pipeline as cases (one setting, one backend, one size).

Stages and their data:

* ``load``: reading and resizing a real data set (MNIST test split 10k, all 70k);
* ``train``: one β-VAE epoch on real images (seconds per epoch and images/s);
* ``encode``: posterior means of real images;
* ``handoff``: latent codes from torch to the backend (CPU: NumPy view; GPU: DLPack to CuPy);
* ``umap``, ``kmeans``: synthetic latents (10 Gaussian blobs in 32-D) and synthetic UMAP-like
  embeddings (10 blobs in 10-D), so the sizes can go past the real sets (scaling curve to 1M);
* ``metrics``: ACC / NMI / purity / ARI of n labels;
* ``end_to_end``: ``MFVC.fit`` on real images, with its ACC / NMI.

The CPU default of each stage is what the pipeline runs (``baseline=True``); other CPU settings
(umap-learn without a seed, i.e. in parallel; ``low_memory=False``; one torch thread) are extra
rows at one size. The GPU's speed-up is always taken against the CPU default.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from mfvc_gpu.errors import MFVCError

from .cases import (  # noqa: F401 - the names the benchmark's callers use
    STAGES, N_CLUSTERS, LATENT_DIM, IMAGE_FEATURES, UMAP_EXACT_BELOW, Case, GpuSupport, Settings, probe_gpu, synthetic_blobs, trust,
)


def _quality(y: np.ndarray) -> Callable[[Any, float], dict]:
    from mfvc_gpu.metrics import cluster_acc, nmi

    def score(labels, _seconds: float) -> dict:
        labels = np.asarray(labels)
        return dict(acc=cluster_acc(y, labels), nmi=nmi(y, labels))

    return score


def _umap_cpu(x: np.ndarray, seed: int | None, low_memory: bool = True) -> np.ndarray:
    import umap

    model = umap.UMAP(n_neighbors=27, min_dist=0.0, n_components=N_CLUSTERS, random_state=seed, low_memory=low_memory)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden")
        return model.fit_transform(x)


class GpuData:
    """Synthetic data placed on the GPU once per case (outside the clock), with its backend."""

    def __init__(self, x: np.ndarray, device: str) -> None:
        self.x, self.device = x, device
        self.backend = self.tensor = self.array = None

    def prepare(self) -> None:
        import torch

        from mfvc_gpu.backends import get_backend

        self.backend = get_backend("rapids")
        self.tensor = torch.from_numpy(self.x).to(self.device)
        self.array = self.backend.handoff(self.tensor)

    def cleanup(self) -> None:
        self.backend = self.tensor = self.array = None


class Bench:
    """Builds the cases of the requested stages; data is loaded and generated once and shared."""

    def __init__(self, settings: Settings, gpu: GpuSupport) -> None:
        unknown = [s for s in settings.stages if s not in STAGES]
        if unknown:
            raise MFVCError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        self.s, self.gpu = settings, gpu
        self._datasets: dict = {}
        self._blobs: dict = {}

    # ------------------------------------------------------------ data
    def dataset(self, name: str, need: int):
        """The smallest split of ``name`` that holds ``need`` images (the test split when it does)."""
        from mfvc_gpu.data import load_dataset
        from mfvc_gpu.data.registry import REGISTRY

        spec = REGISTRY.get(name.lower())
        splits = [None] if spec is None or "test" not in spec.splits else ["test", None]
        for split in splits:
            if (name, split) not in self._datasets:
                self._datasets[(name, split)] = load_dataset(name, split=split, data_dir=self.s.data_dir)
            ds = self._datasets[(name, split)]
            if len(ds) >= need:
                break
        return split, ds

    def blobs(self, n: int, d: int, spread: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
        """Latents (32-D, well separated) or UMAP-like embeddings (10-D, ``spread`` 1.5: K-Means
        then scores ACC ≈ 0.96, not a trivial 1.0, so GPU and CPU results can differ visibly)."""
        if (n, d, spread) not in self._blobs:
            self._blobs[(n, d, spread)] = synthetic_blobs(n, d, spread=spread, seed=self.s.seed)
        return self._blobs[(n, d, spread)]

    def _variant_n(self, sizes) -> int | None:
        if self.s.variant_size is None or not sizes:
            return None
        return min(sizes, key=lambda n: (abs(n - self.s.variant_size), n))

    def _images(self, name: str, n: int):
        split, ds = self.dataset(name, n)
        n = min(n, len(ds))
        return ds.images[:n], ds.labels[:n] if ds.labels is not None else None, f"{ds.name}:{split or 'all'}", ds

    def _unavailable(self, stage, n, d, note, dataset="synthetic", library="cuml", variant="default") -> Case:
        return Case(stage, "gpu", "cuda", library, n, d, dataset, variant, status="unavailable", note=note)

    def _torch_threads(self) -> list[int]:
        import torch

        all_threads = torch.get_num_threads()
        return [all_threads] + ([1] if all_threads > 1 else [])

    # ------------------------------------------------------------ stages
    def cases(self) -> list[Case]:
        out: list[Case] = []
        for stage in self.s.stages:
            if stage != "train_step":  # timed by its own alternating race (train_step_rows)
                out += list(getattr(self, f"_{stage}")())
        return out

    def train_step_rows(self, progress: bool = True) -> list[dict]:
        """The ``train_step`` stage (:mod:`mfvc_gpu.bench.train_step`) on the CPU and, where there is one, the GPU."""
        from .train_step import race

        if "train_step" not in self.s.stages:
            return []
        try:
            x, _, label, _ = self._images(self.s.datasets[0], max(self.s.image_sizes))
        except MFVCError as exc:
            return [dict(stage="train_step", backend="cpu", device="cpu", library="torch", variant="default", baseline=True,
                         dataset=self.s.datasets[0], n_samples=0, n_features=IMAGE_FEATURES, rep=None, seconds=None,
                         status="skipped", note=str(exc))]
        kw = dict(rounds=self.s.train_step_rounds, steps=self.s.train_step_steps, seed=self.s.seed, dataset=label)
        rows = race(x, "cpu", self.s.train_step_batches, **kw)
        if self.gpu.device:
            rows += race(x, self.gpu.device, self.s.train_step_batches, **kw)
        return rows

    def _skip_images(self, stage: str, exc: MFVCError) -> Case:
        return Case(stage, "cpu", "cpu", "torch", 0, IMAGE_FEATURES, self.s.datasets[0], status="skipped", note=str(exc))

    def _load(self):
        from mfvc_gpu.data import load_dataset

        name, seen = self.s.datasets[0], set()
        for n in self.s.image_sizes:
            try:
                split, ds = self.dataset(name, n)
            except MFVCError as exc:
                yield self._skip_images("load", exc)
                return
            if split in seen:
                continue
            seen.add(split)
            run = lambda split=split: load_dataset(name, split=split, data_dir=self.s.data_dir)  # noqa: E731
            yield Case("load", "cpu", "cpu", "mfvc_gpu", len(ds), IMAGE_FEATURES, f"{ds.name}:{split or 'all'}",
                       variant="md5 check + resize", run=run, note="read the files, verify their checksums, resize to 32×32")

    def _fresh_model(self):
        import torch

        from mfvc_gpu.models import BetaVAE, VAEConfig

        torch.manual_seed(self.s.seed)
        return BetaVAE(VAEConfig(latent_dim=LATENT_DIM))

    def _torch_cases(self, stage: str, make_run):
        """CPU (each torch thread count) and GPU cases of a torch stage, for every image size."""
        name, seen = self.s.datasets[0], set()
        for n in self.s.image_sizes:
            try:
                x, _, label, _ = self._images(name, n)
            except MFVCError as exc:
                yield self._skip_images(stage, exc)
                return
            if stage == "train" and self.s.train_subset:
                x = x[: self.s.train_subset]
            m = len(x)
            if m in seen:  # sizes capped to the same subset
                continue
            first = not seen
            seen.add(m)
            threads = self._torch_threads()
            yield from self._size_cases(stage, x, label, make_run, threads if first else threads[:1])

    def _size_cases(self, stage: str, x, label: str, make_run, threads: list[int], cpu_note: str | None = None):
        """The cases of a torch stage on one image stack: CPU with each of ``threads`` (or, with
        ``cpu_note``, one skipped CPU row saying why), then GPU (or its unavailable row)."""
        m = len(x)
        per_s = lambda _out, sec, m=m: {"images_per_s": m / sec}  # noqa: E731
        gpu_variant = "amp=bf16" if stage == "train" else "default"
        if cpu_note is not None:
            yield Case(stage, "cpu", "cpu", "torch", m, IMAGE_FEATURES, label, f"torch_threads={threads[0]}", status="skipped",
                       note=cpu_note)
        else:
            for t in threads:
                yield Case(stage, "cpu", "cpu", "torch", m, IMAGE_FEATURES, label, f"torch_threads={t}", t == threads[0],
                           threads=t, score=per_s, **make_run(x, "cpu"))
        if self.gpu.device:
            yield Case(stage, "gpu", self.gpu.device, "torch", m, IMAGE_FEATURES, label, gpu_variant, score=per_s,
                       **make_run(x, self.gpu.device))
        else:
            yield self._unavailable(stage, m, IMAGE_FEATURES, self.gpu.torch_note, label, "torch", gpu_variant)

    def _train(self):
        import torch

        from mfvc_gpu.resolution import resolve
        from mfvc_gpu.train import train_vae

        def make_run(x, device):
            cfg = resolve({"profile": "paper", "device": "cpu", "epochs": 1}).train  # one epoch of the paper's training
            run = lambda model: train_vae(model, x, cfg, torch.device(device), self.s.seed, progress=False)  # noqa: E731
            return dict(setup=self._fresh_model, run=run)

        yield from self._torch_cases("train", make_run)

    def _encode(self):
        import torch

        from mfvc_gpu.train import encode

        def make_run(x, device):
            model = self._fresh_model().eval()
            return dict(run=lambda: encode(model, x, torch.device(device)), note="untrained weights (time does not depend on them)")

        yield from self._torch_cases("encode", make_run)
        yield from self._large_encode(make_run)

    def _large_encode(self, make_run):
        """Encode at ``encode_sizes``: the data set's images repeated to n, streamed from uint8 storage
        (CPU rows up to ``umap_cpu_max_n``, GPU rows where there is a GPU)."""
        name, cap = self.s.datasets[0], self.s.umap_cpu_max_n
        for n in self.s.encode_sizes:
            try:
                x, _, label, _ = self._images(name, n)
            except MFVCError as exc:
                yield self._skip_images("encode", exc)
                return
            if n > len(x):
                x = np.resize(x, (n, *x.shape[1:]))  # repeats the images, still uint8
                label = f"{label} repeated to {n}"
            note = None if cap is None or n <= cap else f"above --cpu-max-n {cap}: raise it to time the CPU at this size"
            yield from self._size_cases("encode", x, label, make_run, self._torch_threads()[:1], note)

    def _handoff(self):
        import torch

        from mfvc_gpu.backends.cpu import CPUBackend
        from mfvc_gpu.backends.interop import data_pointer

        for n in self.s.sizes:
            x, _ = self.blobs(n, LATENT_DIM)
            t = torch.from_numpy(x)
            score = lambda out, _s, t=t: {"zero_copy": data_pointer(out) == t.data_ptr()}  # noqa: E731
            yield Case("handoff", "cpu", "cpu", "numpy", n, LATENT_DIM, run=lambda t=t: CPUBackend().handoff(t), score=score)
            if not self.gpu.cupy:  # the handoff needs CuPy only, not cuML
                yield self._unavailable("handoff", n, LATENT_DIM, self.gpu.cupy_note, library="cupy (DLPack)")
                continue
            g = GpuData(x, self.gpu.device)
            yield Case("handoff", "gpu", self.gpu.device, "cupy (DLPack)", n, LATENT_DIM, prepare=g.prepare, cleanup=g.cleanup,
                       run=lambda g=g: g.backend.handoff(g.tensor),
                       score=lambda _out, _s, g=g: {"zero_copy": bool(g.backend.last_handoff.get("same_pointer"))})

    def _umap(self):
        from mfvc_gpu.backends.cpu import CPUBackend
        from mfvc_gpu.config import ManifoldConfig

        vn, cap = self._variant_n(self.s.sizes), self.s.umap_cpu_max_n
        for n in self.s.sizes:
            x, _ = self.blobs(n, LATENT_DIM)
            idx = np.sort(np.random.default_rng(self.s.seed).choice(n, min(n, self.s.trust_sample), replace=False))
            knn = "exact" if n < UMAP_EXACT_BELOW else "nn-descent"
            score = lambda emb, _s, x=x, idx=idx, knn=knn: {"trustworthiness": trust(x, emb, idx), "knn_build": knn}  # noqa: E731
            settings = [("random_state=0", True, lambda x=x: CPUBackend().fit_manifold(x, ManifoldConfig(metric="euclidean"), N_CLUSTERS, self.s.seed)[1])]
            if n == vn:
                settings += [("random_state=None (parallel)", False, lambda x=x: _umap_cpu(x, None)),
                             ("random_state=None low_memory=False", False, lambda x=x: _umap_cpu(x, None, low_memory=False))]
            for variant, base, run in settings:
                if cap is not None and n > cap:
                    yield Case("umap", "cpu", "cpu", "umap-learn", n, LATENT_DIM, variant=variant, baseline=base,
                               status="skipped", note=f"above the CPU cap n={cap} (--cpu-max-n)")
                else:
                    yield Case("umap", "cpu", "cpu", "umap-learn", n, LATENT_DIM, variant=variant, baseline=base, run=run, score=score,
                               code_path=knn)
            if not self.gpu.rapids:
                yield self._unavailable("umap", n, LATENT_DIM, self.gpu.rapids_note, variant="knn=brute")
                continue
            for knn_opt in ["brute"] + (["nn-descent"] if n == vn else []):
                g = GpuData(x, self.gpu.device)
                cfg = ManifoldConfig(knn=knn_opt, metric="euclidean")
                yield Case("umap", "gpu", self.gpu.device, "cuml", n, LATENT_DIM, variant=f"knn={knn_opt}", baseline=knn_opt == "brute",
                           prepare=g.prepare, cleanup=g.cleanup,
                           run=lambda g=g, cfg=cfg: g.backend.fit_manifold(g.array, cfg, N_CLUSTERS, self.s.seed)[1],
                           score=lambda emb, _s, g=g, x=x, idx=idx: {
                               "trustworthiness": trust(x, g.backend.to_numpy(emb), idx),
                               "knn_build": g.backend.last_handoff.get("knn_build")})

    def _kmeans(self):
        from mfvc_gpu.backends.cpu import CPUBackend
        from mfvc_gpu.config import ClusterConfig

        cfg = ClusterConfig(method="kmeans")
        for n in self.s.sizes:
            u, y = self.blobs(n, N_CLUSTERS, spread=1.5)
            quality = _quality(y)
            yield Case("kmeans", "cpu", "cpu", "scikit-learn", n, N_CLUSTERS, variant=f"n_init={cfg.n_init}", score=quality,
                       run=lambda u=u: CPUBackend().fit_cluster(u, cfg, N_CLUSTERS, self.s.seed)[1])
            if not self.gpu.rapids:
                yield self._unavailable("kmeans", n, N_CLUSTERS, self.gpu.rapids_note, variant=f"n_init={cfg.n_init}")
                continue
            g = GpuData(u, self.gpu.device)
            yield Case("kmeans", "gpu", self.gpu.device, "cuml", n, N_CLUSTERS, variant=f"n_init={cfg.n_init}",
                       prepare=g.prepare, cleanup=g.cleanup,
                       run=lambda g=g: g.backend.fit_cluster(g.array, cfg, N_CLUSTERS, self.s.seed)[1],
                       score=lambda labels, s, g=g, quality=quality: quality(g.backend.to_numpy(labels), s))

    def _metrics(self):
        from mfvc_gpu.metrics import evaluate

        for n in self.s.sizes:
            _, y = self.blobs(n, N_CLUSTERS)
            rng = np.random.default_rng(self.s.seed)
            pred = rng.permutation(N_CLUSTERS)[y]
            noisy = rng.random(n) < 0.1
            pred[noisy] = rng.integers(0, N_CLUSTERS, int(noisy.sum()))
            yield Case("metrics", "cpu", "cpu", "scipy+scikit-learn", n, 1, variant="acc,nmi,purity,ari",
                       run=lambda y=y, pred=pred: evaluate(y, pred), note="no GPU implementation: labels are scored on the host")

    def _end_to_end(self):
        from mfvc_gpu import MFVC

        cap = self.s.umap_cpu_max_n
        for name in self.s.datasets:
            for n in self.s.image_sizes:
                try:
                    x, y, label, ds = self._images(name, n)
                except MFVCError as exc:
                    yield Case("end_to_end", "cpu", "cpu", "torch+umap-learn+scikit-learn", 0, IMAGE_FEATURES, name,
                               status="skipped", note=str(exc))
                    break
                m, k, variant = len(x), ds.n_classes or N_CLUSTERS, f"epochs={self.s.epochs}"

                def fit(device, backend, x=x, k=k):
                    return MFVC(n_clusters=k, epochs=self.s.epochs, device=device, backend=backend,
                                random_state=self.s.seed, progress=False).fit(x)

                def score(est, _s, y=y, m=m):
                    q = _quality(y)(est.labels_, _s) if y is not None else {}
                    knn = est.handoff_.get("knn_build") or ("exact" if m < UMAP_EXACT_BELOW else "nn-descent")
                    return {**q, "knn_build": knn, "images_per_s": m / _s}

                lib = "torch+umap-learn+scikit-learn"
                if cap is not None and m > cap:
                    yield Case("end_to_end", "cpu", "cpu", lib, m, IMAGE_FEATURES, label, variant, status="skipped",
                               note=f"above the CPU cap n={cap} (--cpu-max-n)")
                else:
                    yield Case("end_to_end", "cpu", "cpu", lib, m, IMAGE_FEATURES, label, variant,
                               run=lambda fit=fit: fit("cpu", "cpu"), score=score,
                               code_path="exact" if m < UMAP_EXACT_BELOW else "nn-descent")
                if self.gpu.rapids:
                    yield Case("end_to_end", "gpu", self.gpu.device, "torch+cuml", m, IMAGE_FEATURES, label, variant,
                               run=lambda fit=fit: fit(self.gpu.device, "rapids"), score=score)
                else:
                    yield self._unavailable("end_to_end", m, IMAGE_FEATURES, self.gpu.rapids_note or self.gpu.torch_note,
                                            label, "torch+cuml", variant)


__all__ = ["STAGES", "Case", "Settings", "Bench", "GpuSupport", "probe_gpu", "synthetic_blobs", "trust"]
