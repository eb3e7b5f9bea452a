"""What the command-line reliability tests share: running ``mfvc-gpu`` as a user would and checking
what the user sees (one line on stderr, no traceback) and what is left on disk (every byte)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfvc_gpu.cli import main

REPO = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu", "--backend", "cpu", "--no-progress"]
FAST = ["--manifold", "none", "--batch-size", "32", *CPU]  # 64 images: two steps an epoch
PIXELS = ["--encoder", "none", *FAST]  # no network at all: the stages after it, and every write site
N_IMAGES = 64  # the images of the npz fixture


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder): the file system, to compare."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


class CLI:
    """``mfvc-gpu`` in this process: the exit status, stdout, and what a user sees on stderr
    (stderr itself and the logging warnings, which pytest takes away from stderr)."""

    def __init__(self, capsys, caplog):
        self.capsys, self.caplog = capsys, caplog

    def __call__(self, *args) -> tuple[int, str, list[str]]:
        self.capsys.readouterr()
        self.caplog.clear()
        with self.caplog.at_level(logging.WARNING):
            rc = main([str(a) for a in args])
        captured = self.capsys.readouterr()
        lines = captured.err.splitlines() + [
            r.getMessage() for r in self.caplog.records if r.levelno >= logging.WARNING
        ]
        return rc, captured.out, lines


def one_line(lines: list[str], *fragments: str) -> str:
    """The one line on stderr, holding every fragment, and no traceback."""
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}: {lines}"
    line = lines[0]
    assert "Traceback" not in line and line.startswith("mfvc-gpu: "), line
    for f in fragments:
        assert f in line, f"{f!r} not in {line!r}"
    return line


def fails(cli, *args, fragments=(), status=2) -> str:
    rc, _, lines = cli(*args)
    line = one_line(lines, *fragments)
    assert rc == status, (rc, line)
    return line


ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def spawn(*args, cwd: Path) -> subprocess.Popen:
    import torch

    env = dict(ENV, OMP_NUM_THREADS=str(torch.get_num_threads()))  # the same kernels, the same bits, as in this process
    return subprocess.Popen(
        [sys.executable, "-m", "mfvc_gpu", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {path.name} appeared: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)
