"""Dask scale-out on this CPU: a real LocalCluster of 2 worker processes with one thread each.

The reference is the single-process ``MFVC.fit`` on the same MNIST-test images. The raw-pixel
path (``encoder="none"``) keeps the file within a few minutes on a 2-core CPU; the network's
own encode on workers is checked with a tiny seeded β-VAE. The dask-cuda path is marked
``gpu``/``rapids`` and skipped where absent. Under heavy load on a 2-core CPU the file takes
about 3-4 minutes (most of it numba compiling UMAP in each new process).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("distributed")
pytest.importorskip("dask_ml")

from mfvc_gpu import MFVC, MFVCError, cluster_acc, load_dataset  # noqa: E402
from mfvc_gpu.cli import main as cli_main  # noqa: E402
from mfvc_gpu.data import to_images  # noqa: E402
from mfvc_gpu.distributed import connect, disconnect, fit_distributed, on_worker, run_on_partitions  # noqa: E402
from mfvc_gpu.distributed.ddp import load_weights, shard_indices  # noqa: E402
from mfvc_gpu.models import BetaVAE, VAEConfig  # noqa: E402

N = 2000
PIXELS = dict(
    n_clusters=10, encoder="none", metric="euclidean", random_state=0, progress=False, out_of_sample="umap"
)  # the Dask mechanics on raw pixels, with UMAP's own transform (the learned map: test_the_learned_map_...)
WORKER = re.compile(r"tcp://127\.0\.0\.1:\d+")


@pytest.fixture(scope="module")
def client():
    c = connect("local", 2)
    yield c
    disconnect(c)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    ds = load_dataset("mnist-test", data_dir=mnist_dir)
    return ds.images[:N], ds.labels[:N]


@pytest.fixture(scope="module")
def single(mnist):
    """The single-process run the distributed one is compared with (the Dask path clusters with K-Means)."""
    return MFVC(**PIXELS, cluster="kmeans").fit(mnist[0])


@pytest.mark.timeout(600)
def test_labels_match_the_single_process_run(client, mnist, single):
    x, y = mnist
    est = fit_distributed(MFVC(**PIXELS), x, client, sample_size=N)
    assert (
        est.cluster_config_.method == "kmeans" and est.resolved_params()["cluster"] == "kmeans"
    )  # the profile's GMM is not distributed
    acc_single, acc_dask = cluster_acc(y, single.labels_), cluster_acc(y, est.labels_)
    assert abs(acc_dask - acc_single) <= 0.02, (acc_single, acc_dask)
    assert acc_dask > 0.5  # chance is about 0.11
    # the sample is every row, so the UMAP fit on one worker is the single-process fit
    np.testing.assert_allclose(est.embedding_, single.embedding_, atol=1e-3)
    assert est.labels_.shape == (N,) and est.latent_.shape == (N, 1024) and est.embedding_.shape == (N, 10)
    # the local K-Means carries the distributed centres
    assert np.mean(est.cluster_model_.predict(est.embedding_) == est.labels_) > 0.99

    d = est.distributed_
    workers = set(d["workers"])
    assert d["n_workers"] == 2 and len(workers) == 2 and d["backend"] == "cpu" and d["device"] == "cpu"
    assert all(w["nthreads"] == 1 for w in d["workers"].values())
    assert d["partitions"] == 4 and d["encode_partitions_per_worker"] == {w: 2 for w in workers}
    fit_busy = d["stages"]["umap_fit"]["workers"]
    assert d["umap_fit_worker"] == [max(fit_busy, key=lambda w: fit_busy[w]["busy_s"])]  # one worker fitted
    assert set(d["stages"]["kmeans"]["workers"]) == workers  # both took part in K-Means
    assert d["engines"]["kmeans"].startswith("dask_ml.cluster.KMeans")
    assert set(d["peak_memory"]) == workers
    assert all(100 * 2**20 < m["peak_rss_bytes"] < 8 * 2**30 for m in d["peak_memory"].values())
    assert {"scatter", "encode", "umap_fit", "umap_transform", "kmeans", "gather", "total"} <= set(est.timings_)


@pytest.mark.timeout(600)
def test_umap_fits_a_sample_and_both_workers_transform_the_rest(client, mnist, single):
    x, y = mnist
    est = fit_distributed(MFVC(**PIXELS), x, client, sample_size=1500)
    d = est.distributed_
    assert d["umap_sample"] == 1500 and len(d["umap_fit_worker"]) == 1
    transform = d["stages"]["umap_transform"]["workers"]
    assert set(transform) == set(d["workers"])
    assert all(w["busy_s"] > 0.1 for w in transform.values()), transform  # both transformed rows
    assert np.isfinite(est.embedding_).all() and est.embedding_.shape == (N, 10)
    # fitted on 3/4 of the rows: close to the single-process run, not identical
    assert abs(cluster_acc(y, est.labels_) - cluster_acc(y, single.labels_)) <= 0.05


@pytest.mark.timeout(600)
def test_the_learned_map_places_every_row_on_the_workers(client, mnist):
    """out_of_sample='map': UMAP on a sample on one worker, the map trained on it, every partition through the map
    on both workers; the ACC stays near the single-process run with the map, and predict uses the map."""
    x, y = mnist
    params = dict(PIXELS, out_of_sample="map")
    single = MFVC(**params, cluster="kmeans").fit(x)
    est = fit_distributed(MFVC(**params), x, client, sample_size=1500)
    d = est.distributed_
    assert "umap_transform" not in d["stages"] and {"map_fit", "map_transform"} <= set(est.timings_)
    assert set(d["stages"]["map_transform"]["workers"]) == set(d["workers"])
    assert est.embedding_map_ is not None and np.isfinite(est.embedding_).all()
    assert abs(cluster_acc(y, est.labels_) - cluster_acc(y, single.labels_)) <= 0.05
    np.testing.assert_array_equal(est.predict(x[:300]), est.labels_[:300])  # training rows keep their labels


def test_the_network_encodes_on_the_workers(client, mnist, writers):
    """Weights broadcast once, each worker rebuilds the network: same codes as in this process. The
    estimator alone sets its fitted state (the Dask path hands it a result)."""
    from mfvc_gpu.train import encode

    x = mnist[0][:256]
    torch.manual_seed(0)
    net = BetaVAE(VAEConfig(latent_dim=8)).eval()
    est = fit_distributed(
        MFVC(n_clusters=10, latent_dim=8, manifold="none", random_state=0), x, client, model=net, sample_size=256
    )
    images = to_images(x, 32)
    np.testing.assert_allclose(est.latent_, encode(net, images, torch.device("cpu")).numpy(), rtol=1e-4, atol=1e-4)
    assert est.model_ is net and est.vae_config_ == net.cfg
    assert est.embedding_.shape == (256, 8) and est.distributed_["umap_sample"] is None  # K-Means on the codes
    assert writers.ours().keys() == {"mfvc_gpu.estimator"} and "distributed_" in writers.ours()["mfvc_gpu.estimator"]


@pytest.mark.timeout(120)
def test_a_failing_task_names_its_stage_and_worker(client, mnist):
    net = BetaVAE(VAEConfig(latent_dim=8))
    net.cfg = VAEConfig(latent_dim=16)  # weights that do not fit the network the workers build
    t0 = time.perf_counter()
    with pytest.raises(
        MFVCError, match=r"the encode stage failed on worker tcp://.*RuntimeError: Error\(s\) in loading state_dict"
    ) as info:
        fit_distributed(MFVC(n_clusters=10, random_state=0), mnist[0][:64], client, model=net, timeout=60)
    assert time.perf_counter() - t0 < 30
    assert WORKER.search(str(info.value)).group(0) in client.scheduler_info(n_workers=-1)["workers"]


def test_settings_the_dask_path_lacks_are_refused_before_connecting(mnist):
    x = mnist[0][:100]
    with pytest.raises(MFVCError, match="K-Means only"):
        fit_distributed(MFVC(cluster="dbscan"), x, "tcp://127.0.0.1:9")
    with pytest.raises(MFVCError, match="manifold='isomap'"):
        fit_distributed(MFVC(manifold="isomap"), x, "tcp://127.0.0.1:9")
    with pytest.raises(MFVCError, match="sample_size=10 must be an integer above n_neighbors"):
        fit_distributed(MFVC(), x, "tcp://127.0.0.1:9", sample_size=10)


def test_connect_refuses_bad_clusters_quickly():
    with pytest.raises(MFVCError, match="not 'local', 'local-cuda' or a scheduler address"):
        connect("nowhere")
    with pytest.raises(MFVCError, match="n_workers=0"):
        connect("local", 0)
    t0 = time.perf_counter()
    with pytest.raises(MFVCError, match="cannot use the Dask scheduler at tcp://127.0.0.1:9.*dask worker"):
        connect("tcp://127.0.0.1:9", timeout=2)
    assert time.perf_counter() - t0 < 20


def test_local_cuda_without_dask_cuda_says_how_to_install():
    try:
        import dask_cuda  # noqa: F401

        pytest.skip("dask-cuda is installed here")
    except ImportError:
        pass
    with pytest.raises(MFVCError, match="needs dask-cuda.*environment.yml"):
        connect("local-cuda")


@pytest.mark.timeout(300)
def test_cli_runs_on_an_existing_scheduler_and_records_the_workers(client, tmp_path):
    cfg = tmp_path / "pixels.yaml"
    cfg.write_text("encoder: none\n")
    out = tmp_path / "run"
    address = client.scheduler.address
    assert (
        cli_main(
            [
                "cluster",
                "--dataset",
                "digits",
                "--config",
                str(cfg),
                "--dask-cluster",
                address,
                "--n-workers",
                "2",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["distributed"]
    assert d["cluster"] == address and d["n_workers"] == 2
    assert set(d["peak_memory"]) == set(d["workers"]) and set(d["stages"]["encode"]["workers"]) <= set(d["workers"])
    assert metrics["acc"] > 0.5 and metrics["n_samples"] == 1797
    assert (out / "labels.csv").exists() and (out / "model" / "model.json").exists()
    assert client.status == "running"  # an existing cluster is left running


def test_cli_n_workers_needs_a_dask_cluster(capsys):
    assert cli_main(["cluster", "--dataset", "digits", "--n-workers", "2"]) == 2
    assert "--n-workers needs --dask-cluster" in capsys.readouterr().err


def test_ddp_shares_are_equal_and_cover_every_image():
    n, world = 10, 3
    shares = [shard_indices(n, r, world, seed=1) for r in range(world)]
    assert [len(s) for s in shares] == [4, 4, 4]
    assert set(np.concatenate(shares)) == set(range(n))
    assert len(np.concatenate(shares)) - n == 2  # two images repeated to even the shares
    assert not np.array_equal(shares[0], np.arange(0, n, world))  # a seeded permutation, not strides
    with pytest.raises(MFVCError, match="cannot be split over"):
        shard_indices(2, 0, 3)


@pytest.mark.timeout(300)
def test_ddp_two_cpu_processes_train_one_model(tmp_path):
    """torchrun, 2 processes, gloo: disjoint equal shares, replicas identical after training."""
    out = tmp_path / "vae"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mfvc_gpu.distributed.ddp",
        "--dataset",
        "digits",
        "--limit",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--latent-dim",
        "4",
        "--cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "ranks.json").read_text())
    ranks = record["ranks"]
    assert record["world_size"] == 2 and record["backend"] == "gloo" and [r["images"] for r in ranks] == [32, 32]
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # gradients were averaged every step
    net = load_weights(out)
    torch.manual_seed(0)
    untrained = BetaVAE(VAEConfig(latent_dim=4))
    assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), untrained.state_dict().values()))
    assert len(json.loads((out / "history.json").read_text())) == 2


@pytest.mark.gpu
@pytest.mark.rapids
@pytest.mark.timeout(900)
def test_local_cuda_cluster_runs_every_stage_on_the_gpus(digits):
    pytest.importorskip("dask_cuda")
    est = fit_distributed(MFVC(n_clusters=10, epochs=2, random_state=0, progress=False), digits.images, "local-cuda")
    d = est.distributed_
    assert d["backend"] == "rapids" and d["device"] == "cuda" and est.handoff_["array"] == "cupy"
    assert d["engines"]["kmeans"] == "cuml.dask.cluster.KMeans"
    assert est.labels_.shape == (len(digits.images),) and cluster_acc(digits.labels, est.labels_) > 0.5
    assert all("peak_gpu_torch_bytes" in m for m in d["peak_memory"].values())


@pytest.mark.timeout(60)
def test_a_stuck_stage_times_out_instead_of_hanging(client):
    """Last in the file: the sleeping tasks keep the workers busy for a few seconds after it."""

    @on_worker("slow")
    def slow(part):
        time.sleep(6)
        return part

    parts = client.scatter([1, 2], hash=False)
    t0 = time.perf_counter()
    with pytest.raises(MFVCError, match="the slow stage did not finish within 2 s"):
        run_on_partitions(client, "slow", slow, parts, timeout=2)
    assert time.perf_counter() - t0 < 5


def test_ddp_takes_the_network_and_training_flags_from_the_settings_table():
    from mfvc_gpu.distributed.ddp import build_parser, given_settings
    from mfvc_gpu.params import stage_params
    from mfvc_gpu.resolution import resolve

    args = build_parser().parse_args(
        [
            "--out",
            "x",
            "--latent-dim",
            "8",
            "--decoder",
            "upsample",
            "--no-amp",
            "--weight-decay",
            "0",
            "--batch-size",
            "16",
            "--profile",
            "paper",
        ]
    )
    given = given_settings(args)
    assert given == {
        "latent_dim": 8,
        "decoder": "upsample",
        "profile": "paper",
        "batch_size": 16,
        "weight_decay": 0.0,
        "amp": False,
    }
    res = resolve(given | {"device": "cpu"})  # what train_ddp builds its network and loop from
    assert (res.vae.latent_dim, res.vae.decoder, res.train.batch_size, res.train.epochs) == (8, "upsample", 16, 200)
    for stage in ("network", "train"):  # every setting of both stages has its flag, none declared twice
        assert all(hasattr(args, p.name) for p in stage_params(stage))
    with pytest.raises(MFVCError, match=r"beta=-1.0 is invalid: must be"):  # the table's range
        resolve(given_settings(build_parser().parse_args(["--out", "x", "--beta", "-1"])))
