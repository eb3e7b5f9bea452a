"""The ``predict`` stage of the benchmark: labelling new images with a fitted model, the learned map against
UMAP's own ``transform``, in one run on the same images.

A model is fitted once (untimed) on the first ``predict_fit`` images of the data set's training split
(``epochs`` of training: the timings do not depend on how well it is trained). Each timed call labels new
images (the test split, repeated to n where n is larger) by encoder → embed → clusterer and records the
seconds of each step: ``encode_s``, ``embed_s`` (the map's forward pass, or UMAP's ``transform``) and
``cluster_s``. The map is the pipeline's default (``baseline``); UMAP's transform is the other setting.
Rows past the data set's size (``encode_sizes``, e.g. 1M) time the map only, streamed as ``predict`` streams
it, with the peak memory of the process.
"""

from __future__ import annotations

import time

import numpy as np

from mfvc_gpu.errors import MFVCError

from .cases import IMAGE_FEATURES, Case
from .timing import device_sync


class PredictStage:
    """Mixed into :class:`mfvc_gpu.bench.stages.Bench` (its settings ``self.s``, GPU support ``self.gpu``)."""

    _predict_models: dict

    def _predict_model(self, device: str):
        """The fitted estimators of this stage on ``device`` (fitted once, on the CPU backend or cuML's): the
        default (the learned map), and UMAP's own transform on the same codes (``fit_features``, seeded alike)."""
        from mfvc_gpu import MFVC
        from mfvc_gpu.data import load_dataset

        if not hasattr(self, "_predict_models"):
            self._predict_models = {}
        if device not in self._predict_models:
            ds = load_dataset(self.s.datasets[0], split="train", data_dir=self.s.data_dir)
            x = ds.images[: self.s.predict_fit]
            est = MFVC(epochs=self.s.epochs, random_state=self.s.seed, device=device, progress=False).fit(x)
            umap = MFVC(**dict(est.get_params(), out_of_sample="umap")).fit_features(est.latent_)
            self._predict_models[device] = {"map": est, "umap": umap}
        return self._predict_models[device]

    def _predict_run(self, device: str, out_of_sample: str):
        """A timed call: label ``x`` step by step, syncing the device between steps; returns the step seconds."""
        from mfvc_gpu.labelling import label

        sync = device_sync(device)

        def run(x):
            models = self._predict_model(device)
            lab = models[out_of_sample].labeller(match=False)
            lab.codes = models["map"].labeller(match=False).codes  # the network (the UMAP model took its codes)
            steps = dict(encode_s=0.0, embed_s=0.0, cluster_s=0.0)

            def timed(key, fn):
                def call(arg):
                    t0 = time.perf_counter()
                    out = fn(arg)
                    sync()
                    steps[key] += time.perf_counter() - t0
                    return out

                return call

            lab.codes, lab.embed, lab.cluster = (
                timed("encode_s", lab.codes),
                timed("embed_s", lab.embed),
                timed("cluster_s", lab.cluster),
            )
            label(lab, x, embedding=False)
            return steps

        return run

    def _predict(self):
        from mfvc_gpu.data import load_dataset

        name = self.s.datasets[0]
        try:  # the new images: the test split (never the fitted training images), repeated past its size
            ds = load_dataset(name, split="test", data_dir=self.s.data_dir)
            self._predict_model("cpu")
        except MFVCError as exc:
            yield self._skip_images("predict", exc)
            return
        test, label_ = ds.images, f"{ds.name}:test"
        devices = ["cpu"] + ([self.gpu.device] if self.gpu.device else [])
        fit_note = f"fitted on the first {self.s.predict_fit} training images, {self.s.epochs} epoch(s)"

        def steps_score(out, seconds, n):
            return dict(out, images_per_s=n / seconds)

        sizes = [(n, False) for n in self.s.image_sizes] + [(n, True) for n in self.s.encode_sizes]
        for n, large in sizes:
            x = test[:n] if n <= len(test) else np.resize(test, (n, *test.shape[1:]))
            what = label_ if n <= len(test) else f"{label_} repeated to {n}"
            for device in devices:
                backend = "cpu" if device == "cpu" else "gpu"
                cap = self.s.umap_cpu_max_n
                rapids = backend == "gpu" and self.gpu.rapids  # else UMAP's transform runs in umap-learn
                for transform in ("map",) if large else ("map", "umap"):
                    if transform == "umap" and not rapids and cap is not None and n > cap:
                        continue
                    yield Case(
                        "predict",
                        backend,
                        device,
                        "torch" if transform == "map" else ("cuml" if rapids else "umap-learn"),
                        n,
                        IMAGE_FEATURES,
                        what,
                        "learned map" if transform == "map" else "UMAP transform",
                        transform == "map",
                        run=self._predict_run(device, transform),
                        prepare=lambda device=device: self._predict_model(device),  # the fit, before the clock
                        setup=lambda x=x: x,
                        score=lambda out, s, n=n: steps_score(out, s, n),
                        note=fit_note,
                    )
            if not self.gpu.device:
                yield self._unavailable("predict", n, IMAGE_FEATURES, self.gpu.torch_note, what, "torch", "learned map")


def predict_ratios(rows: list[dict]) -> list[str]:
    """Per size and device: the share of each step, and how much faster the map is than UMAP's transform
    (the embed step alone, and the whole call), from the medians of one run."""
    import statistics

    out = []
    keys = sorted({(r["device"], r["n_samples"]) for r in rows if r["stage"] == "predict" and r.get("status") == "ok"})
    for device, n in keys:
        med = {}
        for variant in ("learned map", "UMAP transform"):
            rs = [
                r
                for r in rows
                if r["stage"] == "predict"
                and r.get("status") == "ok"
                and r["device"] == device
                and r["n_samples"] == n
                and r["variant"] == variant
                and r.get("seconds") is not None
            ]
            if rs:
                med[variant] = {
                    k: statistics.median(float(r[k]) for r in rs)
                    for k in ("seconds", "encode_s", "embed_s", "cluster_s")
                }
        parts = []
        for variant, m in med.items():
            shares = ", ".join(
                f"{k[:-2]} {m[k]:.3g} s ({100 * m[k] / m['seconds']:.0f} %)"
                for k in ("encode_s", "embed_s", "cluster_s")
            )
            parts.append(f"{variant}: {m['seconds']:.3g} s, {n / m['seconds']:.0f} images/s ({shares})")
        line = f"predict {device} n={n}: " + "; ".join(parts)
        if len(med) == 2:
            a, b = med["learned map"], med["UMAP transform"]
            line += (
                f". The map step is {b['embed_s'] / a['embed_s']:.0f}× faster than UMAP's transform; the whole "
                f"predict {b['seconds'] / a['seconds']:.1f}× faster"
            )
        out.append(line + ".")
    return out


__all__ = ["PredictStage", "predict_ratios"]
