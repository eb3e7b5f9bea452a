"""Turn a data-set name or a path into uint8 grayscale images at 1×32×32 (255 = white), with labels."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MFVCError
from ..fileio import shown
from . import readers
from .registry import REGISTRY, DatasetSpec, cache_dir, locate, matches_checksum, search_dirs

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Images ready for the network and what is known about them."""

    name: str
    images: np.ndarray  # (N, 1, S, S) uint8, 255 = white
    labels: np.ndarray | None  # (N,) int64, or None when unknown
    n_classes: int | None
    source: str

    def __len__(self) -> int:
        return len(self.images)


CHUNK = 8192  # images converted at a time: the peak memory is the uint8 result plus one chunk in float32
WHITE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(bool): 1.0}


def available_memory() -> int | None:
    """Bytes of memory the kernel says it can give without swapping (MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(n_bytes: int, what: str) -> None:
    """MFVCError, before allocating, when ``n_bytes`` will not fit in the memory available now
    (rather than the out-of-memory killer ending the process with nothing said)."""
    free = available_memory()
    if free is not None and n_bytes > free:
        raise MFVCError(
            f"{what} needs {n_bytes / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of memory is "
            "available; use fewer images (a subset) or a machine with more memory"
        )


def white_of(x: np.ndarray, pixel_max: float | None, source: str) -> float:
    """The value of a white pixel: ``pixel_max`` if given; 255 for uint8, 65535 for uint16, 1 for
    bool, 1.0 for floats whose values lie in [0, 1]. Anything else is refused with the range found."""
    if pixel_max is not None:
        return float(pixel_max)
    if x.dtype in WHITE:
        return WHITE[x.dtype]
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise MFVCError(f"{source}: {bad} pixel values are NaN or infinite; clean the images first")
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0.0 and hi <= 1.0:
            return 1.0
        raise MFVCError(
            f"{source}: float pixel values span [{lo:g}, {hi:g}], not [0, 1]; scale them to [0, 1], "
            f"or name the value of white with --pixel-max (pixel_max=), e.g. {hi:g}"
        )
    lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
    raise MFVCError(
        f"{source}: pixels of type {x.dtype} (values {lo}..{hi}) have no known white; convert them to "
        f"uint8, or name the value of white with --pixel-max (pixel_max=), e.g. {hi}"
    )


CHANNELS = (1, 3, 4)  # gray, RGB, RGBA
LAYOUTS = "(N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1, 3 or 4"


def channels_first(x: np.ndarray, source: str = "images") -> np.ndarray:
    """A stack of images as (N, C, H, W), by one rule that cannot confuse layouts: the channel axis is the
    second or the last, has 1, 3 or 4 entries, and exactly one of the two can be it; a 3-D stack is
    (N, H, W) unless its last axis could be channels. Anything else is refused naming the shape."""
    shape = tuple(x.shape)
    if x.ndim == 3 and shape[-1] not in CHANNELS:
        return x[:, None]
    if x.ndim == 4:
        first, last = shape[1] in CHANNELS, shape[-1] in CHANNELS
        if first and not last:
            return x
        if last and not first:
            return x.transpose(0, 3, 1, 2)
    if x.ndim == 3:
        why = f"one image (H, W, C) or images {shape[-1]} pixels wide"
    elif x.ndim == 4 and shape[1] in CHANNELS:
        why = f"axis 1 ({shape[1]}) and axis 3 ({shape[-1]}) could both be the channels"
    elif x.ndim == 4:
        why = "no axis of 1, 3 or 4 entries is there to hold the channels"
    else:
        why = f"{x.ndim} axes"
    raise MFVCError(f"{source}: images of shape {shape} cannot be read unambiguously ({why}); give {LAYOUTS}")


def conversion_bytes(shape: tuple[int, ...], size: int) -> int:
    """The memory :func:`to_images` allocates for images of ``shape`` (N, C, H, W): the uint8 result, plus
    one chunk of at most ``CHUNK`` images in float32, its gray mean, and their resized float32 and uint8 copies."""
    n, c, h, w = shape
    m = min(CHUNK, n)
    return n * size * size + m * (c * h * w * 4 + (h * w * 4 if c > 1 else 0) + size * size * 5)


def to_images(x: np.ndarray, size: int = 32, source: str = "images", pixel_max: float | None = None) -> np.ndarray:
    """Grayscale images at ``size``×``size`` as (N, 1, size, size) **uint8** (255 = white).

    The layout is read by :func:`channels_first`. Pixels are scaled by :func:`white_of` (explicitly: uint8
    as is, floats in [0, 1], or the named ``pixel_max``); values above white are refused. Colour images
    are averaged to one channel (an alpha channel is dropped). Stored as uint8, a million 28×28 images
    take 1 GiB at 32×32; the network converts each batch to float32 (:func:`unit_float`).
    """
    import torch
    import torch.nn.functional as F

    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise MFVCError(f"{source}: expected a non-empty stack of images, {LAYOUTS}; got shape {x.shape}")
    x = channels_first(x, source)
    if x.dtype == object or x.dtype.kind not in "biuf":
        raise MFVCError(f"{source}: pixels of type {x.dtype} are not numbers")
    white = white_of(x, pixel_max, source)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > white:
        raise MFVCError(
            f"{source}: pixel values span [{lo:g}, {hi:g}], outside [0, {white:g}] (white = {white:g}); "
            "check the input or set --pixel-max to the value of white"
        )
    if x.dtype == np.uint8 and x.shape[1:] == (1, size, size) and white == 255.0:
        return np.ascontiguousarray(x)
    check_fits(conversion_bytes(x.shape, size), f"{source}: {len(x)} images at {size}×{size}")
    out = np.empty((len(x), 1, size, size), dtype=np.uint8)
    for i in range(0, len(x), CHUNK):
        c = x[i : i + CHUNK].astype(np.float32)
        c = c[:, :3].mean(axis=1, keepdims=True) if c.shape[1] > 1 else c
        t = torch.from_numpy(np.ascontiguousarray(c)).mul_(255.0 / white)
        if t.shape[2:] != (size, size):
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        out[i : i + CHUNK] = t.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def unit_float(batch):
    """A batch of images as float32 in [0, 1]: uint8 divided by 255 (per batch, on its device); floats as they are."""
    import torch

    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    return batch.float()


def not_found_message(spec: DatasetSpec, data_dir=None) -> str:
    where = ", ".join(str(p) for p in search_dirs(spec, data_dir))
    how = f"run 'mfvc-gpu datasets fetch {spec.name}'" if spec.mirrors else "download the files yourself"
    extra = " or 'apt-get install dataset-fashion-mnist'" if spec.dir_name == "fashion-mnist" else ""
    files = ", ".join(sorted({f for fs in spec.files.values() for f in fs}))
    return (
        f"data set '{spec.name}' not found (looked in {where}); {how}{extra}, "
        f"or put {files} in a folder and pass --data-dir (or set MFVC_DATA_DIR)"
    )


def verify_file(path: Path, spec: DatasetSpec) -> str | None:
    """Check a file against its published checksum: None when it matches or none is known, else the problem."""
    if matches_checksum(path, spec) is False:
        return (
            f"{path} does not match the published checksum of {path.name}; it is damaged or another file — "
            "fetch it again"
        )
    return None


def load_dataset(
    name: str,
    split: str | None = None,
    data_dir=None,
    size: int = 32,
    verify: bool = True,
    pixel_max: float | None = None,
    bad_images: str = "error",
) -> Dataset:
    """Load a named data set or a user path (``.npz``, ``.npy``, a folder of images).

    Parameters
    ----------
    name : a registry name (``mfvc-gpu datasets list``) or a path.
    split : "train", "test" or "all"; default: the set's own default (the paper's "all").
    data_dir : a folder searched first (the files directly, or in ``<name>/``).
    size : side of the square images handed to the network.
    verify : check known files against their published checksums.
    pixel_max : for a user's files, the value of white (see :func:`white_of`); registered sets know theirs.
    bad_images : in an image folder, "error" stops at an unreadable file (naming it), "skip" leaves it out.
    """
    path = Path(name).expanduser()
    if name.lower() not in REGISTRY:
        if path.exists():
            return _load_path(path, size, pixel_max, bad_images)
        known = ", ".join(sorted(REGISTRY))
        raise MFVCError(f"unknown data set '{name}': not a file or folder, and not one of {known}")
    spec = REGISTRY[name.lower()]
    split = split or spec.default_split
    if spec.kind == "sklearn":
        if split not in ("all", "train"):
            raise MFVCError(f"data set '{spec.name}' has no split '{split}'; it has only 'all'")
        from sklearn.datasets import load_digits

        d = load_digits()  # 17 grey levels, 0 (black) to 16 (white)
        return Dataset(
            spec.name,
            to_images(d.images, size, spec.name, pixel_max=16.0),
            d.target.astype(np.int64),
            spec.n_classes,
            "scikit-learn",
        )
    if split not in spec.splits:
        raise MFVCError(f"data set '{spec.name}' has no split '{split}'; choose one of {', '.join(spec.splits)}")
    paths = locate(spec, split, data_dir)
    if paths is None:
        raise MFVCError(not_found_message(spec, data_dir))
    if verify:
        for p in paths:
            problem = verify_file(p, spec)
            if problem:
                raise MFVCError(problem)
    parts = list(spec.files) if split == "all" else [split]
    if spec.kind == "usps":
        x, y = readers.read_usps_h5(paths[0], split)
    else:
        by_name = {p.name.removesuffix(".gz"): p for p in paths}
        xs, ys = [], []
        for part in parts:
            img, lab = (by_name[f.removesuffix(".gz")] for f in spec.files[part])
            xi, yi = readers.read_idx_pair(img, lab, transpose=spec.kind == "emnist")
            xs.append(xi)
            ys.append(yi)
        x, y = np.concatenate(xs), np.concatenate(ys)
    if spec.name == "emnist-letters":
        y = y - 1  # letters are labelled 1..26
    log.info("loaded %s (%s): %d images from %s", spec.name, split, len(x), paths[0].parent)
    return Dataset(spec.name, to_images(x, size, spec.name), y, spec.n_classes, str(paths[0].parent))


def _load_path(path: Path, size: int, pixel_max: float | None = None, bad_images: str = "error") -> Dataset:
    if path.is_dir():
        x, y, classes = readers.read_image_folder(path, bad_images=bad_images)
        n_classes = len(classes) or None
    elif path.suffix == ".npz":
        x, y = readers.read_npz(path)
        n_classes = len(np.unique(y)) if y is not None else None
    elif path.suffix == ".npy":
        x, y = readers.read_npy(path)
        n_classes = None
    else:
        raise MFVCError(f"{path}: unsupported file type '{path.suffix}'; use .npz, .npy or a folder of images")
    name, source = shown(path.stem or path.name), shown(path)
    return Dataset(name, to_images(x, size, source, pixel_max), y, n_classes, source)


def dataset_status(data_dir=None) -> list[dict]:
    """For ``datasets list``: every registered set, whether it is found, where, and its size on disk."""
    rows = []
    for name, spec in REGISTRY.items():
        if spec.kind == "sklearn":
            rows.append(dict(name=name, found=True, where="scikit-learn", bytes=0, description=spec.description))
            continue
        paths = locate(spec, spec.default_split, data_dir)
        rows.append(
            dict(
                name=name,
                found=paths is not None,
                where=str(paths[0].parent) if paths else "",
                bytes=sum(p.stat().st_size for p in paths) if paths else 0,
                description=spec.description,
            )
        )
    return rows


__all__ = [
    "Dataset",
    "load_dataset",
    "to_images",
    "unit_float",
    "white_of",
    "dataset_status",
    "verify_file",
    "cache_dir",
]
