import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mfvc_gpu.cli import main
from mfvc_gpu.runfolder import partial_dir


@pytest.fixture
def small_npz(tmp_path, digits):
    path = tmp_path / "small.npz"
    np.savez(path, images=digits.images[:300, 0], labels=digits.labels[:300])  # uint8
    return path


def run_cli(*args):
    return main([str(a) for a in args])


def test_cluster_writes_a_complete_run_folder(small_npz, tmp_path, capsys):
    out = tmp_path / "run"
    rc = run_cli("cluster", "--dataset", small_npz, "--epochs", "1", "--latent-dim", "8", "--out", out, "--no-progress")
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".mfvc-run",  # what --overwrite may replace
        "clusters.png",
        "config.yaml",
        "embedding.png",
        "labels.csv",
        "metrics.json",
        "model",
        "report.html",
    ]
    m = json.loads((out / "metrics.json").read_text())
    for key in ("acc", "nmi", "purity", "ari", "n_samples", "n_clusters", "backend", "device", "profile", "timings"):
        assert key in m
    assert m["n_samples"] == 300 and m["n_clusters"] == 10 and m["backend"] == "cpu"
    assert 0.0 <= m["acc"] <= 1.0 and m["timings"]["train"] > 0
    import torch

    from mfvc_gpu.train import native_bf16

    native = native_bf16(torch.device("cpu"))
    assert m["training"]["precision"] == ("bfloat16 autocast" if native else "float32")  # what ran, said in the record
    assert m["training"]["compiled"] is False and m["training"]["images_per_s"] > 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["epochs"] == 1 and cfg["latent_dim"] == 8
    assert (cfg["profile"], cfg["device"], cfg["backend"], cfg["batch_size"]) == ("fast", "cpu", "cpu", 64)  # as it ran
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0] == "index,cluster,label" and len(lines) == 301
    assert (out / "embedding.png").read_bytes()[:4] == b"\x89PNG"
    assert not partial_dir(out).exists()
    assert "ACC" in capsys.readouterr().out


def test_config_file_round_trip(small_npz, tmp_path):
    out = tmp_path / "run"
    assert (
        run_cli(
            "cluster",
            "--dataset",
            small_npz,
            "--epochs",
            "1",
            "--latent-dim",
            "4",
            "--manifold",
            "none",
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    again = tmp_path / "again"
    assert run_cli("cluster", "--config", out / "config.yaml", "--out", again, "--no-progress") == 0
    a = yaml.safe_load((out / "config.yaml").read_text())
    b = yaml.safe_load((again / "config.yaml").read_text())
    assert a == b
    ma = json.loads((out / "metrics.json").read_text())
    mb = json.loads((again / "metrics.json").read_text())
    assert ma["acc"] == pytest.approx(mb["acc"])  # same seed, same settings, same CPU: same result


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "no-such-set"], "unknown data set 'no-such-set'"),
        (["--dataset", "digits", "--n-clusters", "5000"], "n_clusters=5000 exceeds the number of samples"),
        (["--dataset", "digits", "--beta", "-2"], "beta=-2.0"),
        (["--dataset", "digits", "--backend", "rapids"], "rapids"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent-dir"], "datasets fetch mnist"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert run_cli("cluster", *args, "--epochs", "1", "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_corrupt_input_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    assert run_cli("cluster", "--dataset", bad, "--out", tmp_path / "r") == 2
    assert "not a readable .npz" in capsys.readouterr().err


def test_existing_and_unwritable_output(small_npz, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    assert run_cli("cluster", "--dataset", small_npz, "--out", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert run_cli("cluster", "--dataset", small_npz, "--out", locked / "run") == 2
        err = capsys.readouterr().err
        assert "cannot write the run folder" in err and "Permission denied" in err and err.count("\n") == 1
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    assert run_cli("cluster", "--dataset", small_npz, "--out", blocked / "run") == 2
    err = capsys.readouterr().err
    assert "cannot create the folder" in err and str(blocked) in err and err.count("\n") == 1


def test_resume_continues_from_the_checkpoint(small_npz, tmp_path, monkeypatch):
    import torch

    out = tmp_path / "run"
    orig, calls = torch.optim.AdamW.step, {"n": 0}

    def stop_in_epoch_2(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 4:  # 300 images // 64 per batch = 4 steps per epoch (the last partial batch is dropped)
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    def count_steps(self, *a, **k):
        calls["n"] += 1
        return orig(self, *a, **k)

    args = ("cluster", "--dataset", small_npz, "--epochs", "2", "--manifold", "none", "--no-progress")
    monkeypatch.setattr(torch.optim.AdamW, "step", stop_in_epoch_2)
    assert run_cli(*args, "--out", out) == 130
    assert not out.exists() and (partial_dir(out) / "checkpoint.pt").exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", count_steps)
    calls["n"] = 0
    assert run_cli(*args, "--out", out, "--resume") == 0
    assert calls["n"] == 4, "the resumed run must train only the missing epoch (4 steps)"
    assert not partial_dir(out).exists()
    whole = tmp_path / "whole"
    assert run_cli(*args, "--out", whole) == 0
    resumed_labels = (out / "labels.csv").read_text()
    assert resumed_labels == (whole / "labels.csv").read_text(), "resume must end with the uninterrupted run's labels"


def test_datasets_list_and_verify(mnist_dir, capsys):
    assert run_cli("datasets", "list", "--data-dir", mnist_dir, "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["digits"]["found"] and rows["mnist"]["found"] and rows["mnist"]["bytes"] > 11_000_000
    assert rows["usps"]["found"] is False or rows["usps"]["where"]
    assert run_cli("datasets", "verify", "--data-dir", mnist_dir) == 0
    text = capsys.readouterr().out
    assert "mnist" in text and "BAD" not in text


def test_module_entry_point_and_help():
    r = subprocess.run([sys.executable, "-m", "mfvc_gpu", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "cluster" in r.stdout and "datasets" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "mfvc_gpu", "cluster", "--epochs", "many"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "'many' is not an integer >= 1" in r.stderr
