"""The run folder: where a run is built, who may write it, and what ``--overwrite`` may replace.

* A run is built in a hidden ``.NAME.partial`` folder beside ``--out`` (which also keeps the
  training checkpoint for ``--resume``) and renamed to ``--out`` only when everything is written.
* One run per ``--out`` at a time: the run holds an exclusive lock (``fcntl.flock``) on that
  working folder from before it touches anything until its folder is published. A second run on
  the same ``--out`` is refused with one line naming the first (its pid and start, from the
  folder's ``.owner`` record) and changes nothing.
* ``--overwrite`` replaces only a run folder this tool wrote (one holding ``.mfvc-run``, or the
  ``config.yaml``, ``metrics.json`` and ``model/model.json`` of one); never the input data, a
  folder that holds it, the home or the working folder. ``--out`` inside the input folder is
  refused too (the run's images would become input next time).
* The finished folder is published only if ``--out`` is still what the run found at its start
  (absent, or a run folder it may replace); otherwise the results stay in the working folder and
  the error says where.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MFVCError
from .fileio import FileSystemError, make_dirs, os_error, publish_dir, recover_dir, remove_stale_temps, write_text

try:
    import fcntl
except ImportError:  # no flock (Windows): runs on one --out are not serialised there
    fcntl = None  # type: ignore[assignment]

CHECKPOINT = "checkpoint.pt"
MARKER = ".mfvc-run"  # in every run folder: what --overwrite may replace
OWNER = ".owner"  # in the working folder while a run holds it: who
LEGACY = ("config.yaml", "metrics.json", "model/model.json")  # a run folder written before the marker


def partial_dir(out: Path) -> Path:
    """Where a run is built (and its checkpoint kept) until it is complete."""
    return out.parent / f".{out.name}.partial"


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a run folder this tool wrote (so ``--overwrite`` may replace it)."""
    path = Path(path)
    return path.is_dir() and ((path / MARKER).is_file() or all((path / p).is_file() for p in LEGACY))


def guard_out(out: Path, inputs: list[Path]) -> None:
    """Refuse an ``--out`` that names, holds or sits inside the input, or names the home, the working or the
    root folder, whatever ``--overwrite`` says."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise MFVCError(f"--out {out} names a folder by '.' or '..'; give the run folder a name of its own")
    target = out.resolve()
    protected = {
        Path.home().resolve(): "your home folder",
        Path.cwd().resolve(): "the working folder",
        Path(target.anchor): "the root folder",
    }
    if target in protected:
        raise MFVCError(f"--out {out} is {protected[target]}; a run folder must be a folder of its own")
    for given in inputs:
        data = Path(given).resolve()
        if target == data or target in data.parents:
            raise MFVCError(f"--out {out} is or holds the input {given}; choose a folder outside the data")
        if data.is_dir() and data in target.parents:
            raise MFVCError(
                f"--out {out} is inside the input folder {given}; its files would be read as data "
                "next time: choose a folder outside it"
            )


def missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing, p = [], Path(folder)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed command created, deepest first, as long as they are empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


class Claim:
    """A run's hold on ``out``: the working folder exists and is locked by this process."""

    def __init__(self, out: Path, overwrite: bool, existed: bool, created: list[Path], fd: int | None) -> None:
        self.out, self.overwrite, self.existed, self.created, self.fd = out, overwrite, existed, created, fd
        self.work = partial_dir(out)

    def check_out(self, when: str) -> None:
        """``out`` is absent, or a run folder that ``--overwrite`` may replace."""
        out = self.out
        if not out.exists() and not out.is_symlink():
            return
        if not self.overwrite:
            raise MFVCError(f"{out} already exists{when}; choose another --out or pass --overwrite")
        if not out.is_dir():
            raise MFVCError(f"{out} is a file, not a run folder; choose another --out")
        if not is_run_folder(out):
            raise MFVCError(
                f"{out} is not a run folder written by mfvc-gpu (no {MARKER}); --overwrite replaces "
                "only run folders: choose another --out"
            )


def _owner_of(work: Path) -> str:
    try:
        rec = json.loads((work / OWNER).read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec["started"])))
        return f" (pid {int(rec['pid'])}, started {started})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _lock(work: Path, out: Path) -> int | None:
    if fcntl is None:
        return None
    fd = os.open(work, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise MFVCError(
                f"another mfvc-gpu run{_owner_of(work)} is writing {out}; wait for it to finish, or "
                "choose another --out"
            ) from None
        raise
    write_text(work / OWNER, json.dumps({"pid": os.getpid(), "started": time.time()}))
    return fd


@contextmanager
def claim(out: Path, overwrite: bool, inputs: list[Path]) -> Iterator[Claim]:
    """Take ``out`` for one run, before any compute: the guards, then the working folder created (a
    read-only or full file system, a path under ``/proc`` or a name too long fails here) and locked,
    then ``out`` checked. Folders this made are removed again if the run fails before it publishes."""
    out = Path(out)
    guard_out(out, inputs)
    work = partial_dir(out)
    created: list[Path] = []
    fd, owned = None, False
    try:
        created = missing_ancestors(out.parent)
        make_dirs(out.parent)
        existed = work.is_dir()
        try:
            work.mkdir(exist_ok=True)
        except OSError as exc:
            raise os_error(out, exc, "write the run folder") from exc
        if not existed:
            created.insert(0, work)
        if not os.access(work, os.W_OK | os.X_OK) or not os.access(out.parent, os.W_OK):
            raise os_error(out, OSError(errno.EACCES, os.strerror(errno.EACCES)), "write the run folder")
        fd = _lock(work, out)
        owned = True
        recover_dir(out)  # an old run that a killed --overwrite left aside on a file system without atomic exchange
        c = Claim(out, overwrite, existed, created, fd)
        c.check_out("")
    except OSError as exc:  # e.g. a name too long for the hidden working folder
        _release(fd, work, owned)
        remove_empty(created if owned or not work.is_dir() else [d for d in created if d != work])
        raise os_error(out, exc, "write the run folder") from exc
    except BaseException:
        _release(fd, work, owned)
        if not owned:  # another run holds the working folder, or it could not be made: leave it be
            created = [d for d in created if d != work]
        remove_empty(created)
        raise
    try:
        yield c
    except BaseException:
        _release(fd, work, owned)
        if work.is_dir() and not any(p.name != OWNER for p in work.iterdir()):
            shutil.rmtree(work, ignore_errors=True)  # nothing worth keeping: as if the run never started
        remove_empty([d for d in created if d != work])
        raise
    _release(fd, out, owned)


def _release(fd: int | None, folder: Path, owned: bool) -> None:
    """Give up the lock; the owner record goes with it (only this run's own: never another run's)."""
    if owned and folder.is_dir():
        (folder / OWNER).unlink(missing_ok=True)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


# ---------------------------------------------------------------- the working folder
def start_work(c: Claim, resume: bool) -> Path:
    """The working folder, emptied (except the checkpoint) unless ``resume``; with ``resume`` only the
    temporary files of a killed process are removed. A new run that fails early loses nothing of an old one."""
    if c.existed and not resume:
        _keep_only_checkpoint(c.work)
    elif c.existed:
        remove_stale_temps(c.work)  # what a kill -9 in the middle of an atomic write left behind
    return c.work


def _keep_only_checkpoint(work: Path) -> None:
    for p in work.iterdir():
        if p.name in (CHECKPOINT, OWNER):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


class OutChanged(MFVCError):
    """``--out`` changed while the run worked: the results stay in the working folder."""


def after_failure(c: Claim, exc: BaseException) -> BaseException:
    """Tidy the working folder of a run that stopped with ``exc``; return the exception to raise.

    What is kept: the training checkpoint, alone, when the run was interrupted (Ctrl-C, SIGTERM) or
    stopped by the file system (a full disk, ...): ``--resume`` continues from it, and the error
    says so; everything, when ``--out`` changed under the run. A run stopped by anything else (bad
    data, a diverging loss) removes the folder it created. The run folder ``out`` itself is never
    touched: it is replaced only by a finished run."""
    work = c.work
    if not work.exists() or isinstance(exc, OutChanged):
        return exc
    resumable = isinstance(exc, (KeyboardInterrupt, FileSystemError))
    keep = (resumable or c.existed) and (work / CHECKPOINT).is_file()
    if keep:
        _keep_only_checkpoint(work)
        if isinstance(exc, FileSystemError):
            again = FileSystemError(
                f"{exc}; the finished epochs are kept in {work}: rerun with --resume once fixed", exc.path, exc.errno
            )
            again.__cause__ = exc.__cause__
            return again
    elif c.existed:
        _keep_only_checkpoint(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return exc


@contextmanager
def building(c: Claim, resume: bool) -> Iterator[Path]:
    """The working folder a run writes in; published to ``out`` when the block completes, else left as
    :func:`after_failure` decides (its checkpoint kept for ``--resume`` where it helps)."""
    work = start_work(c, resume)
    try:
        yield work
        publish(c)
    except BaseException as exc:
        failure = after_failure(c, exc)
        if failure is exc:
            raise
        raise failure from exc


def publish(c: Claim) -> Path:
    """Mark the finished folder as a run folder and rename it to ``out``, if ``out`` is still what the run may
    replace (an old ``out`` is replaced only by that rename: :func:`mfvc_gpu.fileio.publish_dir`)."""
    write_text(c.work / MARKER, json.dumps({"written_by": "mfvc-gpu", "format": 1}) + "\n")
    try:
        c.check_out(" (it appeared while this run was working)")
    except MFVCError as exc:
        raise OutChanged(f"{exc}; this run's results are kept in {c.work}") from None
    (c.work / OWNER).unlink(missing_ok=True)
    return publish_dir(c.work, c.out)


__all__ = [
    "CHECKPOINT",
    "MARKER",
    "Claim",
    "claim",
    "building",
    "partial_dir",
    "is_run_folder",
    "guard_out",
    "missing_ancestors",
    "remove_empty",
    "OutChanged",
]
