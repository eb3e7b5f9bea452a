"""GPU check: the gpu/rapids tests, then a short end-to-end run, with the handoff evidence printed.

Run on a machine with an NVIDIA GPU, from the repository root::

    python benchmarks/gpu_check.py [--data-dir DIR] [--epochs 5] [--json gpu_check.json]

Steps, each printed as it finishes:

1. the environment: torch / CUDA / GPU, and whether CuPy, cuML and cuDF import;
2. ``pytest -m "gpu or rapids"`` (the tests skip with a reason where a library is missing);
3. torch → CuPy through DLPack on a 70 000 × 32 tensor (MNIST-sized latent codes): both
   pointers, the seconds, and the device→host bytes CUPTI saw (needs torch and CuPy only);
4. the training step at batch 64 on 70k MNIST-sized uint8 images, eager against compiled with
   CUDA graphs and against the loop as it was (three host reads a step), alternating (images/s,
   compile seconds); the paper protocol's projected time
   (200 epochs × 70k) and, when it fits the budget, the protocol itself (seconds, peak GPU
   memory); encode images/s (needs torch with CUDA only);
5. a short end-to-end run (β-VAE for ``--epochs`` epochs → UMAP → K-Means) on MNIST-test, or
   on scikit-learn's digits when MNIST is not found: per-stage seconds, pointers, the bytes the
   backend copied, the kNN build and ACC; with cuML, the same latent through UMAP + K-Means
   again under CUPTI (``MFVC_TRACE_COPIES=1``), once with each kNN build, counting every
   device→host copy any library made (traced runs are slower: their seconds are not shown).

Without cuML the run takes the mixed mode (encoder on the GPU, UMAP and K-Means on the CPU) and
says so; without CuPy step 3 is skipped. Sized to finish within 8 minutes on one H200.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
TEST_LIMIT_S = 150


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # absent or broken: both mean "not usable here"
        return None


def environment() -> dict:
    import torch

    env = dict(
        python=sys.version.split()[0],
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cuda_available=torch.cuda.is_available(),
        cupy=_version("cupy"),
        cuml=_version("cuml"),
        cudf=_version("cudf"),
    )
    if env["cuda_available"]:
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def run_tests(limit_s: float, data_dir: str | None) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu or rapids", "-q", "-rs", "-p", "no:cacheprovider", "tests"]
    env = dict(os.environ)
    if data_dir:
        env["MFVC_TEST_MNIST_DIR"] = data_dir
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit_s)
        lines = (p.stdout + p.stderr).strip().splitlines()
        rc, tail = p.returncode, lines[-25:]
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rc, tail = "timeout", out.strip().splitlines()[-25:]
    return dict(returncode=rc, seconds=round(time.perf_counter() - t0, 1), summary=tail[-1] if tail else "", tail=tail)


def dlpack_figures(n: int = 70_000, d: int = 32) -> dict:
    """torch → CuPy on one tensor: pointers, seconds, and CUPTI's device→host count."""
    import torch

    from mfvc_gpu.backends import interop

    z = torch.randn(n, d, device="cuda")
    torch.cuda.synchronize()
    rec: dict = {}
    t0 = time.perf_counter()
    with interop.trace_device_to_host(rec):
        a = interop.torch_to_cupy(z)
    seconds = time.perf_counter() - t0
    back = torch.from_dlpack(a)  # and back: the same memory again
    return dict(
        shape=[n, d],
        torch_ptr=z.data_ptr(),
        cupy_ptr=int(a.data.ptr),
        same_pointer=z.data_ptr() == int(a.data.ptr),
        back_to_torch_ptr=back.data_ptr(),
        seconds_traced=round(seconds, 4),
        cupti_device_to_host=rec,
    )


def mnist_70k(data_dir: str | None):
    """MNIST's 70k images as uint8, or 70k random images of the same shape when MNIST is not found."""
    import numpy as np

    from mfvc_gpu import load_dataset
    from mfvc_gpu.errors import MFVCError

    for d in (data_dir, os.environ.get("MFVC_TEST_MNIST_DIR"), REPO.parent / "shared" / "data" / "mnist", None):
        try:
            return load_dataset("mnist", split="all", data_dir=d).images, "mnist (70k)"
        except MFVCError:
            continue
    return np.random.default_rng(0).integers(
        0, 256, (70_000, 1, 32, 32), dtype=np.uint8
    ), "random uint8 (70k, MNIST-sized)"


def training_figures(data_dir: str | None, budget_s: float) -> dict:
    """Training images/s at batch 64 for the eager, the compiled (CUDA graphs) and the old host-synced
    step, alternating;
    the paper protocol's projected time (200 epochs × 70k images); the protocol itself when the
    projection fits the budget; encode images/s; peak GPU memory. Needs torch with CUDA only."""
    import torch

    from mfvc_gpu.bench.train_step import race, ratios
    from mfvc_gpu.models import BetaVAE, VAEConfig
    from mfvc_gpu.train import TrainConfig, encode, train_vae

    x, source = mnist_70k(data_dir)
    rows = race(x, "cuda", (64,), rounds=5, steps=200, variants=("eager", "compiled", "eager, synced"))
    per_variant = {}
    for r in rows:
        per_variant.setdefault(r["variant"], []).append(round(r["images_per_s"]))
    # the fastest of the loop's own options (the old synced loop is there for its ratio), by median
    best = max(
        ((v, statistics.median(s)) for v, s in per_variant.items() if not v.startswith("eager, synced")),
        key=lambda kv: kv[1],
    )
    out = dict(
        images=source,
        batch=64,
        images_per_s=per_variant,
        ratios=ratios(rows),
        warmup_s={r["variant"]: round(r["warmup_s"], 1) for r in rows},
        projected_paper_protocol_s=round(200 * len(x) / best[1], 1),
        fastest=best[0],
    )
    model = BetaVAE(VAEConfig()).cuda()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    encode(model, x, torch.device("cuda"))
    torch.cuda.synchronize()
    out["encode_images_per_s"] = round(len(x) / (time.perf_counter() - t0))
    if out["projected_paper_protocol_s"] < budget_s:
        torch.cuda.reset_peak_memory_stats()
        compile_mode = "on" if best[0].startswith("compiled") else "off"
        t0 = time.perf_counter()
        hist = train_vae(
            BetaVAE(VAEConfig()),
            x,
            TrainConfig(epochs=200, batch_size=64, augment=0.0, lr=0.005, compile=compile_mode),
            torch.device("cuda"),
            0,
            progress=False,
        )
        out["paper_protocol"] = dict(
            seconds=round(time.perf_counter() - t0, 1),
            compile=compile_mode,
            final_loss=round(hist[-1]["loss"], 3),
            peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20),
        )
    else:
        out["paper_protocol"] = (
            f"skipped: projected {out['projected_paper_protocol_s']} s exceeds the {budget_s:.0f} s left"
        )
    return out


def load_images(data_dir: str | None):
    from mfvc_gpu import load_dataset
    from mfvc_gpu.errors import MFVCError

    candidates = [
        data_dir,
        os.environ.get("MFVC_TEST_MNIST_DIR"),
        REPO.parent / "shared" / "data" / "mnist",
        REPO / "shared" / "data" / "mnist",
        None,
    ]
    for d in candidates:
        try:
            return load_dataset("mnist", split="test", data_dir=d)
        except MFVCError:
            continue
    return load_dataset("digits")


def end_to_end(data_dir: str | None, epochs: int, with_cuml: bool) -> dict:
    """Untraced fit for the seconds and the backend's own record; then, with cuML, the same latent
    through UMAP + K-Means again under CUPTI, once per kNN build, for every device→host copy."""
    import numpy as np
    import torch

    from mfvc_gpu import MFVC, cluster_acc

    os.environ.pop("MFVC_TRACE_COPIES", None)
    ds = load_images(data_dir)
    # UMAP needs cuML (GPU) or umap-learn (mixed mode); with neither, K-Means clusters the codes directly
    manifold = "umap" if with_cuml or _version("umap") else "none"
    est = MFVC(
        n_clusters=ds.n_classes,
        epochs=epochs,
        batch_size=256,
        device="cuda",
        backend="auto",
        progress=False,
        manifold=manifold,
        random_state=0,
    ).fit(ds.images)
    res = dict(
        dataset=ds.name,
        n=len(ds),
        epochs=epochs,
        backend=est.backend_,
        device=est.device_,
        note=est.placement_note_,
        manifold=manifold if manifold == "umap" else "none (skipped UMAP: neither cuML nor umap-learn is installed)",
        acc=round(cluster_acc(ds.labels, est.labels_), 4),
        timings={k: round(v, 3) for k, v in est.timings_.items()},
        handoff=est.handoff_,
    )
    if with_cuml and est.backend_ == "rapids":
        z = torch.from_numpy(np.ascontiguousarray(est.latent_)).cuda()
        os.environ["MFVC_TRACE_COPIES"] = "1"
        try:
            for knn in ("brute", "nn-descent"):
                traced = MFVC(n_clusters=ds.n_classes, knn=knn, device="cuda", backend="rapids").fit_features(z)
                h = traced.handoff_
                res[f"traced_{knn}"] = dict(
                    acc=round(cluster_acc(ds.labels, traced.labels_), 4),
                    knn_build=h.get("knn_build"),
                    same_pointer=h.get("same_pointer"),
                    backend_bytes_before_labels=h.get("device_to_host_bytes_before_labels"),
                    cupti_bytes_before_labels=h.get("cupti_device_to_host_bytes_before_labels"),
                    cupti_per_stage=h.get("cupti_device_to_host"),
                )
        finally:
            os.environ.pop("MFVC_TRACE_COPIES", None)
    return res


def _show(title: str, data) -> None:
    print(f"\n== {title}", flush=True)
    if isinstance(data, dict):
        for k, v in data.items():
            if k == "tail":
                print("   " + "\n   ".join(v))
            else:
                print(f"   {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    else:
        print(f"   {data}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="folder holding the MNIST files (default: search the usual places)")
    ap.add_argument("--epochs", type=int, default=5, help="β-VAE epochs of the end-to-end run (default 5)")
    ap.add_argument("--skip-tests", action="store_true", help="skip the pytest step")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    report: dict = {"environment": environment()}
    _show("environment", report["environment"])
    env = report["environment"]
    if not env["cuda_available"]:
        print("\nno CUDA GPU is visible to torch: nothing to check here (this script checks the GPU path)")
        return 2
    if not args.skip_tests:
        report["tests"] = run_tests(TEST_LIMIT_S, args.data_dir)
        _show("pytest -m 'gpu or rapids'", report["tests"])
    if env["cupy"]:
        try:
            report["dlpack"] = dlpack_figures()
        except Exception as exc:  # report and go on: the end-to-end run is still worth having
            report["dlpack"] = {"error": f"{type(exc).__name__}: {exc}"}
        _show("torch -> CuPy via DLPack", report["dlpack"])
    else:
        _show("torch -> CuPy via DLPack", "skipped: CuPy is not installed")
    try:
        report["training"] = training_figures(args.data_dir, BUDGET_S - 150 - (time.perf_counter() - start))
    except Exception as exc:  # report and go on
        report["training"] = {"error": f"{type(exc).__name__}: {exc}"}
    _show("training step and encode", report["training"])
    left = BUDGET_S - (time.perf_counter() - start)
    if left < 90:
        _show("end to end", f"skipped: only {left:.0f} s of the 8-minute budget left")
    else:
        try:
            report["end_to_end"] = end_to_end(args.data_dir, args.epochs, with_cuml=bool(env["cuml"]))
        except Exception as exc:
            report["end_to_end"] = {"error": f"{type(exc).__name__}: {exc}"}
        _show("end to end", report["end_to_end"])
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(f"\ntotal {report['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    failed = report.get("tests", {}).get("returncode", 0) not in (0, 5) or any(
        "error" in report.get(k, {}) for k in ("end_to_end", "training")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
