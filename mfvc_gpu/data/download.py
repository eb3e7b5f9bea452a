"""``mfvc-gpu datasets fetch``: download from the official mirrors, verify, rename into place.

A failed transfer (network, server, checksum) tries the next mirror; a failure of the local disk
(full, read-only, no permission) stops at once with one line naming the file. Either way no
partial file is left: a download is written under a temporary name and renamed when verified.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.request
from pathlib import Path

from .. import interrupts
from ..errors import MFVCError
from ..fileio import atomic_path, make_dirs, remove_stale_temps, user_os_errors
from ..runfolder import missing_ancestors, remove_empty
from .registry import REGISTRY, cache_dir

log = logging.getLogger(__name__)


class _TransferFailed(Exception):
    """The download itself failed (network, server, checksum): the next mirror may do better.
    Not an ``OSError``, so that it is never mistaken for a local write failure."""


def _download(url: str, dest: Path, expected_md5: str | None, progress: bool) -> None:
    """Download ``url`` to ``dest`` atomically. A local write failure (a full disk, no permission)
    raises :class:`~mfvc_gpu.fileio.FileSystemError` at once; a failed transfer :class:`_TransferFailed`."""
    from tqdm.auto import tqdm

    md5 = hashlib.md5()
    got = 0
    try:
        response = urllib.request.urlopen(url, timeout=30)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, HTTPError, timeouts: OSErrors
        raise _TransferFailed(str(getattr(exc, "reason", None) or exc)) from exc
    with response as r, atomic_path(dest) as tmp, open(tmp, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            while True:
                interrupts.check()  # a safe point: the temporary file goes, nothing half-written stays
                try:
                    chunk = r.read(1 << 16)
                except (OSError, http.client.HTTPException) as exc:
                    raise _TransferFailed(f"the transfer broke off ({exc or type(exc).__name__})") from exc
                if not chunk:
                    break
                f.write(chunk)  # an OSError here is the local disk's: atomic_path names dest
                md5.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        if total is not None and got != total:
            raise _TransferFailed(f"got {got} of {total} bytes")
        if expected_md5 and md5.hexdigest() != expected_md5:
            raise _TransferFailed(f"md5 {md5.hexdigest()} does not match the published {expected_md5}; not saved")


def _verified(target: Path, expected: str | None) -> bool:
    """Whether ``target`` is present with the published checksum."""
    if not (expected and target.is_file()):
        return False
    md5 = hashlib.md5()
    with user_os_errors(target, "read"), open(target, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
    return md5.hexdigest() == expected


def fetch(name: str, dest: str | os.PathLike | None = None, mirror: str | None = None, progress: bool = True) -> Path:
    """Download data set ``name`` into ``dest`` (default: the user cache) and return the folder.

    Files already present with the right checksum are kept. ``mirror`` replaces the official
    mirrors (a base URL that serves the same file names).
    """
    spec = REGISTRY.get(name.lower())
    if spec is None:
        raise MFVCError(f"unknown data set '{name}'; 'mfvc-gpu datasets list' shows the names")
    mirrors = (mirror,) if mirror else spec.mirrors
    if not mirrors:
        raise MFVCError(f"'{spec.name}' has no download mirror; get its files yourself and pass --data-dir")
    folder = Path(dest) if dest else cache_dir() / spec.dir_name
    created = missing_ancestors(folder)
    make_dirs(folder)
    try:
        _fetch_files(spec, folder, mirrors, progress)
    except BaseException:
        remove_empty(created)  # the folders this command made, unless a file landed in them
        raise
    return folder


def _fetch_files(spec, folder: Path, mirrors, progress: bool) -> None:
    for fname in sorted({f for fs in spec.files.values() for f in fs}):
        target = folder / fname
        remove_stale_temps(folder, fname)  # a download killed midway
        expected = spec.md5.get(fname, (None, None))[0]
        if _verified(target, expected):
            log.info("%s: present and verified", target)
            continue
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + fname
            try:
                _download(url, target, expected, progress)
                break
            except _TransferFailed as exc:  # a FileSystemError (the local disk) stops at once: no mirror helps
                errors.append(f"{url}: {exc}")
        else:
            raise MFVCError(f"could not download {fname} ({'; '.join(errors)}); check the network or pass --mirror")
