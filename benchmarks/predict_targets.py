"""Labelling new images with a model fitted on a sample: the learned map against UMAP's own transform.

    python benchmarks/predict_targets.py --data-dir ../shared/data/mnist --datasets mnist,fashion-mnist \
        --seeds 0,1,2 --out runs/predict-targets

For each data set and seed: fit MFVC (the CPU defaults: the fast profile, out_of_sample='map') on the first
``--fit`` images of the training split; fit the same stages with ``out_of_sample='umap'`` on the same codes
(``fit_features``, seeded alike: the same UMAP); then label the whole test split both ways and time each
step. Writes one JSON per (data set, seed) under OUT (a finished one is not computed again: the runs resume
where they stopped) and OUT/predict_targets.md with the table and the means.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/predict_targets.py", description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="mnist,fashion-mnist")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fit", type=int, default=10_000, help="training images the model is fitted on (default 10000)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the profile's)")
    p.add_argument("--data-dir", help="folder searched first for the data sets")
    p.add_argument("--out", type=Path, default=Path("runs/predict-targets"))
    return p.parse_args(argv)


def one(dataset: str, seed: int, a: argparse.Namespace) -> dict:
    import torch

    from mfvc_gpu import MFVC, load_dataset
    from mfvc_gpu.metrics import evaluate

    train = load_dataset(dataset, "train", a.data_dir)
    test = load_dataset(dataset, "test", a.data_dir)
    x = train.images[: a.fit]
    t0 = time.perf_counter()
    est = MFVC(random_state=seed, progress=False, **({"epochs": a.epochs} if a.epochs else {})).fit(x)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    umap = MFVC(**dict(est.get_params(), out_of_sample="umap")).fit_features(est.latent_)
    umap_fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.inference_mode():
        codes = est.labeller(match=False).codes(test.images).cpu().numpy()
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    by_map = est.predict(test.images)  # encoder + map + clusterer, as a user calls it
    map_predict_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    by_umap = umap.predict(codes)  # UMAP transform + clusterer on the same codes
    umap_place_s = time.perf_counter() - t0
    return dict(
        dataset=dataset,
        seed=seed,
        fit_images=len(x),
        test_images=len(test),
        epochs=est.train_config_.epochs,
        fit_acc_map=evaluate(train.labels[: a.fit], est.labels_)["acc"],
        fit_acc_umap=evaluate(train.labels[: a.fit], umap.labels_)["acc"],
        test_acc_map=evaluate(test.labels, by_map)["acc"],
        test_acc_umap=evaluate(test.labels, by_umap)["acc"],
        test_nmi_map=evaluate(test.labels, by_map)["nmi"],
        test_nmi_umap=evaluate(test.labels, by_umap)["nmi"],
        fit_s=fit_s,
        map_fit_s=est.timings_.get("map"),
        umap_refit_s=umap_fit_s,
        encode_s=encode_s,
        map_predict_s=map_predict_s,
        umap_predict_without_encoder_s=umap_place_s,
    )


def table(records: list[dict]) -> str:
    head = (
        "| data | seed | fit ACC (map / UMAP) | test ACC map | test ACC UMAP transform | Δ | encoder s | "
        "predict s (map, encoder incl.) | UMAP transform + clusterer s |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = [
        f"| {r['dataset']} | {r['seed']} | {r['fit_acc_map']:.4f} / {r['fit_acc_umap']:.4f} | "
        f"{r['test_acc_map']:.4f} | "
        f"{r['test_acc_umap']:.4f} | {r['test_acc_map'] - r['test_acc_umap']:+.4f} | {r['encode_s']:.1f} | "
        f"{r['map_predict_s']:.1f} | {r['umap_predict_without_encoder_s']:.1f} |"
        for r in records
    ]
    means = []
    for ds in sorted({r["dataset"] for r in records}):
        rs = [r for r in records if r["dataset"] == ds]
        m = {k: statistics.mean(r[k] for r in rs) for k in ("test_acc_map", "test_acc_umap")}
        means.append(
            f"- {ds}, {len(rs)} seed(s): test ACC map {m['test_acc_map']:.4f}, UMAP transform {m['test_acc_umap']:.4f} "
            f"(Δ {m['test_acc_map'] - m['test_acc_umap']:+.4f})"
        )
    return head + "\n".join(rows) + "\n\n" + "\n".join(means) + "\n"


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    from mfvc_gpu.fileio import make_dirs, write_json, write_text

    a = parse_args(argv)
    make_dirs(a.out)
    records = []
    for dataset in a.datasets.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            path = a.out / f"{dataset}-seed{seed}.json"
            if not path.exists():
                print(f"{dataset} seed {seed}: fitting on {a.fit} images ...", flush=True)
                write_json(path, one(dataset, seed, a))
            r = json.loads(path.read_text())
            print(
                f"{dataset} seed {seed}: test ACC map {r['test_acc_map']:.4f}, UMAP {r['test_acc_umap']:.4f}",
                flush=True,
            )
            records.append(r)
    command = "python benchmarks/predict_targets.py " + " ".join(sys.argv[1:])
    machine = platform.processor() or platform.machine()
    text = f"# Learned map against UMAP's transform\n\nCommand: `{command}`  \nMachine: {machine}\n\n"
    write_text(a.out / "predict_targets.md", text + table(records))
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
