"""How the learned map was chosen: its training length, and where the clusterer is fitted.

    python benchmarks/map_design.py --data-dir ../shared/data/mnist --dataset mnist --seed 0 --out runs/map-design

Fits MFVC with ``out_of_sample='umap'`` (the CPU defaults otherwise) on the first ``--fit`` images of the
training split, once (the model folder is kept under OUT and reused). Then, for each number of map training
steps, trains the map on the training codes and UMAP's coordinates and labels the test split two ways:

* ``UMAP's clusterer``: the map's coordinates labelled by the clusterer fitted on UMAP's own embedding;
* ``refitted clusterer`` (what ``out_of_sample='map'`` does): the clusterer refitted on the map's output
  of the training codes from where it stands, then used for the fitted and the new images alike.

The reference is UMAP's own ``transform`` of the test codes with the UMAP-space clusterer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/map_design.py", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--fit", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default="1000,1500,2500,3000,6000")
    p.add_argument("--out", type=Path, default=Path("runs/map-design"))
    a = p.parse_args(argv)

    import torch

    from mfvc_gpu import MFVC, embedding_map, load_dataset
    from mfvc_gpu.backends import get_backend
    from mfvc_gpu.metrics import evaluate

    train = load_dataset(a.dataset, "train", a.data_dir)
    test = load_dataset(a.dataset, "test", a.data_dir)
    folder = a.out / f"model-{a.dataset}-seed{a.seed}"
    if not (folder / "model.json").exists():
        MFVC(random_state=a.seed, out_of_sample="umap", progress=False).fit(train.images[: a.fit]).save(folder)
    est = MFVC.load(folder, device="cpu")
    z, emb, y = est.latent_, est.embedding_, train.labels[: a.fit]
    with torch.inference_mode():
        zt = est.labeller(match=False).codes(test.images)
    t0 = time.perf_counter()
    by_umap = est.predict(test.images)
    umap_s = time.perf_counter() - t0
    backend, device = get_backend("cpu"), torch.device("cpu")
    state = backend.cluster_state(est.cluster_model_)
    print(f"# {a.dataset}, seed {a.seed}: a fit on {len(z)} training images, {len(test)} test images\n")
    print(
        f"UMAP transform (refit included, {umap_s:.0f} s): test ACC {evaluate(test.labels, by_umap)['acc']:.4f}, "
        f"fit ACC {evaluate(y, est.labels_)['acc']:.4f}\n"
    )
    print(
        "| steps | map s | UMAP's clusterer: fit agreement / test ACC | refitted clusterer: fit ACC / test ACC / "
        "agreement with UMAP transform |"
    )
    print("|---:|---:|---|---|")
    for steps in (int(s) for s in a.steps.split(",")):
        embedding_map.STEPS = embedding_map.MIN_STEPS = steps  # exactly this many
        m, u, record = embedding_map.fit_map(z, emb, a.seed, device)
        ut = embedding_map.apply_map(m, zt, device)
        fixed = embedding_map.TorchClusterer(state, device)
        agree = float((fixed(u).numpy() == est.labels_).mean())
        acc_fixed = evaluate(test.labels, fixed(ut).numpy())["acc"]
        refitted, labels = backend.refine_cluster(est.cluster_model_, u.numpy(), a.seed)
        new = embedding_map.TorchClusterer(backend.cluster_state(refitted), device)(ut).numpy()
        print(
            f"| {steps} | {record['seconds']:.1f} | {agree:.4f} / {acc_fixed:.4f} | "
            f"{evaluate(y, labels)['acc']:.4f} / {evaluate(test.labels, new)['acc']:.4f} / "
            f"{(new == by_umap).mean():.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
