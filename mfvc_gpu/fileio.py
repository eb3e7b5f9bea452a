"""Writing files so that nothing is ever half-written or lost: the package's one pattern.

Every file the package writes goes through :func:`atomic_path` (a temporary name in the same
folder, then one ``os.replace``), and every folder through :func:`publish_dir` (a finished
folder renamed into place; an old one is moved aside first and removed only once the new one
stands). A failing write leaves the destination as it was: absent, or the old complete file.

An ``OSError`` on the way (permission, read-only or full disk, a name too long, a path under
``/proc``) becomes :class:`MFVCError` naming the path, the reason and what to do, so the CLI
prints one line instead of a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import MFVCError

_ADVICE = {
    errno.ENOSPC: "free some space or choose a folder on another disk",
    errno.EDQUOT: "free some space or choose a folder on another disk",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def temp_name(path: Path) -> Path:
    """The temporary name ``path`` is written under: hidden, in the same folder, unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def os_error(path: str | os.PathLike, exc: OSError, doing: str = "write") -> MFVCError:
    """A one-line :class:`MFVCError` for an ``OSError`` met while doing ``doing`` to ``path``."""
    reason = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno or 0, "check the path and its permissions, or choose another location")
    return MFVCError(f"cannot {doing} {path}: {reason}; {advice}")


@contextmanager
def user_os_errors(path: str | os.PathLike, doing: str = "write") -> Iterator[None]:
    """Turn an ``OSError`` inside the block into :func:`os_error` for ``path``."""
    try:
        yield
    except OSError as exc:
        raise os_error(getattr(exc, "filename", None) or path, exc, doing) from exc


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with the one-line error."""
    path = Path(path)
    with user_os_errors(path, "create the folder"):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it is renamed to
    ``path``, else removed. Create the file at the yielded path inside the block."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = temp_name(path)
    try:
        with user_os_errors(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def publish_dir(work: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move the finished folder ``work`` to ``out``. An existing ``out`` is first renamed aside
    and deleted only after ``work`` stands in its place, so a crash at any moment leaves the old
    folder or the new one (or both, under the aside name), never neither."""
    work, out = Path(work), Path(out)
    aside = out.with_name(f".{out.name}.{os.getpid()}.old")
    with user_os_errors(out, "replace"):
        if out.exists():
            os.replace(out, aside)
        try:
            os.replace(work, out)
        except BaseException:
            if aside.exists() and not out.exists():
                os.replace(aside, out)
            raise
    shutil.rmtree(aside, ignore_errors=True)
    return out


__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "publish_dir", "make_dirs", "os_error",
           "user_os_errors", "temp_name"]
