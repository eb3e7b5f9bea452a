"""Peak memory of loading and encoding N synthetic 28×28 images: does it stay near the uint8 data?

    python benchmarks/memory.py --sizes 100k,1M          # each size in a fresh process

For each size a child process makes N random 28×28 uint8 images (MNIST's shape), converts them
to the network's 1×32×32 uint8 storage (``mfvc_gpu.data.to_images``) and encodes them with an
untrained β-VAE in batches (``mfvc_gpu.train.encode``, CPU). It reports the process's peak RSS
after each step against the sizes that bound it: the 28×28 input, the 32×32 uint8 storage, the
float32 codes, and one conversion chunk. Prints a Markdown table (docs/BENCHMARKS.md has the run).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
import torch
from mfvc_gpu.data import to_images
from mfvc_gpu.models import BetaVAE, VAEConfig
from mfvc_gpu.train import encode

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

n = int(sys.argv[1])
torch.set_num_threads(2)
out = {"n": n, "baseline_mib": peak_mib()}
x = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
out["input_mib"] = x.nbytes / 2**20
out["after_input_mib"] = peak_mib()
t0 = time.perf_counter()
images = to_images(x, 32, "synthetic")
out["convert_s"] = time.perf_counter() - t0
del x
out["storage_mib"] = images.nbytes / 2**20
out["after_convert_mib"] = peak_mib()
if sys.argv[2] == "1":
    model = BetaVAE(VAEConfig())
    t0 = time.perf_counter()
    z = encode(model, images, torch.device("cpu"), batch_size=1024)
    out["encode_s"] = time.perf_counter() - t0
    out["codes_mib"] = z.numel() * 4 / 2**20
    out["after_encode_mib"] = peak_mib()
print(json.dumps(out))
"""


def parse_sizes(text: str) -> list[int]:
    mult = {"k": 1_000, "m": 1_000_000}
    return [int(float(t[:-1]) * mult[t[-1].lower()]) if t[-1].lower() in mult else int(t) for t in text.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/memory.py", description=__doc__.strip().splitlines()[0])
    p.add_argument("--sizes", default="100k,1M", help="numbers of images, e.g. 100k,1M (default)")
    p.add_argument(
        "--encode-max",
        default="1M",
        help="encode only sizes up to this (CPU encoding runs at about "
        "1,300 images/s on 2 cores: 1M takes 13 minutes); default 1M",
    )
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args(argv)
    import torch

    rows = []
    for n in parse_sizes(a.sizes):
        enc = "1" if n <= parse_sizes(a.encode_max)[0] else "0"
        r = subprocess.run([sys.executable, "-c", CHILD, str(n), enc], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"n={n}: failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(
        f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}"
    )
    print(
        "| images | 28×28 input MiB | 32×32 uint8 storage MiB | codes MiB | peak RSS after input | after "
        "convert | after encode | convert s | encode s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        enc = (
            (f"{r['codes_mib']:.0f}", f"{r['after_encode_mib']:.0f}", f"{r['encode_s']:.1f}")
            if "encode_s" in r
            else ("—",) * 3
        )
        print(
            f"| {r['n']:,} | {r['input_mib']:.0f} | {r['storage_mib']:.0f} | {enc[0]} | {r['after_input_mib']:.0f} | "
            f"{r['after_convert_mib']:.0f} | {enc[1]} | {r['convert_s']:.1f} | {enc[2]} |"
        )
    if a.json:
        from mfvc_gpu.fileio import write_json

        write_json(a.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
