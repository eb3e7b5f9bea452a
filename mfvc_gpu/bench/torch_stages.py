"""The image stages of the benchmark (load, train, encode, handoff, the training-step race): real images,
CPU against GPU."""

from __future__ import annotations

import numpy as np

from mfvc_gpu.errors import MFVCError

from .cases import IMAGE_FEATURES, LATENT_DIM, Case


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


class TorchStages:
    """The stages that time the network and the handoff; mixed into :class:`mfvc_gpu.bench.stages.Bench`,
    whose settings (``self.s``), GPU support (``self.gpu``) and image loader they use."""

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
            yield Case(
                stage,
                "cpu",
                "cpu",
                "torch",
                m,
                IMAGE_FEATURES,
                label,
                f"torch_threads={threads[0]}",
                status="skipped",
                note=cpu_note,
            )
        else:
            for t in threads:
                yield Case(
                    stage,
                    "cpu",
                    "cpu",
                    "torch",
                    m,
                    IMAGE_FEATURES,
                    label,
                    f"torch_threads={t}",
                    t == threads[0],
                    threads=t,
                    score=per_s,
                    **make_run(x, "cpu"),
                )
        if self.gpu.device:
            yield Case(
                stage,
                "gpu",
                self.gpu.device,
                "torch",
                m,
                IMAGE_FEATURES,
                label,
                gpu_variant,
                score=per_s,
                **make_run(x, self.gpu.device),
            )
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
            return dict(
                run=lambda: encode(model, x, torch.device(device)),
                note="untrained weights (time does not depend on them)",
            )

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
            note = (
                None if cap is None or n <= cap else f"above --cpu-max-n {cap}: raise it to time the CPU at this size"
            )
            yield from self._size_cases("encode", x, label, make_run, self._torch_threads()[:1], note)

    def _handoff(self):
        import torch

        from mfvc_gpu.backends.cpu import CPUBackend
        from mfvc_gpu.backends.interop import data_pointer

        for n in self.s.sizes:
            x, _ = self.blobs(n, LATENT_DIM)
            t = torch.from_numpy(x)
            score = lambda out, _s, t=t: {"zero_copy": data_pointer(out) == t.data_ptr()}  # noqa: E731
            yield Case(
                "handoff", "cpu", "cpu", "numpy", n, LATENT_DIM, run=lambda t=t: CPUBackend().handoff(t), score=score
            )
            if not self.gpu.cupy:  # the handoff needs CuPy only, not cuML
                yield self._unavailable("handoff", n, LATENT_DIM, self.gpu.cupy_note, library="cupy (DLPack)")
                continue
            g = GpuData(x, self.gpu.device)
            yield Case(
                "handoff",
                "gpu",
                self.gpu.device,
                "cupy (DLPack)",
                n,
                LATENT_DIM,
                prepare=g.prepare,
                cleanup=g.cleanup,
                run=lambda g=g: g.backend.handoff(g.tensor),
                score=lambda _out, _s, g=g: {"zero_copy": bool(g.backend.last_handoff.get("same_pointer"))},
            )

    def train_step_rows(self, progress: bool = True) -> list[dict]:
        """The ``train_step`` stage (:mod:`mfvc_gpu.bench.train_step`) on the CPU and, where there is one, the GPU."""
        from .train_step import race

        if "train_step" not in self.s.stages:
            return []
        try:
            x, _, label, _ = self._images(self.s.datasets[0], max(self.s.image_sizes))
        except MFVCError as exc:
            return [
                dict(
                    stage="train_step",
                    backend="cpu",
                    device="cpu",
                    library="torch",
                    variant="default",
                    baseline=True,
                    dataset=self.s.datasets[0],
                    n_samples=0,
                    n_features=IMAGE_FEATURES,
                    rep=None,
                    seconds=None,
                    status="skipped",
                    note=str(exc),
                )
            ]
        kw = dict(rounds=self.s.train_step_rounds, steps=self.s.train_step_steps, seed=self.s.seed, dataset=label)
        rows = race(x, "cpu", self.s.train_step_batches, **kw)
        if self.gpu.device:
            rows += race(x, self.gpu.device, self.s.train_step_batches, **kw)
        return rows

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
            yield Case(
                "load",
                "cpu",
                "cpu",
                "mfvc_gpu",
                len(ds),
                IMAGE_FEATURES,
                f"{ds.name}:{split or 'all'}",
                variant="md5 check + resize",
                run=run,
                note="read the files, verify their checksums, resize to 32×32",
            )
