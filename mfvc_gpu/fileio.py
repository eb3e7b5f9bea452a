"""Writing files so that nothing is ever half-written or lost: the package's one pattern.

Every file the package writes goes through :func:`atomic_path` (a temporary name in the same
folder, then one ``os.replace``), and every folder through :func:`publish_dir` (a finished
folder renamed into place). An existing folder is replaced by one atomic exchange of the two
names (Linux ``renameat2(RENAME_EXCHANGE)``), so at every moment the destination holds the old
complete folder or the new complete one; the old one is deleted only afterwards. A failing write
leaves the destination as it was: absent, or the old complete file.

An ``OSError`` on the way (permission, read-only or full disk, a name too long, a path under
``/proc``) becomes :class:`FileSystemError` (an :class:`~mfvc_gpu.errors.MFVCError`) naming the
path, the reason and what to do, so the CLI prints one line instead of a traceback. PyTorch's
own file writer reports a full disk as a ``RuntimeError``; that is translated too.
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import MFVCError
from .interrupts import deferred_signals

_SPACE = "free some space or choose a folder on another disk"
_ADVICE = {
    errno.ENOSPC: _SPACE,
    errno.EDQUOT: _SPACE,
    errno.EFBIG: "the file is too large for this file system; choose a folder on another disk",
    errno.EACCES: "choose a folder you can write to, or fix its permissions",
    errno.EPERM: "choose a folder you can write to, or fix its permissions",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOENT: "check that the folder exists and accepts new files (virtual file systems such as /proc do not); "
    "choose another location",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another location",
    errno.EISDIR: "a folder stands where a file must go; remove it or choose another location",
    errno.EEXIST: "something already stands there; remove it or choose another location",
    errno.ENOTEMPTY: "something already stands there; remove it or choose another location",
    errno.EIO: "the disk reported an input/output error; check the disk or choose another location",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or close other programs",
    errno.ENFILE: "too many open files; raise the limit (ulimit -n) or close other programs",
    errno.ELOOP: "the path has a loop of symbolic links; choose another location",
    errno.EXDEV: "the path spans two file systems; choose a location on one file system",
}
_DEFAULT_ADVICE = "check the path and its permissions, or choose another location"


class FileSystemError(MFVCError):
    """An ``OSError`` met on the user's file system (permission, full or read-only disk, bad path).

    The message names the path, the reason and what to do. ``path`` and ``errno`` keep them for
    callers: a run whose checkpoint survives such an error can continue with ``--resume``.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.errno = code


def shown(name: str | os.PathLike | bytes) -> str:
    """A file or folder name as text to show (titles, reports, records): the bytes of a name that is not
    valid UTF-8 (``os.fsdecode`` keeps them as surrogates) become U+FFFD instead of breaking the writer."""
    return os.fsdecode(name).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def temp_name(path: Path) -> Path:
    """The temporary name ``path`` is written under: hidden, in the same folder, unique per process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def aside_name(path: Path) -> Path:
    """Where an old folder is put while it is deleted, once a new one stands at ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.old")


def _disk_full(path: str | os.PathLike) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing parent) has no room left."""
    p = Path(path)
    try:
        while not p.exists() and p != p.parent:
            p = p.parent
        st = os.statvfs(p)
    except OSError:
        return False
    free = st.f_bavail * st.f_frsize
    return bool(
        st.f_bavail == 0 or free < min(1 << 20, st.f_blocks * st.f_frsize // 100) or (st.f_files and st.f_favail == 0)
    )


def os_error(path: str | os.PathLike, exc: OSError, doing: str = "write") -> FileSystemError:
    """A one-line :class:`FileSystemError` for an ``OSError`` met while doing ``doing`` to ``path``."""
    code = exc.errno
    if code is None and _disk_full(path):  # e.g. numpy's "N requested and M written"
        code = errno.ENOSPC
    reason = os.strerror(code) if code and not exc.strerror else (exc.strerror or str(exc) or type(exc).__name__)
    advice = _ADVICE.get(code or 0, _DEFAULT_ADVICE)
    return FileSystemError(f"cannot {doing} {path}: {reason}; {advice}", path, code)


def _shown_path(exc: OSError, tmp: Path | None, path: Path) -> Path | str:
    """The path to name for ``exc``: the destination rather than its temporary name."""
    name = getattr(exc, "filename", None)
    if not isinstance(name, (str, bytes, os.PathLike)) or not name:
        return path
    name = os.fsdecode(name)
    if tmp is not None and name.startswith(os.fspath(tmp)):
        return path
    return name


@contextmanager
def user_os_errors(path: str | os.PathLike, doing: str = "write") -> Iterator[None]:
    """Turn an ``OSError`` inside the block into :func:`os_error` for ``path``."""
    try:
        yield
    except OSError as exc:
        raise os_error(_shown_path(exc, None, Path(path)), exc, doing) from exc


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with the one-line error."""
    path = Path(path)
    with user_os_errors(path, "create the folder"):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _torch_write_failed(exc: RuntimeError) -> bool:
    """PyTorch's zip writer reports a failed write (a full disk) as a RuntimeError."""
    text = str(exc)
    return any(s in text for s in ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos"))


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it is renamed to
    ``path``, else removed (whatever stopped it: an error, Ctrl-C, SIGTERM). Create the file at the
    yielded path inside the block. An ``OSError`` (or PyTorch's RuntimeError for a failed write)
    becomes one :class:`FileSystemError` naming ``path``."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = temp_name(path)
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as exc:
            raise os_error(_shown_path(exc, tmp, path), exc) from exc
        except RuntimeError as exc:
            if not _torch_write_failed(exc):
                raise
            code = errno.ENOSPC if _disk_full(tmp) else errno.EIO
            raise os_error(path, OSError(code, os.strerror(code)), "write") from exc
    finally:
        _remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed to the disk before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def check_writable_dir(path: str | os.PathLike, doing: str = "write to") -> Path:
    """Create ``path`` if needed and prove it takes a file (written and removed), before any
    compute: a read-only or full file system, or a path under /proc, fails here in one line."""
    folder = make_dirs(path)
    write_bytes(folder / ".mfvc-write-check", b"")
    _remove(folder / ".mfvc-write-check")
    return folder


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, serialised in memory first so that a full disk is
    an ``OSError`` (one :class:`FileSystemError`), not PyTorch's RuntimeError."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getbuffer())


# ---------------------------------------------------------------- folders
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or the file system cannot (then nothing changed); raises
    ``OSError`` for any other failure."""
    global _libc
    if not hasattr(os, "statvfs") or os.uname().sysname != "Linux":
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover_dir(out: str | os.PathLike) -> Path | None:
    """Tidy what a killed :func:`publish_dir` can leave beside ``out``: when ``out`` is missing but an
    old copy was set aside (``.NAME.PID.old``, only on file systems without the atomic exchange),
    put it back; when ``out`` stands, delete the leftover copies of dead processes.
    Returns the folder put back, if any."""
    out = Path(out)
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(\d+)\.old$")
    try:
        leftovers = [(p, int(m.group(1))) for p in out.parent.iterdir() if (m := pattern.match(p.name)) and p.is_dir()]
    except OSError:
        return None
    leftovers = [(p, pid) for p, pid in leftovers if pid == os.getpid() or not _pid_alive(pid)]
    restored = None
    if not out.exists() and leftovers:
        newest = max(leftovers, key=lambda t: t[0].stat().st_mtime)[0]
        with user_os_errors(out, "restore"):
            os.replace(newest, out)
        restored = out
        leftovers = [(p, pid) for p, pid in leftovers if p != newest]
    for p, _ in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    return restored


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?:tmp|old)$")


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files and folders (``.NAME.PID.tmp``, ``.NAME.PID.old``) that a killed
    process left in ``folder`` (only those of processes no longer running, and only for ``name``
    when given). Returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or (name is not None and m.group("name") != name):
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        _remove(p)
        removed.append(p)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_dir(work: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move the finished folder ``work`` to ``out``.

    An existing ``out`` is replaced only by the new one: the two names are exchanged in one atomic
    step, then the old folder (now under ``work``'s name) is renamed aside and deleted. A crash at
    any moment leaves the old complete folder or the new complete one at ``out``, never neither.
    Where the exchange is not available the old folder is renamed aside first and, should the
    process die before the new one is in place, :func:`recover_dir` puts it back on the next run.
    SIGINT and SIGTERM are held during the renames."""
    work, out = Path(work), Path(out)
    recover_dir(out)
    old: Path | None = None
    with user_os_errors(out, "replace"), deferred_signals():
        if not out.exists() and not out.is_symlink():
            os.rename(work, out)
        elif _exchange(work, out):
            old = aside_name(out)
            try:
                os.replace(work, old)  # the old folder, now under work's name
            except OSError:
                old = work
        else:
            old = aside_name(out)
            os.replace(out, old)
            try:
                os.replace(work, out)
            except BaseException:
                if old.exists() and not out.exists():
                    os.replace(old, out)
                raise
        _fsync_dir(out.parent)
    if old is not None:
        _remove(old)
    return out


__all__ = [
    "shown",
    "atomic_path",
    "write_bytes",
    "write_text",
    "write_json",
    "write_torch",
    "publish_dir",
    "recover_dir",
    "remove_stale_temps",
    "make_dirs",
    "os_error",
    "user_os_errors",
    "temp_name",
    "aside_name",
    "FileSystemError",
]
