"""What is timed: every stage of the pipeline as cases (one setting, one backend, one size).

Stages and their data:

* ``load``: reading and resizing a real data set (MNIST test split 10k, all 70k);
* ``train``: one β-VAE epoch on real images (seconds per epoch and images/s);
* ``encode``: posterior means of real images;
* ``handoff``: latent codes from torch to the backend (CPU: NumPy view; GPU: DLPack to CuPy);
* ``umap``, ``kmeans``: synthetic latents (10 Gaussian blobs in 32-D) and synthetic UMAP-like
  embeddings (10 blobs in 10-D), so the sizes can go past the real sets (scaling curve to 1M);
* ``metrics``: ACC / NMI / purity / ARI of n labels;
* ``predict``: new images labelled by a fitted model, the learned map against UMAP's ``transform``
  (:mod:`mfvc_gpu.bench.predict_stage`);
* ``end_to_end``: ``MFVC.fit`` on real images, with its ACC / NMI.

The CPU default of each stage is what the pipeline runs (``baseline=True``); other CPU settings
(umap-learn without a seed, i.e. in parallel; ``low_memory=False``; one torch thread) are extra
rows at one size. The GPU's speed-up is always taken against the CPU default.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from mfvc_gpu.errors import MFVCError

from .cases import (  # noqa: F401 - the names the benchmark's callers use
    IMAGE_FEATURES,
    LATENT_DIM,
    N_CLUSTERS,
    STAGES,
    UMAP_EXACT_BELOW,
    Case,
    GpuSupport,
    Settings,
    probe_gpu,
    synthetic_blobs,
    trust,
)
from .predict_stage import PredictStage
from .torch_stages import GpuData, TorchStages


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


def check_stages(stages: tuple[str, ...]) -> None:
    """Refuse a stage name the benchmark does not have (before any folder is made or any data loaded)."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise MFVCError(
            f"--stages: unknown stage(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(STAGES)}"
        )


class Bench(TorchStages, PredictStage):
    """Builds the cases of the requested stages; data is loaded and generated once and shared."""

    def __init__(self, settings: Settings, gpu: GpuSupport) -> None:
        check_stages(settings.stages)
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

    def _skip_images(self, stage: str, exc: MFVCError) -> Case:
        return Case(
            stage, "cpu", "cpu", "torch", 0, IMAGE_FEATURES, self.s.datasets[0], status="skipped", note=str(exc)
        )

    def _umap(self):
        from mfvc_gpu.backends.cpu import CPUBackend
        from mfvc_gpu.config import ManifoldConfig

        vn, cap = self._variant_n(self.s.sizes), self.s.umap_cpu_max_n
        for n in self.s.sizes:
            x, _ = self.blobs(n, LATENT_DIM)
            idx = np.sort(np.random.default_rng(self.s.seed).choice(n, min(n, self.s.trust_sample), replace=False))
            knn = "exact" if n < UMAP_EXACT_BELOW else "nn-descent"
            score = lambda emb, _s, x=x, idx=idx, knn=knn: {"trustworthiness": trust(x, emb, idx), "knn_build": knn}  # noqa: E731
            settings = [
                (
                    "random_state=0",
                    True,
                    lambda x=x: CPUBackend().fit_manifold(
                        x, ManifoldConfig(metric="euclidean"), N_CLUSTERS, self.s.seed
                    )[1],
                )
            ]
            if n == vn:
                settings += [
                    ("random_state=None (parallel)", False, lambda x=x: _umap_cpu(x, None)),
                    ("random_state=None low_memory=False", False, lambda x=x: _umap_cpu(x, None, low_memory=False)),
                ]
            for variant, base, run in settings:
                if cap is not None and n > cap:
                    yield Case(
                        "umap",
                        "cpu",
                        "cpu",
                        "umap-learn",
                        n,
                        LATENT_DIM,
                        variant=variant,
                        baseline=base,
                        status="skipped",
                        note=f"above the CPU cap n={cap} (--cpu-max-n)",
                    )
                else:
                    yield Case(
                        "umap",
                        "cpu",
                        "cpu",
                        "umap-learn",
                        n,
                        LATENT_DIM,
                        variant=variant,
                        baseline=base,
                        run=run,
                        score=score,
                        code_path=knn,
                    )
            if not self.gpu.rapids:
                yield self._unavailable("umap", n, LATENT_DIM, self.gpu.rapids_note, variant="knn=brute")
                continue
            for knn_opt in ["brute"] + (["nn-descent"] if n == vn else []):
                g = GpuData(x, self.gpu.device)
                cfg = ManifoldConfig(knn=knn_opt, metric="euclidean")
                yield Case(
                    "umap",
                    "gpu",
                    self.gpu.device,
                    "cuml",
                    n,
                    LATENT_DIM,
                    variant=f"knn={knn_opt}",
                    baseline=knn_opt == "brute",
                    prepare=g.prepare,
                    cleanup=g.cleanup,
                    run=lambda g=g, cfg=cfg: g.backend.fit_manifold(g.array, cfg, N_CLUSTERS, self.s.seed)[1],
                    score=lambda emb, _s, g=g, x=x, idx=idx: {
                        "trustworthiness": trust(x, g.backend.to_numpy(emb), idx),
                        "knn_build": g.backend.last_handoff.get("knn_build"),
                    },
                )

    def _kmeans(self):
        from mfvc_gpu.backends.cpu import CPUBackend
        from mfvc_gpu.config import ClusterConfig

        cfg = ClusterConfig(method="kmeans")
        for n in self.s.sizes:
            u, y = self.blobs(n, N_CLUSTERS, spread=1.5)
            quality = _quality(y)
            yield Case(
                "kmeans",
                "cpu",
                "cpu",
                "scikit-learn",
                n,
                N_CLUSTERS,
                variant=f"n_init={cfg.n_init}",
                score=quality,
                run=lambda u=u: CPUBackend().fit_cluster(u, cfg, N_CLUSTERS, self.s.seed)[1],
            )
            if not self.gpu.rapids:
                yield self._unavailable("kmeans", n, N_CLUSTERS, self.gpu.rapids_note, variant=f"n_init={cfg.n_init}")
                continue
            g = GpuData(u, self.gpu.device)
            yield Case(
                "kmeans",
                "gpu",
                self.gpu.device,
                "cuml",
                n,
                N_CLUSTERS,
                variant=f"n_init={cfg.n_init}",
                prepare=g.prepare,
                cleanup=g.cleanup,
                run=lambda g=g: g.backend.fit_cluster(g.array, cfg, N_CLUSTERS, self.s.seed)[1],
                score=lambda labels, s, g=g, quality=quality: quality(g.backend.to_numpy(labels), s),
            )

    def _metrics(self):
        from mfvc_gpu.metrics import evaluate

        for n in self.s.sizes:
            _, y = self.blobs(n, N_CLUSTERS)
            rng = np.random.default_rng(self.s.seed)
            pred = rng.permutation(N_CLUSTERS)[y]
            noisy = rng.random(n) < 0.1
            pred[noisy] = rng.integers(0, N_CLUSTERS, int(noisy.sum()))
            yield Case(
                "metrics",
                "cpu",
                "cpu",
                "scipy+scikit-learn",
                n,
                1,
                variant="acc,nmi,purity,ari",
                run=lambda y=y, pred=pred: evaluate(y, pred),
                note="no GPU implementation: labels are scored on the host",
            )

    def _end_to_end(self):
        from mfvc_gpu import MFVC

        cap = self.s.umap_cpu_max_n
        for name in self.s.datasets:
            for n in self.s.image_sizes:
                try:
                    x, y, label, ds = self._images(name, n)
                except MFVCError as exc:
                    yield Case(
                        "end_to_end",
                        "cpu",
                        "cpu",
                        "torch+umap-learn+scikit-learn",
                        0,
                        IMAGE_FEATURES,
                        name,
                        status="skipped",
                        note=str(exc),
                    )
                    break
                m, k, variant = len(x), ds.n_classes or N_CLUSTERS, f"epochs={self.s.epochs}"

                def fit(device, backend, x=x, k=k):
                    return MFVC(
                        n_clusters=k,
                        epochs=self.s.epochs,
                        device=device,
                        backend=backend,
                        random_state=self.s.seed,
                        progress=False,
                    ).fit(x)

                def score(est, _s, y=y, m=m):
                    q = _quality(y)(est.labels_, _s) if y is not None else {}
                    knn = est.handoff_.get("knn_build") or ("exact" if m < UMAP_EXACT_BELOW else "nn-descent")
                    return {**q, "knn_build": knn, "images_per_s": m / _s}

                lib = "torch+umap-learn+scikit-learn"
                if cap is not None and m > cap:
                    yield Case(
                        "end_to_end",
                        "cpu",
                        "cpu",
                        lib,
                        m,
                        IMAGE_FEATURES,
                        label,
                        variant,
                        status="skipped",
                        note=f"above the CPU cap n={cap} (--cpu-max-n)",
                    )
                else:
                    yield Case(
                        "end_to_end",
                        "cpu",
                        "cpu",
                        lib,
                        m,
                        IMAGE_FEATURES,
                        label,
                        variant,
                        run=lambda fit=fit: fit("cpu", "cpu"),
                        score=score,
                        code_path="exact" if m < UMAP_EXACT_BELOW else "nn-descent",
                    )
                if self.gpu.rapids:
                    yield Case(
                        "end_to_end",
                        "gpu",
                        self.gpu.device,
                        "torch+cuml",
                        m,
                        IMAGE_FEATURES,
                        label,
                        variant,
                        run=lambda fit=fit: fit(self.gpu.device, "rapids"),
                        score=score,
                    )
                else:
                    yield self._unavailable(
                        "end_to_end",
                        m,
                        IMAGE_FEATURES,
                        self.gpu.rapids_note or self.gpu.torch_note,
                        label,
                        "torch+cuml",
                        variant,
                    )


__all__ = ["STAGES", "Case", "Settings", "Bench", "GpuSupport", "check_stages", "probe_gpu", "synthetic_blobs", "trust"]
