"""``mfvc-gpu datasets fetch``: download from the official mirrors, verify, rename into place."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import MFVCError
from ..fileio import atomic_path
from .registry import REGISTRY, cache_dir

log = logging.getLogger(__name__)


def _download(url: str, dest: Path, expected_md5: str | None, progress: bool) -> None:
    from tqdm.auto import tqdm

    md5 = hashlib.md5()
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
        if expected_md5 and md5.hexdigest() != expected_md5:
            raise MFVCError(f"{url}: md5 {md5.hexdigest()} does not match the published {expected_md5}; not saved")


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
    folder.mkdir(parents=True, exist_ok=True)
    for fname in sorted({f for fs in spec.files.values() for f in fs}):
        target = folder / fname
        expected = spec.md5.get(fname, (None, None))[0]
        if target.exists() and expected and hashlib.md5(target.read_bytes()).hexdigest() == expected:
            log.info("%s: present and verified", target)
            continue
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + fname
            try:
                _download(url, target, expected, progress)
                break
            except (urllib.error.URLError, OSError, MFVCError) as exc:
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        else:
            raise MFVCError(f"could not download {fname} ({'; '.join(errors)}); check the network or pass --mirror")
    return folder
