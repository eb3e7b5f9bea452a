"""Readers for the on-disk formats: IDX (gzip or raw), USPS HDF5, ``.npz`` and image folders."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from ..errors import MFVCError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm"}


def open_maybe_gzip(path: Path) -> bytes:
    """Return the bytes of ``path``, decompressed when it is gzip."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise MFVCError(f"{path} is a damaged gzip file ({exc}); delete it and fetch it again") from exc
    return raw


def md5_of(path: Path, decompressed: bool = False) -> str:
    """md5 of a file, or of its decompressed contents."""
    data = open_maybe_gzip(path) if decompressed else Path(path).read_bytes()
    return hashlib.md5(data).hexdigest()


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an IDX buffer, checking the magic number, the dimensions and the payload length."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise MFVCError(f"{source} is not an IDX file (bad magic number); check the file or fetch it again")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES or ndim == 0:
        raise MFVCError(f"{source} has an unknown IDX type 0x{code:02x} / {ndim} dimensions; is it an IDX file?")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MFVCError(f"{source} is truncated inside its IDX header; fetch it again")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise MFVCError(
            f"{source} holds {len(data)} bytes but its header {shape} needs {expected}; "
            "the file is truncated or corrupt, fetch it again"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw)."""
    return parse_idx(open_maybe_gzip(path), str(path))


def read_idx_pair(images: Path, labels: Path, transpose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read matching IDX image and label files; EMNIST stores images transposed (``transpose``)."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or y.ndim != 1:
        raise MFVCError(f"{images} / {labels}: expected (N, H, W) images and (N,) labels, got {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise MFVCError(f"{images} has {len(x)} images but {labels} has {len(y)} labels; the pair does not match")
    if transpose:
        x = x.transpose(0, 2, 1)
    return x, y.astype(np.int64)


def read_usps_h5(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the common ``usps.h5``: groups ``train`` / ``test`` with ``data`` (n, 256) and ``target``."""
    import h5py

    parts = ["train", "test"] if split == "all" else [split]
    xs, ys = [], []
    try:
        with h5py.File(path, "r") as f:
            for part in parts:
                if part not in f or "data" not in f[part] or "target" not in f[part]:
                    raise MFVCError(f"{path} has no '{part}/data' and '{part}/target'; is it the common usps.h5?")
                data = np.asarray(f[part]["data"], dtype=np.float32)
                if data.ndim != 2 or data.shape[1] != 256:
                    raise MFVCError(f"{path}: '{part}/data' has shape {data.shape}, expected (n, 256)")
                xs.append(data.reshape(-1, 16, 16))
                ys.append(np.asarray(f[part]["target"]).astype(np.int64).ravel())
    except OSError as exc:
        raise MFVCError(f"{path} is not a readable HDF5 file ({exc})") from exc
    return np.concatenate(xs), np.concatenate(ys)


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a user ``.npz`` with ``images`` (N,H,W) or (N,C,H,W) and optional ``labels`` (N,)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f:
                raise MFVCError(f"{path} has no array named 'images' (found: {', '.join(f.files) or 'none'})")
            x = np.asarray(f["images"])
            y = np.asarray(f["labels"]) if "labels" in f else None
    except (OSError, ValueError) as exc:
        raise MFVCError(f"{path} is not a readable .npz file ({exc})") from exc
    if x.ndim not in (3, 4):
        raise MFVCError(f"{path}: 'images' has shape {x.shape}; expected (N, H, W) or (N, C, H, W)")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise MFVCError(f"{path}: 'labels' has shape {y.shape}; expected ({len(x)},) to match the images")
        y = y.astype(np.int64)
    return x, y


def read_npy(path: Path) -> tuple[np.ndarray, None]:
    """Read a user ``.npy`` holding images (N,H,W) or (N,C,H,W), no labels."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MFVCError(f"{path} is not a readable .npy file ({exc})") from exc
    if x.ndim not in (3, 4):
        raise MFVCError(f"{path}: array has shape {x.shape}; expected (N, H, W) or (N, C, H, W)")
    return x, None


def read_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Read a folder of images; one level of sub-folders gives the class labels.

    Images are converted to grayscale and must share one size (resize happens later).
    Returns (images (N,H,W) uint8, labels or None, class names).
    """
    from PIL import Image

    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MFVCError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); point --dataset at a folder of images")
    with_class = all(p.parent != root for p in files)
    classes = sorted({p.parent.relative_to(root).parts[0] for p in files}) if with_class else []
    images, labels = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("L")))
        except OSError as exc:
            raise MFVCError(f"{p} is not a readable image ({exc}); remove it or replace it") from exc
        if with_class:
            labels.append(classes.index(p.relative_to(root).parts[0]))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise MFVCError(f"{root}: images have different sizes {sorted(shapes)[:3]}...; resize them to one size first")
    y = np.asarray(labels, dtype=np.int64) if with_class else None
    return np.stack(images), y, classes
