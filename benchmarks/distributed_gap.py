"""How much the Dask path loses against one process when UMAP is fitted on a sample: UMAP's own transform of
the other rows against the learned map.

    python benchmarks/distributed_gap.py --data-dir ../shared/data/mnist --n 10000 --sample-size 2500

Raw pixels of the first ``--n`` MNIST-test images (no network: nothing to train), or their codes under the
network of a saved model (``--model``), UMAP on ``--metric``
distances, K-Means (the Dask path's clusterer). Four fits, each with seed 0: one process with each
``out_of_sample`` (UMAP on every row), then ``fit_distributed`` on ``--workers`` local workers with each
(UMAP on ``--sample-size`` rows). Prints and writes OUT/distributed_gap.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

# benchmarks/distributed.py would shadow the dask "distributed" package for scripts run from this folder
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/distributed_gap.py", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--sample-size", type=int, default=2500)
    p.add_argument("--metric", default="cosine")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model", type=Path, help="a saved model folder: its trained network encodes (else raw pixels)")
    p.add_argument("--out", type=Path, default=Path("runs/distributed-gap"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from mfvc_gpu import MFVC, cluster_acc, load_dataset
    from mfvc_gpu.distributed import connect, disconnect, fit_distributed
    from mfvc_gpu.fileio import make_dirs, write_text

    ds = load_dataset("mnist-test", data_dir=a.data_dir)
    x, y = ds.images[: a.n], ds.labels[: a.n]
    base = dict(n_clusters=10, metric=a.metric, cluster="kmeans", random_state=0, progress=False)
    net = None
    if a.model:  # the saved network's codes (trained elsewhere), not raw pixels
        net = MFVC.load(a.model, device="cpu").model_
        base["latent_dim"] = net.cfg.latent_dim
        codes = MFVC.load(a.model, device="cpu").labeller(match=False).codes(x).numpy()
    else:
        base["encoder"] = "none"
    rows = []
    for oos in ("umap", "map"):
        t0 = time.perf_counter()
        est = MFVC(**base, out_of_sample=oos)
        est = est.fit_features(codes) if net is not None else est.fit(x)
        rows.append(("one process, UMAP on every row", oos, cluster_acc(y, est.labels_), time.perf_counter() - t0))
        print(rows[-1], flush=True)
    client = connect("local", a.workers)
    try:
        for oos in ("umap", "map"):
            t0 = time.perf_counter()
            est = fit_distributed(MFVC(**base, out_of_sample=oos), x, client, model=net, sample_size=a.sample_size)
            what = f"Dask, {a.workers} workers, UMAP on {a.sample_size} rows"
            rows.append((what, oos, cluster_acc(y, est.labels_), time.perf_counter() - t0))
            print(rows[-1], flush=True)
    finally:
        disconnect(client)
    ref = {oos: acc for what, oos, acc, _ in rows if what.startswith("one process")}
    text = [
        f"# The Dask path's gap: {a.n} MNIST-test images, {f'the codes of {a.model}' if a.model else 'raw pixels'},"
        f" {a.metric} UMAP, K-Means, seed 0",
        "",
        f"Command: `python benchmarks/distributed_gap.py {' '.join(sys.argv[1:])}`",
        "",
        "| fit | out_of_sample | ACC | against one process with the same setting | s |",
        "|---|---|---:|---:|---:|",
    ]
    text += [f"| {w} | {o} | {acc:.4f} | {acc - ref[o]:+.4f} | {s:.0f} |" for w, o, acc, s in rows]
    make_dirs(a.out)
    write_text(a.out / "distributed_gap.md", "\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
