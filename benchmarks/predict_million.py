"""Label a million images with a saved model, as a user would: ``mfvc-gpu predict`` on a 1M-image ``.npy``.

    mfvc-gpu cluster --dataset mnist --split train --data-dir ../shared/data/mnist --fit-sample 20000 \
        --epochs 3 --out runs/m20k --no-progress
    python benchmarks/predict_million.py --model runs/m20k/model --data-dir ../shared/data/mnist --out runs/million

Builds OUT/images.npy once (the 70k MNIST images as the loader gives them, uint8 32×32, repeated to ``--n``:
1 GB at 1M), then runs
``mfvc-gpu predict --model MODEL --dataset OUT/images.npy --out OUT/labels.csv`` in a child process and
records its wall time, its peak resident memory (the child's ``ru_maxrss``), the images per second and the
rows of labels.csv, in OUT/predict_million.json. Also times ``MFVC.load`` and building the labeller (what
happens before the first image is labelled).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/predict_million.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--data-dir")
    p.add_argument("--out", type=Path, default=Path("runs/million"))
    a = p.parse_args(argv)

    import numpy as np

    from mfvc_gpu import MFVC, load_dataset
    from mfvc_gpu.fileio import make_dirs, write_json

    make_dirs(a.out)
    images = a.out / "images.npy"
    if not images.exists():
        raw = np.concatenate(
            [np.asarray(load_dataset("mnist", s, a.data_dir).images[:, 0]) for s in ("train", "test")]
        )  # (70000, 32, 32) uint8
        np.save(images, np.resize(raw, (a.n, *raw.shape[1:])))
        del raw
    t0 = time.perf_counter()
    est = MFVC.load(a.model, device="cpu")
    est.labeller()
    ready_s = time.perf_counter() - t0
    labels = a.out / "labels.csv"
    cmd = ["mfvc-gpu", "predict", "--model", str(a.model), "--dataset", str(images), "--out", str(labels)]
    cmd += ["--overwrite", "--no-progress", "--device", "cpu"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rows = sum(1 for _ in labels.open()) - 1 if labels.exists() else 0
    record = dict(
        command=" ".join(cmd),
        status=done.returncode,
        stdout=done.stdout.strip().splitlines(),
        stderr=done.stderr.strip().splitlines()[-5:],
        images=a.n,
        model_rows=len(est.latent_),
        load_and_labeller_s=ready_s,
        wall_s=wall,
        images_per_s=a.n / wall,
        peak_rss_mib=peak_kib / 1024,
        labels_csv_rows=rows,
        cpu_count=os.cpu_count(),
        python=sys.version.split()[0],
    )
    write_json(a.out / "predict_million.json", record)
    print(json.dumps(record, indent=2))
    return 0 if done.returncode == 0 and rows == a.n else 1


if __name__ == "__main__":
    raise SystemExit(main())
