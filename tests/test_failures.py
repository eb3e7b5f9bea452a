"""The reliability suite: every failure a user can cause or meet, run from the CLI as a user would.

Each case asserts the exit status, exactly one line on stderr (with the logging warnings a user
would also see), no traceback, and the file system as it was: nothing partial, nothing lost.
Most cases run ``mfvc_gpu.cli.main`` in this process (cheap, and faults can be injected); those
about real signals, ``kill -9`` and the exact command of the report run ``python -m mfvc_gpu``.

Small data throughout: 64 of scikit-learn's digits as uint8, batches of 32, one or a few epochs,
``--manifold none`` (UMAP is not the point here), ``--encoder none`` where no network is needed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from clihelpers import ENV, FAST, N_IMAGES, PIXELS, fails, one_line, snapshot, spawn, wait_for

from mfvc_gpu import fileio
from mfvc_gpu.cli import main
from mfvc_gpu.errors import MFVCError


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def old_run_template(tmp_path_factory, digits_u8):
    """A finished run folder (no network: fast), copied by the tests that replace one."""
    folder = tmp_path_factory.mktemp("old")
    x, y = digits_u8
    data = folder / "old.npz"
    np.savez(data, images=x[200 : 200 + N_IMAGES], labels=y[200 : 200 + N_IMAGES])
    assert main(["cluster", "--dataset", str(data), *PIXELS, "--out", str(folder / "run")]) == 0
    return folder / "run"


@pytest.fixture
def old_run(tmp_path, old_run_template):
    out = tmp_path / "run"
    shutil.copytree(old_run_template, out)
    return out


def partial(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


@contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A small tmpfs mounted at ``path`` (root only); the test is skipped where mount is not permitted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); the injected-ENOSPC cases cover every write site")
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        path.rmdir()
        pytest.skip(
            f"mount -t tmpfs is not permitted here ({r.stderr.strip() or r.returncode}); "
            "the injected-ENOSPC cases cover every write site"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


# ---------------------------------------------------------------- 1. every OSError is one line
def test_out_under_proc_as_in_the_report(tmp_path):
    """The exact command of the report: a traceback there before; one line now, before any compute."""
    r = subprocess.run(
        [sys.executable, "-m", "mfvc_gpu", "cluster", "--dataset", "digits", "--out", "/proc/mfvc-run"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    one_line(r.stderr.splitlines(), "cannot write the run folder /proc/mfvc-run")
    assert not os.path.exists("/proc/mfvc-run")


def test_name_too_long(cli, tmp_path, npz):
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        npz,
        *PIXELS,
        "--out",
        tmp_path / ("r" * 250),
        fragments=("File name too long", "shorter name"),
    )
    assert snapshot(tmp_path) == before


def test_out_below_a_missing_folder_is_created_only_for_a_run_that_succeeds(cli, tmp_path, npz):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((0, 8, 8), np.uint8))
    fails(cli, "cluster", "--dataset", bad, *PIXELS, "--out", tmp_path / "a" / "b" / "run", fragments=("no images",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]  # a/ and a/b/ removed again


def test_read_only_file_system(cli, tmp_path, npz):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        fails(
            cli,
            "cluster",
            "--dataset",
            npz,
            *PIXELS,
            "--out",
            ro / "run",
            fragments=(str(ro / "run"), "Read-only file system", "writable file system"),
        )
        assert list(ro.iterdir()) == []


def test_full_disk_for_real(cli, tmp_path, npz):
    """A 1 MiB tmpfs: a run whose checkpoint does not fit, and an --overwrite on a full disk."""
    with tmpfs(tmp_path / "small", "1m") as fs:
        # the network's first checkpoint (~24 MB) cannot be written: nothing is left behind
        fails(
            cli,
            "cluster",
            "--dataset",
            npz,
            "--epochs",
            "1",
            *FAST,
            "--out",
            fs / "trained",
            fragments=("checkpoint.pt", "No space left on device", "free some space"),
        )
        assert list(fs.iterdir()) == []
        # a finished run fits; filled up, replacing it with --overwrite fails and loses nothing
        assert cli("cluster", "--dataset", npz, *PIXELS, "--out", fs / "run")[0] == 0
        fill(fs, leave=16 << 10)
        before = snapshot(fs)
        fails(
            cli,
            "cluster",
            "--dataset",
            npz,
            *PIXELS,
            "--overwrite",
            "--out",
            fs / "run",
            fragments=("No space left on device", "free some space"),
        )
        assert snapshot(fs) == before


WRITE_SITES_PIXELS = ["config.yaml", "metrics.json", "labels.csv", "embedding.png", "arrays.npz", "model.json"]


@contextmanager
def enospc_at(monkeypatch, name: str):
    """Every atomic write ends in ``os.replace(tmp, final)``: the one named ``name`` fails with ENOSPC."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(src))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    yield
    monkeypatch.setattr(os, "replace", real)


@pytest.mark.parametrize("site", WRITE_SITES_PIXELS)
def test_enospc_at_each_write_site_keeps_the_old_run(cli, monkeypatch, tmp_path, npz, old_run, site):
    before = snapshot(tmp_path)
    with enospc_at(monkeypatch, site):
        fails(
            cli,
            "cluster",
            "--dataset",
            npz,
            *PIXELS,
            "--overwrite",
            "--out",
            old_run,
            fragments=(site, "No space left on device", "free some space"),
        )
    assert snapshot(tmp_path) == before  # the old run intact, no temporary or partial file anywhere


def test_enospc_at_the_checkpoint_and_the_weights(cli, monkeypatch, tmp_path, npz, old_run):
    """With a network: the first checkpoint failing leaves nothing; the weights failing after training
    keeps the checkpoint (alone) and says so, and --resume then finishes without training again."""
    import torch

    before = snapshot(tmp_path)
    args = ("cluster", "--dataset", npz, "--epochs", "1", *FAST, "--overwrite", "--out", old_run)
    with enospc_at(monkeypatch, "checkpoint.pt"):
        fails(cli, *args, fragments=("checkpoint.pt", "No space left on device"))
    assert snapshot(tmp_path) == before
    with enospc_at(monkeypatch, "weights.pt"):
        fails(cli, *args, fragments=("weights.pt", "No space left on device", "--resume"))
    assert sorted(p.name for p in partial(old_run).iterdir()) == ["checkpoint.pt"]
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(".run.partial")} == before
    steps = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    assert cli(*args, "--resume")[0] == 0
    assert steps == [], "every epoch was in the checkpoint: nothing to train again"
    assert not partial(old_run).exists() and (old_run / "model" / "weights.pt").exists()
    assert json.loads((old_run / "metrics.json").read_text())["n_samples"] == N_IMAGES


def test_fetch_to_a_full_disk_and_to_proc(cli, tmp_path):
    import http.server
    import threading
    from functools import partial as bind

    served = tmp_path / "served"
    served.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (served / name).write_bytes(os.urandom(200_000))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), bind(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        fails(
            cli,
            "datasets",
            "fetch",
            "mnist-test",
            "--data-dir",
            "/proc/mfvc-data",
            "--mirror",
            url,
            "--no-progress",
            fragments=("/proc/mfvc-data", "choose another location"),
        )
        with tmpfs(tmp_path / "small", "64k") as fs:
            fails(
                cli,
                "datasets",
                "fetch",
                "mnist-test",
                "--data-dir",
                fs,
                "--mirror",
                url,
                "--no-progress",
                fragments=(str(fs), "No space left on device"),
            )
            assert list(fs.iterdir()) == []  # no partial download
    finally:
        server.shutdown()


def test_reproduce_to_an_unwritable_folder(cli, tmp_path):
    fails(
        cli,
        "reproduce",
        "--table",
        "4",
        "--datasets",
        "digits",
        "--limit",
        "200",
        "--epochs",
        "1",
        "--seeds",
        "1",
        "--variants",
        "kmeans-pixels",
        "--device",
        "cpu",
        "--backend",
        "cpu",
        "--no-progress",
        "--out",
        "/proc/mfvc-repro",
        fragments=("/proc/mfvc-repro",),
    )


# ---------------------------------------------------------------- 2. --overwrite never loses the old run
def _two_runs(tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    out, work = tmp_path / "run", tmp_path / ".run.partial"
    for folder, tag in ((out, b"old"), (work, b"new")):
        (folder / "model").mkdir(parents=True)
        for name in ("config.yaml", "labels.csv", "model/weights.pt"):
            (folder / name).write_bytes(tag + name.encode())
    return out, work, snapshot(out), snapshot(work)


def _can_exchange(folder: Path) -> bool:
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return fileio._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


# the moments a kill can land while a finished run replaces an old one (fileio.publish_dir)
CRASH_POINTS = [
    "exchange-before",
    "exchange-after",
    "aside-before",
    "aside-after",
    "publish-before",
    "publish-after",
    "remove-before",
    "remove-midway",
    "remove-after",
]


def _crash_in_child(point: str, exchange: bool, out: Path, work: Path) -> int:
    """In a forked child: publish ``work`` to ``out`` and die with os._exit (as kill -9 would: no
    cleanup runs) at ``point``. Returns the child's exit status: 9 if it died there, 0 if the
    point is not on this path."""
    step, when = point.rsplit("-", 1)
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        try:
            real_exchange, real_replace, real_rename, real_unlink = fileio._exchange, os.replace, os.rename, os.unlink
            real_rmtree = shutil.rmtree

            def at(name, fn):
                def wrapped(*a, **k):
                    if name == step and when == "before":
                        os._exit(9)
                    result = fn(*a, **k)
                    if name == step and when in ("after", "midway"):
                        os._exit(9)
                    return result

                return wrapped

            def moving(fn):
                def move(src, dst, *a, **k):
                    name = "aside" if Path(dst).name.endswith(".old") else "publish" if Path(dst) == out else None
                    return (at(name, fn) if name else fn)(src, dst, *a, **k)

                return move

            fileio._exchange = at("exchange", real_exchange if exchange else (lambda a, b: False))
            os.replace, os.rename = moving(real_replace), moving(real_rename)
            shutil.rmtree = at("remove", real_rmtree) if when != "midway" else real_rmtree
            if when == "midway":
                os.unlink = at("remove", real_unlink)  # dies after the first file of the old folder is deleted
            fileio.publish_dir(work, out)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    code = os.WEXITSTATUS(status)
    assert code in (0, 9), f"the child failed (status {status})"
    return code


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash is simulated in a forked child")
@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "rename-aside"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_overwrite_killed_at_each_step_leaves_the_old_run_or_the_new_one(tmp_path, point, exchange):
    out, work, old, new = _two_runs(tmp_path)
    if exchange and not _can_exchange(tmp_path):
        pytest.skip("this file system has no atomic exchange of names (renameat2 RENAME_EXCHANGE)")
    _crash_in_child(point, exchange, out, work)
    if exchange:  # at every moment a complete run stands at out
        assert out.is_dir() and snapshot(out) in (old, new)
    fileio.recover_dir(out)  # what the next run does first: a rename-aside killed midway is put back
    assert out.is_dir() and snapshot(out) in (old, new)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names in (["run"], [".run.partial", "run"]), names  # no .old copy survives the next run
    if names == [".run.partial", "run"]:  # both runs still exist: nothing lost
        assert {tuple(snapshot(out).items()), tuple(snapshot(work).items())} == {tuple(old.items()), tuple(new.items())}
    else:
        assert snapshot(out) == new


@pytest.mark.parametrize("step", ["exchange", "aside", "remove"])
def test_overwrite_failing_at_each_step_loses_nothing(tmp_path, monkeypatch, step):
    """An OSError (not a crash) at each step: one MFVCError naming the folder, and a complete run at out."""
    out, work, old, new = _two_runs(tmp_path)
    boom = OSError(errno.EIO, os.strerror(errno.EIO))
    if step == "exchange":
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: (_ for _ in ()).throw(boom))
    elif step == "aside":
        real = os.replace
        monkeypatch.setattr(
            os, "replace", lambda s, d, *a, **k: (_ for _ in ()).throw(boom) if str(d).endswith(".old") else real(s, d)
        )
    else:
        monkeypatch.setattr(fileio.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(boom))
    try:
        fileio.publish_dir(work, out)
    except MFVCError as exc:
        assert step == "exchange" and "\n" not in str(exc) and str(out) in str(exc) and "input/output error" in str(exc)
        assert snapshot(out) == old and snapshot(work) == new
    else:
        assert snapshot(out) == new  # the old copy is only garbage now, removed by the next run
    monkeypatch.undo()
    fileio.recover_dir(out)
    assert snapshot(out) in (old, new)


def test_overwrite_replaces_the_whole_folder(cli, tmp_path, npz, old_run):
    (old_run / "stale.txt").write_text("from an older version")
    assert cli("cluster", "--dataset", npz, *PIXELS, "--overwrite", "--out", old_run)[0] == 0
    assert sorted(p.name for p in old_run.iterdir()) == [
        ".mfvc-run",
        "clusters.png",
        "config.yaml",
        "embedding.png",
        "labels.csv",
        "metrics.json",
        "model",
        "report.html",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no .partial, no .old


# ---------------------------------------------------------------- 3. interruptions
def _interrupt(*a, **k):
    raise KeyboardInterrupt


STAGES = {  # where Ctrl-C lands: (module path, attribute) raising KeyboardInterrupt
    "load": ("mfvc_gpu.data.readers", "read_npz"),
    "manifold": ("mfvc_gpu.backends.cpu.CPUBackend", "fit_manifold"),
    "cluster": ("mfvc_gpu.backends.cpu.CPUBackend", "fit_cluster"),
    "labels": ("mfvc_gpu.runs", "write_labels_csv"),
    "plot": ("mfvc_gpu.runs", "plot_embedding"),
    "save": ("mfvc_gpu.estimator.MFVC", "save"),
    "publish": ("mfvc_gpu.fileio", "_exchange"),
}


def _resolve(dotted: str):
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("stage", list(STAGES))
def test_ctrl_c_at_each_stage(cli, monkeypatch, tmp_path, npz, old_run, stage):
    where, name = STAGES[stage]
    monkeypatch.setattr(_resolve(where), name, _interrupt)
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        npz,
        *PIXELS,
        "--overwrite",
        "--out",
        old_run,
        status=130,
        fragments=("interrupted", "--resume"),
    )
    assert snapshot(tmp_path) == before  # no network, so no checkpoint to keep: exactly as it was


def test_ctrl_c_in_training_keeps_only_the_checkpoint(cli, monkeypatch, tmp_path, npz, old_run):
    import torch

    calls = []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:  # the first step of epoch 2, after the checkpoint of epoch 1
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        npz,
        "--epochs",
        "2",
        *FAST,
        "--overwrite",
        "--out",
        old_run,
        status=130,
        fragments=("interrupted", "--resume"),
    )
    assert sorted(p.name for p in partial(old_run).iterdir()) == ["checkpoint.pt"]
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(".run.partial")} == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_real_signal_during_training(tmp_path, npz, sig):
    out = tmp_path / "run"
    proc = spawn("cluster", "--dataset", npz, "--epochs", "20", *FAST, "--out", out, cwd=tmp_path)
    wait_for(partial(out) / "checkpoint.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them
    one_line(err.splitlines(), "--resume", "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted")
    assert not out.exists()
    assert sorted(p.name for p in partial(out).iterdir()) == ["checkpoint.pt"]


def test_kill_9_then_resume_is_bit_identical(cli, monkeypatch, tmp_path, npz):
    """kill -9 in epoch 2 or 3 of 4, then --resume: only the missing epochs are trained, and the labels
    and scores are the uninterrupted run's, bit for bit (CPU, fixed seed)."""
    import torch

    args = ("cluster", "--dataset", npz, "--epochs", "4", *FAST)
    out = tmp_path / "killed"
    proc = spawn(*args, "--out", out, cwd=tmp_path)
    wait_for(partial(out) / "checkpoint.pt", proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    done = int(torch.load(partial(out) / "checkpoint.pt", weights_only=True)["epoch"])
    assert 1 <= done < 4
    # what the kill leaves when it lands inside the atomic write of the next checkpoint
    (partial(out) / f".checkpoint.pt.{proc.pid}.tmp").write_bytes(b"half a checkpoint")
    steps = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    assert cli(*args, "--out", out, "--resume")[0] == 0
    assert len(steps) == (4 - done) * (N_IMAGES // 32), "the resumed run trains only the missing epochs"
    assert not partial(out).exists()
    assert sorted(p.name for p in out.iterdir()) == [
        ".mfvc-run",
        "clusters.png",
        "config.yaml",
        "embedding.png",
        "labels.csv",
        "metrics.json",
        "model",
        "report.html",
    ]
    whole = tmp_path / "whole"
    assert cli(*args, "--out", whole)[0] == 0
    assert (out / "labels.csv").read_bytes() == (whole / "labels.csv").read_bytes()
    scores = [
        {k: json.loads((d / "metrics.json").read_text())[k] for k in ("acc", "nmi", "purity", "ari", "final_loss")}
        for d in (out, whole)
    ]
    assert scores[0] == scores[1]


# ---------------------------------------------------------------- 4. numerical failure
def test_diverging_loss(cli, tmp_path, npz):
    before = snapshot(tmp_path)
    line = fails(cli, "cluster", "--dataset", npz, "--epochs", "2", "--lr", "1e6", *FAST, "--out", tmp_path / "run")
    assert "diverged" in line and "--lr" in line
    assert snapshot(tmp_path) == before


def test_floating_point_error_is_one_line(cli, monkeypatch, tmp_path, npz):
    import mfvc_gpu.estimator as estimator

    def diverge(*a, **k):
        raise FloatingPointError("the loss became nan at epoch 1")

    monkeypatch.setattr(estimator, "fit_vae", diverge)
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        npz,
        *FAST,
        "--out",
        tmp_path / "run",
        fragments=("training diverged", "the loss became nan", "--lr", "check the input"),
    )
    assert snapshot(tmp_path) == before


def test_nan_features(cli, monkeypatch, tmp_path, npz):
    import torch

    import mfvc_gpu.estimator as estimator
    from mfvc_gpu import train
    from mfvc_gpu.models import BetaVAE

    monkeypatch.setattr(estimator, "fit_vae", lambda network, *a, **k: (BetaVAE(network), []))
    monkeypatch.setattr(train, "encode", lambda model, images, device, **k: torch.full((len(images), 4), float("nan")))
    before = snapshot(tmp_path)
    fails(
        cli, "cluster", "--dataset", npz, *FAST, "--out", tmp_path / "run", fragments=("NaN", "lower the learning rate")
    )
    assert snapshot(tmp_path) == before


def test_collapsed_embedding(cli, tmp_path):
    same = tmp_path / "same.npz"
    np.savez(same, images=np.full((N_IMAGES, 8, 8), 100, np.uint8))
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        same,
        "--n-clusters",
        "3",
        *PIXELS,
        "--out",
        tmp_path / "run",
        fragments=("collapsed", "check"),
    )
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- 5. untrusted files
class Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    marker = str(Path(tempfile.gettempdir()) / f"mfvc-gpu-payload-ran-{os.getpid()}")

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, digits_u8):
    from mfvc_gpu import MFVC

    x, _ = digits_u8
    est = MFVC(n_clusters=5, epochs=1, batch_size=32, manifold="none", device="cpu", backend="cpu", progress=False)
    return est.fit(x[:N_IMAGES]).save(tmp_path_factory.mktemp("model") / "model")


def _edit_json(key_path, value):
    def edit(folder: Path):
        meta = json.loads((folder / "model.json").read_text())
        d = meta
        for k in key_path[:-1]:
            d = d[k]
        d[key_path[-1]] = value
        (folder / "model.json").write_text(json.dumps(meta))

    return edit


def _truncate(folder: Path):
    data = (folder / "weights.pt").read_bytes()
    (folder / "weights.pt").write_bytes(data[: len(data) // 2])


def _pickle_weights(folder: Path):
    import torch

    torch.save({"encoder.weight": Payload()}, folder / "weights.pt")


def _pickle_arrays(folder: Path):
    np.savez(
        folder / "arrays.npz",
        latent=np.array([Payload()], dtype=object),
        embedding=np.zeros((1, 2)),
        labels=np.zeros(1, int),
    )


TAMPERING = {
    "unknown key": (_edit_json(["surprise"], 1), "unknown entry 'surprise'"),
    "unknown setting": (_edit_json(["params", "gamma"], 1), "unknown setting 'gamma'"),
    "wrong type": (_edit_json(["params", "latent_dim"], "32"), "latent_dim='32' is invalid"),
    "wrong stage type": (_edit_json(["train", "lr"], [0.1]), "lr=[0.1] is invalid"),
    "newer format": (_edit_json(["format_version"], 99), "newer mfvc_gpu"),
    "format as text": (_edit_json(["format_version"], "2"), "format_version"),
    "truncated weights": (_truncate, "weights.pt"),
    "pickle in weights": (_pickle_weights, "weights.pt"),
    "pickle in arrays": (_pickle_arrays, "arrays.npz"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_model_folder_is_refused(tmp_path, saved_model, case):
    from mfvc_gpu import MFVC

    edit, fragment = TAMPERING[case]
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    edit(folder)
    Path(Payload.marker).unlink(missing_ok=True)
    with pytest.raises(MFVCError) as info:
        MFVC.load(folder)
    message = str(info.value)
    assert "\n" not in message and fragment in message and ("refused" in message or "damaged" in message)
    assert not Path(Payload.marker).exists(), "a payload in the model folder ran"


@pytest.mark.parametrize("case", ["pickle", "truncated"])
def test_tampered_checkpoint_is_refused_on_resume(cli, tmp_path, npz, case):
    import torch

    out = tmp_path / "run"
    partial(out).mkdir()
    ckpt = partial(out) / "checkpoint.pt"
    if case == "pickle":
        torch.save({"epoch": 1, "model": Payload()}, ckpt)
    else:
        torch.save({"epoch": torch.zeros(100_000)}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    Path(Payload.marker).unlink(missing_ok=True)
    before = snapshot(tmp_path)
    fails(cli, "cluster", "--dataset", npz, "--epochs", "2", *FAST, "--out", out, "--resume", fragments=("checkpoint",))
    assert not Path(Payload.marker).exists(), "a payload in the checkpoint ran"
    assert snapshot(tmp_path) == before


def test_config_yaml_is_read_as_safe_yaml(cli, tmp_path, npz):
    conf = tmp_path / "config.yaml"
    conf.write_text(f'epochs: !!python/object/apply:os.system ["touch {Payload.marker}"]\n')
    Path(Payload.marker).unlink(missing_ok=True)
    fails(cli, "cluster", "--config", conf, "--out", tmp_path / "run", fragments=(str(conf), "no Python objects"))
    assert not Path(Payload.marker).exists()
    conf.write_bytes(b"\xff\xfe not text")
    fails(cli, "cluster", "--config", conf, "--out", tmp_path / "run", fragments=("not UTF-8",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize(
    "content", [b"[1, 2, 3]", b"\x80\x04not json", b'{"no": "status"}'], ids=["list", "binary", "no-status"]
)
def test_tampered_reproduction_cache_is_refused(cli, tmp_path, content):
    from mfvc_gpu.reproduce.runner import Runner
    from mfvc_gpu.reproduce.variants import KMEANS_PIXELS

    out = tmp_path / "repro"
    runner = Runner(out, epochs=1, device="cpu", backend="cpu", limit=200, compute=False)
    path = runner.result_path("digits", KMEANS_PIXELS, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    fails(
        cli,
        "reproduce",
        "--table",
        "4",
        "--datasets",
        "digits",
        "--limit",
        "200",
        "--epochs",
        "1",
        "--seeds",
        "1",
        "--variants",
        "kmeans-pixels",
        "--device",
        "cpu",
        "--backend",
        "cpu",
        "--no-progress",
        "--report-only",
        "--out",
        out,
        fragments=(path.name, "refused", "delete it"),
    )
    assert path.read_bytes() == content


# ---------------------------------------------------------------- 6. bad data, said out loud
def _folder(root: Path, images, mode=None, labels=None) -> Path:
    from PIL import Image

    for i, a in enumerate(images):
        cls = root / f"c{labels[i] if labels is not None else i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        (Image.fromarray(a, mode) if mode else Image.fromarray(a)).save(cls / f"{i:03d}.png")
    return root


def test_images_of_mixed_sizes(cli, tmp_path, digits_u8):
    x, _ = digits_u8
    root = _folder(tmp_path / "imgs", list(x[:20]))
    _folder(tmp_path / "imgs", [np.zeros((12, 12), np.uint8)], labels=[0])
    (tmp_path / "imgs" / "c0" / "000.png").rename(tmp_path / "imgs" / "c0" / "odd.png")
    _folder(tmp_path / "imgs", [x[0]], labels=[0])
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        root,
        *PIXELS,
        "--n-clusters",
        "2",
        "--out",
        tmp_path / "run",
        fragments=("2 different sizes", "8x8", "12x12", "odd.png", "resize"),
    )
    assert snapshot(tmp_path) == before


def test_16_bit_and_rgba_pngs_read_as_their_8_bit_grey(cli, tmp_path, digits_u8):
    """The same digits as 8-bit grey, 16-bit grey and white-with-alpha PNGs: the same labels."""
    x, y = digits_u8
    x, y = x[:N_IMAGES], y[:N_IMAGES] % 2
    rgba = np.zeros((*x.shape, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 255, x  # transparency is the digit: composited over black, it is the grey image
    folders = {
        "grey8": _folder(tmp_path / "grey8", list(x), labels=y),
        "grey16": _folder(tmp_path / "grey16", list(x.astype(np.uint16) * 257), labels=y),
        "rgba": _folder(tmp_path / "rgba", list(rgba), "RGBA", labels=y),
    }
    labels = {}
    for name, folder in folders.items():
        rc, _, lines = cli("cluster", "--dataset", folder, *PIXELS, "--out", tmp_path / f"run-{name}")
        assert rc == 0, lines
        labels[name] = (tmp_path / f"run-{name}" / "labels.csv").read_text()
        if name == "rgba":
            assert any("alpha channel" in line for line in lines), lines  # said out loud
    assert labels["grey16"] == labels["grey8"] and labels["rgba"] == labels["grey8"]


def test_a_corrupt_image_is_named(cli, tmp_path, digits_u8):
    x, _ = digits_u8
    root = _folder(tmp_path / "imgs", list(x[:20]))
    (root / "c1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        root,
        *PIXELS,
        "--out",
        tmp_path / "run",
        fragments=("broken.png", "not a readable image", "--bad-images skip"),
    )
    assert snapshot(tmp_path) == before


def test_a_corrupt_image_is_skipped_with_a_count(cli, tmp_path, digits_u8):
    x, _ = digits_u8
    root = _folder(tmp_path / "imgs", list(x[:20]))
    (root / "c1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc, _, lines = cli("cluster", "--dataset", root, *PIXELS, "--bad-images", "skip", "--out", tmp_path / "run")
    assert rc == 0, lines
    assert any("left out 1 of 21" in line and "broken.png" in line for line in lines), lines
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_samples"] == 20


BAD_ARRAYS = {
    "object array": (
        lambda p: np.savez(p, images=np.array([Payload(), Payload()], dtype=object)),
        ".npz",
        ("array of Python objects", "without unpickling"),
    ),
    "empty npy": (lambda p: np.save(p, np.zeros((0, 8, 8), np.uint8)), ".npy", ("holds no images",)),
    "npy of nothing": (lambda p: np.save(p, np.zeros(0)), ".npy", ("holds no images",)),
    "pickled npy": (
        lambda p: np.save(p, np.array([Payload()], dtype=object), allow_pickle=True),
        ".npy",
        ("pickle", "refused"),
    ),
    "negative label": (
        lambda p: np.savez(p, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, -3, 2])),
        ".npz",
        ("'labels' holds -3 at index 2", "0, 1, 2"),
    ),
    "fractional label": (
        lambda p: np.savez(p, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2.5, 2])),
        ".npz",
        ("2.5", "whole numbers"),
    ),
    "labels of another length": (
        lambda p: np.savez(p, images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(3)),
        ".npz",
        ("(3,)", "(4,)"),
    ),
    "truncated npz": (lambda p: p.write_bytes(b"PK\x03\x04 and then nothing"), ".npz", ("not a readable .npz",)),
}


@pytest.mark.parametrize("case", list(BAD_ARRAYS))
def test_bad_arrays_are_refused(cli, tmp_path, case):
    make, suffix, fragments = BAD_ARRAYS[case]
    path = tmp_path / f"data{suffix}"
    make(path)
    Path(Payload.marker).unlink(missing_ok=True)
    before = snapshot(tmp_path)
    fails(
        cli,
        "cluster",
        "--dataset",
        path,
        *PIXELS,
        "--n-clusters",
        "2",
        "--out",
        tmp_path / "run",
        fragments=(str(path), *fragments),
    )
    assert not Path(Payload.marker).exists(), "a pickle in the data ran"
    assert snapshot(tmp_path) == before


def test_pixel_ranges_are_said_and_pixel_max_names_white(cli, tmp_path):
    """The raw digits (floats 0..16): refused with the range found and --pixel-max; with
    --pixel-max 16 they cluster."""
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = tmp_path / "raw.npz"
    np.savez(raw, images=d.images[:N_IMAGES], labels=d.target[:N_IMAGES])
    before = snapshot(tmp_path)
    fails(cli, "cluster", "--dataset", raw, *PIXELS, "--out", tmp_path / "run", fragments=("[0, 16]", "--pixel-max"))
    assert snapshot(tmp_path) == before
    wide = tmp_path / "wide.npz"
    np.savez(wide, images=np.linspace(-1, 3, N_IMAGES * 64).reshape(N_IMAGES, 8, 8).astype(np.float32))
    fails(
        cli,
        "cluster",
        "--dataset",
        wide,
        *PIXELS,
        "--n-clusters",
        "2",
        "--out",
        tmp_path / "run",
        fragments=("[-1, 3]", "--pixel-max"),
    )
    rc, _, lines = cli("cluster", "--dataset", raw, *PIXELS, "--pixel-max", "16", "--out", tmp_path / "run")
    assert rc == 0, lines
    import yaml

    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["pixel_max"] == 16.0
