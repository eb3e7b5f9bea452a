"""The Dask path on this machine: 1 against 2 local workers, every stage timed, peak memory per worker.

    python benchmarks/distributed.py --data-dir ../shared/data/mnist            # MNIST-test, 10k images
    python benchmarks/distributed.py --workers 1,2,4 --repeats 5 --weights runs/vae-ddp

For each worker count a fresh ``LocalCluster`` (processes, one thread each) is started, one
warm-up fit is run (numba compiles UMAP in every new worker process; not timed), then
``--repeats`` timed fits of :func:`mfvc_gpu.distributed.fit_distributed`: scatter, encode,
UMAP fit on a sample (one worker), UMAP transform of the other rows (out_of_sample="umap"; the learned map:
benchmarks/distributed_gap.py), K-Means (dask-ml), gather.
The same network encodes in one process (``MFVC.fit_features`` on its codes) as the reference for
ACC. Without ``--weights`` the network is an untrained seeded β-VAE: the timings hold, the ACC
only compares the paths with each other.

Writes OUT/distributed.csv (one row per workers, repeat, stage), OUT/distributed.md (medians and
peak memory per worker) and OUT/distributed.json (every run record).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

# benchmarks/distributed.py would shadow the dask "distributed" package for scripts run from this folder
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

log = logging.getLogger("benchmarks.distributed")

STAGES = ("scatter", "encode", "umap_fit", "umap_transform", "kmeans", "gather", "total")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/distributed.py", description=__doc__.strip().splitlines()[0])
    p.add_argument("--data-dir", help="folder with the MNIST files")
    p.add_argument("--n", type=int, default=10_000, help="images of MNIST-test (default all 10 000)")
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    p.add_argument("--repeats", type=int, default=3, help="timed fits per worker count (at least 3)")
    p.add_argument("--sample-size", type=int, default=5000, help="rows UMAP is fitted on (default 5000)")
    p.add_argument(
        "--weights",
        help="a folder written by 'python -m mfvc_gpu.distributed.ddp' (default: an untrained seeded network)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench-distributed"))
    return p.parse_args(argv)


def single_process(model, images, labels) -> dict:
    """The reference: encode in this process, then ``fit_features`` (UMAP on every row, scikit-learn K-Means)."""
    from mfvc_gpu import MFVC, cluster_acc
    from mfvc_gpu.train import encode

    t0 = time.perf_counter()
    z = encode(model, images, torch.device("cpu")).numpy()
    t_encode = time.perf_counter() - t0
    est = MFVC(n_clusters=10, latent_dim=model.cfg.latent_dim, random_state=0, out_of_sample="umap").fit_features(z)
    return {
        "encode": t_encode,
        **{k: v for k, v in est.timings_.items()},
        "acc": cluster_acc(labels, est.labels_),
        "torch_threads": torch.get_num_threads(),
    }


def run_workers(n_workers: int, model, x, y, args) -> tuple[list[dict], dict]:
    from mfvc_gpu import MFVC, cluster_acc
    from mfvc_gpu.distributed import connect, disconnect, fit_distributed

    t0 = time.perf_counter()
    client = connect("local", n_workers)
    start_s = time.perf_counter() - t0
    rows, record = [], {}
    try:
        for rep in range(-1, args.repeats):  # rep -1: warm-up
            est = MFVC(
                n_clusters=10, latent_dim=model.cfg.latent_dim, random_state=0, progress=False, out_of_sample="umap"
            )
            fit_distributed(est, x, client, model=model, sample_size=args.sample_size)
            acc = cluster_acc(y, est.labels_)
            log.info(
                "%d worker(s), %s: %s, ACC %.4f",
                n_workers,
                "warm-up" if rep < 0 else f"repeat {rep + 1}",
                ", ".join(f"{s} {est.timings_.get(s, 0):.1f}s" for s in STAGES),
                acc,
            )
            if rep >= 0:
                rows += [
                    {"workers": n_workers, "rep": rep, "stage": s, "seconds": est.timings_.get(s), "acc": acc}
                    for s in STAGES
                ]
            record = est.distributed_
    finally:
        disconnect(client)
    record["cluster_start_s"] = start_s
    return rows, record


def markdown(rows: list[dict], records: dict, ref: dict, args, n: int) -> str:
    counts = sorted({r["workers"] for r in rows})
    med = {
        (w, s): statistics.median(r["seconds"] for r in rows if r["workers"] == w and r["stage"] == s)
        for w in counts
        for s in STAGES
    }
    accs = {w: [r["acc"] for r in rows if r["workers"] == w and r["stage"] == "total"] for w in counts}
    lines = [
        f"# Dask path, {n} MNIST-test images, {' vs '.join(map(str, counts))} local workers (one thread each)",
        "",
        f"Command: `python benchmarks/distributed.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared); "
        f"torch {torch.__version__}; median of {args.repeats} repeats after one warm-up; "
        f"load average at the end {', '.join(f'{v:.2f}' for v in os.getloadavg())}.",
        "",
        "| stage | " + " | ".join(f"{w} worker{'s' if w > 1 else ''} (s)" for w in counts) + " | speed-up |",
        "|---|" + "---|" * len(counts) + "---|",
    ]
    for s in STAGES:
        speed = med[(counts[0], s)] / med[(counts[-1], s)] if med[(counts[-1], s)] else float("nan")
        lines.append(f"| {s} | " + " | ".join(f"{med[(w, s)]:.2f}" for w in counts) + f" | {speed:.2f}× |")
    lines += [
        "",
        "| | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in counts) + " |",
        "|---|" + "---|" * len(counts),
        "| ACC (per repeat) | " + " | ".join(", ".join(f"{a:.4f}" for a in accs[w]) for w in counts) + " |",
        "| peak RSS per worker (MiB) | "
        + " | ".join(
            ", ".join(f"{m['peak_rss_bytes'] / 2**20:.0f}" for m in records[w]["peak_memory"].values()) for w in counts
        )
        + " |",
        "| cluster start (s) | " + " | ".join(f"{records[w]['cluster_start_s']:.1f}" for w in counts) + " |",
        "",
        f"Single process (this process, {ref['torch_threads']} torch threads; UMAP on every row, scikit-learn "
        "K-Means): "
        f"encode {ref['encode']:.2f} s, UMAP {ref['manifold']:.2f} s, K-Means {ref['cluster']:.2f} s, ACC "
        f"{ref['acc']:.4f}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.repeats < 3:
        raise SystemExit("--repeats must be at least 3 (medians)")
    from mfvc_gpu import load_dataset
    from mfvc_gpu.data import to_images
    from mfvc_gpu.distributed.ddp import load_weights
    from mfvc_gpu.models import BetaVAE, VAEConfig

    ds = load_dataset("mnist-test", data_dir=args.data_dir)
    x, y = ds.images[: args.n], ds.labels[: args.n]
    if args.weights:
        model = load_weights(args.weights)
    else:
        torch.manual_seed(0)
        model = BetaVAE(VAEConfig(latent_dim=32)).eval()
    ref = single_process(model, to_images(x, 32), y)
    log.info("single process: %s", ref)
    rows, records = [], {}
    for w in sorted({int(v) for v in args.workers.split(",")}):
        r, records[w] = run_workers(w, model, x, y, args)
        rows += r
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "distributed.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["workers", "rep", "stage", "seconds", "acc"])
        wr.writeheader()
        wr.writerows(rows)
    (args.out / "distributed.json").write_text(
        json.dumps({"single_process": ref, "records": records}, indent=2, default=str)
    )
    text = markdown(rows, records, ref, args, len(x))
    (args.out / "distributed.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
