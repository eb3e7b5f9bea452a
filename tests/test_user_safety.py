"""What users do that must never lose their files or read their data wrong, tested by class.

* ``--overwrite`` replaces only a run folder this tool wrote: never the input, a folder holding it,
  a folder inside it, the home or the working folder, nor any other folder.
* One run per ``--out`` at a time; a finished folder is never replaced by a run that did not own it.
* Outputs of ``predict`` never name one file twice, an input or the model's files.
* Images are read by one documented layout rule; ambiguous shapes are refused.
* ``--resume`` checks the images, not only their number.
* Ctrl-C and SIGTERM stop at a safe point, in every command and stage, with one line.
* Names that are not UTF-8 run; the memory estimate is right; a missing Parquet writer degrades to CSV.
* A failed command leaves no folder it created.

Every refusal: exit status 2, one line on stderr, no traceback, every byte on disk as it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clihelpers import ENV, FAST, N_IMAGES, PIXELS, fails, one_line, snapshot, spawn


def _image_folder(root: Path, x: np.ndarray, y: np.ndarray, names=("zero", "one", "two")) -> Path:
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / names[int(label) % len(names)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def imgs(tmp_path, digits_u8):
    x, y = digits_u8
    keep = y < 3
    return _image_folder(tmp_path / "imgs", x[keep][:45], y[keep][:45])


# ---------------------------------------------------------------- 1. what --overwrite may replace
@pytest.mark.parametrize(
    "where",
    [
        "the input folder",
        "a parent of the input",
        "inside the input",
        "the working folder",
        "the home folder",
        "dot-dot",
        "a plain folder",
    ],
)
def test_overwrite_never_replaces_what_is_not_a_run_folder(cli, tmp_path, imgs, monkeypatch, where):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    out = {
        "the input folder": imgs,
        "a parent of the input": tmp_path,
        "inside the input": imgs / "zero",
        "the working folder": Path("."),
        "the home folder": home,
        "dot-dot": imgs / "zero" / "..",
        "a plain folder": notes,
    }[where]
    before = snapshot(tmp_path)
    line = fails(cli, "cluster", "--dataset", imgs, *PIXELS, "--n-clusters", "3", "--out", out, "--overwrite")
    assert any(w in line for w in ("input", "working folder", "home folder", "'..'", "not a run folder")), line
    assert snapshot(tmp_path) == before


def test_a_run_folder_is_replaced_and_marked(cli, tmp_path, npz):
    out = tmp_path / "run"
    assert cli("cluster", "--dataset", npz, *PIXELS, "--out", out)[0] == 0
    assert json.loads((out / ".mfvc-run").read_text())["written_by"] == "mfvc-gpu"
    (out / "stale.txt").write_text("x")
    assert cli("cluster", "--dataset", npz, *PIXELS, "--out", out, "--overwrite")[0] == 0
    assert not (out / "stale.txt").exists() and (out / "labels.csv").is_file()


def test_a_table_run_keeps_the_same_rule(cli, tmp_path):
    table = tmp_path / "data" / "t.csv"
    table.parent.mkdir()
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.normal(c, 0.2, (30, 3)) for c in (0, 4)])
    table.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.4f}" for v in r) for r in rows) + "\n")
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        table,
        "--n-clusters",
        "2",
        "--manifold",
        "none",
        "--out",
        table.parent,
        "--overwrite",
        fragments=("input",),
    )
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- 2. one run per --out
def test_a_second_run_on_the_same_out_is_refused_and_changes_nothing(tmp_path, npz):
    from mfvc_gpu.runfolder import partial_dir

    out = tmp_path / "run"
    slow = spawn("cluster", "--dataset", npz, *FAST, "--epochs", "40", "--out", out, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (partial_dir(out) / "checkpoint.pt").exists():  # the first run holds the folder and trains
            assert slow.poll() is None and time.monotonic() < deadline, slow.stderr.read() if slow.poll() else ""
            time.sleep(0.05)
        before = snapshot(tmp_path)
        second = spawn("cluster", "--dataset", npz, *FAST, "--out", out, "--overwrite", cwd=tmp_path)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        line = one_line(err.splitlines(), "another mfvc-gpu run", f"pid {slow.pid}", str(out))
        assert "choose another --out" in line
        after = snapshot(tmp_path)
        assert {k: v for k, v in after.items() if "checkpoint" not in k} == {
            k: v for k, v in before.items() if "checkpoint" not in k
        }  # the first run's own writes aside
    finally:
        _, err = slow.communicate(timeout=300)
    assert slow.returncode == 0, err
    assert (out / "labels.csv").is_file() and (out / "config.yaml").is_file() and not partial_dir(out).exists()


def test_a_folder_that_appears_during_a_run_is_not_replaced(cli, tmp_path, npz, monkeypatch):
    from mfvc_gpu import runs

    out = tmp_path / "run"
    real = runs.write_labels_csv

    def meanwhile(path, *a, **k):  # someone else writes --out while this run works
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
        return real(path, *a, **k)

    monkeypatch.setattr(runs, "write_labels_csv", meanwhile)
    line = fails(cli, "cluster", "--dataset", npz, *PIXELS, "--out", out, fragments=("appeared", "kept in"))
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    kept = Path(line.rsplit("kept in ", 1)[1].split()[0].rstrip(";"))
    assert (kept / "labels.csv").is_file() and (kept / "model" / "model.json").is_file()


# ---------------------------------------------------------------- 3. predict's outputs
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, digits_u8):
    from mfvc_gpu.cli import main

    root = tmp_path_factory.mktemp("model")
    x, y = digits_u8
    np.savez(root / "train.npz", images=x[:N_IMAGES], labels=y[:N_IMAGES])
    assert main(["cluster", "--dataset", str(root / "train.npz"), *PIXELS, "--out", str(root / "run")]) == 0
    return root / "run" / "model"


@pytest.mark.parametrize(
    "case", ["same file", "same file another way", "the data set", "inside the model", "the model folder", "a folder"]
)
def test_predict_outputs_name_distinct_new_files(cli, tmp_path, npz, model_dir, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    data = tmp_path / "data.npy"
    np.save(data, np.load(npz)["images"][:10])
    out, emb = {
        "same file": ("result.csv", "result.csv"),
        "same file another way": ("sub/../result.csv", str(tmp_path / "result.csv")),
        "the data set": ("labels.csv", str(data)),
        "inside the model": (str(model_dir / "model.json"), None),
        "the model folder": (str(model_dir), None),
        "a folder": ("sub", None),
    }[case]
    model_before, before = snapshot(model_dir), snapshot(tmp_path)
    args = ["predict", "--model", model_dir, "--dataset", data, "--out", out, "--overwrite", "--device", "cpu"]
    fails(cli, *args, *(["--embedding", emb] if emb else []))
    assert snapshot(tmp_path) == before and snapshot(model_dir) == model_before


def test_a_failed_predict_leaves_no_folder_or_file(cli, tmp_path, model_dir):
    fails(
        cli,
        "predict",
        "--model",
        model_dir,
        "--dataset",
        tmp_path / "missing.npz",
        "--out",
        tmp_path / "new" / "sub" / "labels.csv",
    )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 4. image layouts
@pytest.mark.parametrize("layout", ["NHW", "NHW1", "N1HW", "NHW3", "N3HW", "NHW4"])
def test_every_documented_layout_reads_the_same_images(digits_u8, layout):
    from mfvc_gpu.data.loading import to_images

    x = digits_u8[0][:20]
    reference = to_images(x, 32)
    arr = {
        "NHW": x,
        "NHW1": x[..., None],
        "N1HW": x[:, None],
        "NHW3": np.repeat(x[..., None], 3, -1),
        "N3HW": np.repeat(x[:, None], 3, 1),
        "NHW4": np.concatenate([np.repeat(x[..., None], 3, -1), np.full(x.shape + (1,), 255, np.uint8)], -1),
    }
    np.testing.assert_array_equal(to_images(arr[layout], 32), reference)


@pytest.mark.parametrize(
    "shape", [(10, 3, 4, 4), (10, 1, 8, 1), (10, 8, 8, 2), (10, 2, 8, 8), (28, 28, 3), (10, 8), (2, 10, 8, 8, 1)]
)
def test_ambiguous_shapes_are_refused_naming_the_shape(cli, tmp_path, shape):
    data = tmp_path / "x.npz"
    np.savez(data, images=np.zeros(shape, np.uint8))
    before = snapshot(tmp_path)
    line = fails(cli, "cluster", "--dataset", data, *PIXELS, "--n-clusters", "2", "--out", tmp_path / "run")
    assert str(shape) in line and ("(N, H, W, C)" in line or "images" in line)
    assert snapshot(tmp_path) == before


def test_channel_last_npz_clusters_as_the_plain_stack(cli, tmp_path, digits_u8):
    x, y = digits_u8
    labels = {}
    for name, arr in (("plain", x[:N_IMAGES]), ("keras", x[:N_IMAGES, :, :, None])):
        data = tmp_path / f"{name}.npz"
        np.savez(data, images=arr, labels=y[:N_IMAGES])
        assert cli("cluster", "--dataset", data, *PIXELS, "--out", tmp_path / name)[0] == 0
        labels[name] = (tmp_path / name / "labels.csv").read_text()
    assert labels["plain"] == labels["keras"]


# ---------------------------------------------------------------- 5. resume checks the images
def test_resume_refuses_other_images_of_the_same_count(cli, tmp_path, npz, digits_u8, monkeypatch):
    import torch

    from mfvc_gpu.runfolder import partial_dir

    out = tmp_path / "run"
    real_step = torch.optim.AdamW.step
    steps = []

    def stop_in_epoch_two(self, *a, **k):
        steps.append(1)
        if len(steps) > N_IMAGES // 32:  # epoch 1 finished and checkpointed
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", stop_in_epoch_two)
    assert cli("cluster", "--dataset", npz, *FAST, "--epochs", "3", "--out", out)[0] == 130
    monkeypatch.undo()
    x, y = digits_u8
    other = tmp_path / "other.npz"
    np.savez(other, images=x[300 : 300 + N_IMAGES], labels=y[300 : 300 + N_IMAGES])  # same count and settings
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        other,
        *FAST,
        "--epochs",
        "3",
        "--out",
        out,
        "--resume",
        fragments=("other images", "without --resume"),
    )
    assert snapshot(tmp_path) == before and (partial_dir(out) / "checkpoint.pt").is_file()
    assert cli("cluster", "--dataset", npz, *FAST, "--epochs", "3", "--out", out, "--resume")[0] == 0


# ---------------------------------------------------------------- 6. signals at safe points
def _signal_after(proc: subprocess.Popen, seconds: float, signum: int) -> tuple[int, str]:
    time.sleep(seconds)
    if proc.poll() is None:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("delay", [2.0, 6.0, 12.0])
def test_sigterm_during_predict_is_one_line_at_any_moment(tmp_path, digits_u8, delay):
    """predict with new images rebuilds UMAP (numba) and transforms: the signal lands in those stages."""
    from mfvc_gpu.cli import main

    x, y = digits_u8
    np.savez(tmp_path / "train.npz", images=x[:600], labels=y[:600])
    assert (
        main(
            [
                "cluster",
                "--dataset",
                str(tmp_path / "train.npz"),
                "--encoder",
                "none",
                "--device",
                "cpu",
                "--n-neighbors",
                "10",
                "--no-progress",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    np.savez(tmp_path / "new.npz", images=x[600:1700])
    before = snapshot(tmp_path)
    proc = spawn(
        "predict",
        "--model",
        tmp_path / "run" / "model",
        "--dataset",
        tmp_path / "new.npz",
        "--out",
        tmp_path / "labels.csv",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    rc, err = _signal_after(proc, delay, signal.SIGTERM)
    if rc == 0:
        pytest.skip(f"predict finished within {delay} s on this machine: nothing to interrupt")
    assert rc == 143, err
    one_line(err.splitlines(), "terminated (SIGTERM)")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_training_stops_at_the_next_step(tmp_path, npz, signum, status):
    from mfvc_gpu.runfolder import partial_dir

    out = tmp_path / "run"
    proc = spawn("cluster", "--dataset", npz, *FAST, "--epochs", "40", "--out", out, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (partial_dir(out) / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status
    one_line(err.splitlines(), "--resume")
    assert not out.exists() and sorted(p.name for p in partial_dir(out).iterdir()) == ["checkpoint.pt"]


def test_a_second_signal_stops_at_once_with_one_line():
    code = (
        "import os, signal, time\n"
        "from mfvc_gpu import interrupts\n"
        "with interrupts.catching():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert interrupts.pending() == signal.SIGTERM\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 143
    assert r.stderr.splitlines() == ["mfvc-gpu: SIGTERM again: stopped at once"]


# ---------------------------------------------------------------- 7. names that are not UTF-8
def test_a_folder_and_classes_named_in_latin1_run(tmp_path, digits_u8):
    x, y = digits_u8
    keep = y < 2
    root = Path(os.fsdecode(bytes(tmp_path) + b"/donn\xe9es"))
    _image_folder(root, x[keep][:40], y[keep][:40], names=(os.fsdecode(b"z\xe9ro"), os.fsdecode(b"un\xef")))
    out = Path(os.fsdecode(bytes(tmp_path) + b"/r\xe9sultat"))
    r = subprocess.run(
        [sys.executable, "-m", "mfvc_gpu", "cluster", "--dataset", root, *PIXELS, "--out", out],
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert bytes(out) in r.stdout  # the name printed as the bytes it is
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "donn\ufffdes" and metrics["n_samples"] == 40
    assert (out / "report.html").is_file() and (out / "embedding.png").stat().st_size > 0


# ---------------------------------------------------------------- 8. the memory estimate
def test_large_images_in_a_folder_are_not_refused(cli, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (1500, 2000), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    assert cli("cluster", "--dataset", tmp_path, *PIXELS, "--n-clusters", "3", "--out", tmp_path.parent / "big")[0] == 0


def test_the_memory_estimate_matches_the_measured_peak(tmp_path):
    """``conversion_bytes`` against the peak RSS that ``to_images`` adds, measured in a fresh process."""
    code = (
        "import numpy as np\n"
        "from mfvc_gpu.data.loading import channels_first, conversion_bytes, to_images\n"
        "def kib(key):\n"
        "    line = next(l for l in open('/proc/self/status') if l.startswith(key))\n"
        "    return int(line.split()[1]) * 1024\n"
        "shape = (24, 900, 1200, 3)\n"
        "x = np.frombuffer(np.random.default_rng(0).bytes(int(np.prod(shape))), np.uint8).reshape(shape)\n"
        "to_images(x[:1], 32)\n"  # the libraries' first-call allocations, outside the measurement
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # reset the peak (VmHWM) to the current RSS
        "before = kib('VmRSS')\n"
        "to_images(x, 32)\n"
        "print(conversion_bytes(channels_first(x).shape, 32), kib('VmHWM') - before)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    estimate, peak = map(int, r.stdout.split())
    assert 0.7 * estimate <= peak <= 1.3 * estimate, (estimate, peak)


# ---------------------------------------------------------------- 9. optional writers
def test_a_table_run_without_pyarrow_writes_csv(cli, tmp_path, monkeypatch):
    import mfvc_gpu.tables as tables

    monkeypatch.setattr(tables, "import_problem", lambda m: "pyarrow is not installed" if m == "pyarrow" else None)
    table = tmp_path / "t.csv"
    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.normal(c, 0.2, (30, 3)) for c in (0, 4)])
    table.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.4f}" for v in r) for r in rows) + "\n")
    rc, _, lines = cli(
        "cluster", "--dataset", table, "--n-clusters", "2", "--manifold", "none", "--out", tmp_path / "run"
    )
    assert rc == 0 and len(lines) == 1 and "pip install mfvc_gpu[tables]" in lines[0]
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "labels.csv" in names and "embedding.csv" in names and not any(n.endswith(".parquet") for n in names)
    assert (tmp_path / "run" / "labels.csv").read_text().startswith("row,cluster\n0,")


# ---------------------------------------------------------------- 10. nothing left by a failed command
def test_a_failed_fetch_leaves_no_folder(cli, tmp_path):
    fails(
        cli,
        "datasets",
        "fetch",
        "mnist",
        "--data-dir",
        tmp_path / "new" / "data",
        "--mirror",
        "http://127.0.0.1:9",
        "--no-progress",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_failed_bench_leaves_no_folder(cli, tmp_path):
    fails(cli, "bench", "--quick", "--stages", "bogus", "--out", tmp_path / "NEW", fragments=("bogus",))
    assert list(tmp_path.iterdir()) == []
