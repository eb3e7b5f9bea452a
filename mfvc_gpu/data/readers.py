"""Readers for the on-disk formats: IDX (gzip or raw), USPS HDF5, ``.npz`` and image folders."""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path

import numpy as np

from ..errors import MFVCError

log = logging.getLogger(__name__)

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm"}


def open_maybe_gzip(path: Path) -> bytes:
    """Return the bytes of ``path``, decompressed when it is gzip."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise MFVCError(f"cannot read {path}: {exc.strerror or exc}; check the file and its permissions") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise MFVCError(f"{path} is a damaged gzip file ({exc}); delete it and fetch it again") from exc
    return raw


def md5_of(path: Path, decompressed: bool = False) -> str:
    """md5 of a file, or of its decompressed contents."""
    if decompressed:
        data = open_maybe_gzip(path)
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise MFVCError(f"cannot read {path}: {exc.strerror or exc}; check the file and its permissions") from exc
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


def _pickle_refused(exc: Exception) -> bool:
    text = str(exc)
    return "allow_pickle" in text or "pickled" in text or "Object arrays" in text


def _check_images(path: Path, x: np.ndarray, what: str) -> None:
    """Refuse arrays that are not a non-empty numeric stack of images, with the reason."""
    if x.dtype.kind not in "biuf":
        raise MFVCError(
            f"{path}: {what} has type {x.dtype}, not numbers; save the pixels as a numeric array (uint8, uint16 "
            "or float)"
        )
    if x.ndim not in (3, 4):
        raise MFVCError(f"{path}: {what} has shape {x.shape}; expected (N, H, W) or (N, C, H, W)")
    if x.size == 0:
        raise MFVCError(f"{path}: {what} holds no images (shape {x.shape}); nothing to cluster")


def check_labels(path: Path | str, y: np.ndarray, n: int) -> np.ndarray:
    """Class labels as int64: a 1-D array of non-negative whole numbers, one per image; else refused."""
    if y.dtype.kind not in "biuf":
        raise MFVCError(f"{path}: 'labels' has type {y.dtype}; class labels must be whole numbers 0, 1, 2, ...")
    if y.ndim != 1 or len(y) != n:
        raise MFVCError(f"{path}: 'labels' has shape {y.shape}; expected ({n},) to match the images")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise MFVCError(
                f"{path}: 'labels' holds {float(y[bad[0]]):g} at index {bad[0]}; class labels must be whole "
                "numbers 0, 1, 2, ..."
            )
        if len(y) and (np.abs(y).max() >= 2**62):
            raise MFVCError(
                f"{path}: 'labels' holds {np.abs(y).max():g}, out of range for class labels; number the classes "
                "0, 1, 2, ..."
            )
    if y.dtype.kind == "u" and y.dtype.itemsize == 8 and len(y) and y.max() >= 2**63:
        raise MFVCError(
            f"{path}: 'labels' holds {int(y.max())}, out of range for class labels; number the classes 0, 1, 2, ..."
        )
    y = y.astype(np.int64)
    neg = np.flatnonzero(y < 0)
    if len(neg):
        raise MFVCError(
            f"{path}: 'labels' holds {int(y[neg[0]])} at index {int(neg[0])} ({len(neg)} negative in all); "
            "class labels must be 0, 1, 2, ... (drop 'labels' to cluster without scores)"
        )
    return y


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a user ``.npz`` with ``images`` (N,H,W) or (N,C,H,W) and optional ``labels`` (N,).

    Nothing is unpickled: an array of Python objects is refused."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise MFVCError(f"{path} is not a readable .npz file (it holds a single array; name it .npy)")
            if "images" not in f:
                raise MFVCError(f"{path} has no array named 'images' (found: {', '.join(f.files) or 'none'})")
            names = ("images", "labels") if "labels" in f else ("images",)
            arrays = {}
            for name in names:
                try:
                    arrays[name] = np.asarray(f[name])
                except ValueError as exc:
                    if _pickle_refused(exc):
                        raise MFVCError(
                            f"{path}: '{name}' is an array of Python objects (stored as a pickle); refused "
                            "without unpickling: save a numeric array, e.g. np.stack(list_of_images)"
                        ) from exc
                    raise
    except MFVCError:
        raise
    except Exception as exc:  # OSError, ValueError, BadZipFile, EOFError, zlib.error: a damaged or foreign file
        if _pickle_refused(exc):
            raise MFVCError(
                f"{path} is not a readable .npz file: it holds a pickle, refused without unpickling; "
                "save arrays with np.savez"
            ) from exc
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise MFVCError(
            f"{path} is not a readable .npz file ({reason}); check the file or save it again with np.savez"
        ) from exc
    x, y = arrays["images"], arrays.get("labels")
    _check_images(path, x, "'images'")
    if y is not None:
        y = check_labels(path, y, len(x))
    return x, y


def read_npy(path: Path) -> tuple[np.ndarray, None]:
    """Read a user ``.npy`` holding images (N,H,W) or (N,C,H,W), no labels. Nothing is unpickled."""
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:  # OSError, ValueError (a pickle), EOFError: a damaged or foreign file
        if _pickle_refused(exc):
            raise MFVCError(
                f"{path}: the file holds Python objects (a pickle); refused without unpickling: "
                "save a numeric array with np.save"
            ) from exc
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise MFVCError(
            f"{path} is not a readable .npy file ({reason}); check the file or save it again with np.save"
        ) from exc
    if not isinstance(x, np.ndarray):
        raise MFVCError(f"{path} is an .npz archive, not a .npy file; name it .npz")
    if x.size == 0:
        raise MFVCError(f"{path} holds no images (an empty array of shape {x.shape}); nothing to cluster")
    _check_images(path, x, "the array")
    return x, None


ALPHA_BACKGROUND = 0  # transparent pixels are composited over black, the background of digit-like data


def decode_image(path: Path) -> tuple[np.ndarray, bool]:
    """One image file as a 2-D grayscale array: uint8, or uint16 for a 16-bit file (its full range
    kept; 255 vs 65535 is white). An alpha channel is composited over black. Returns the array and
    whether it had an alpha channel. Raises ``OSError``/``ValueError`` for a file that cannot be read."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16), False
        if mode == "I":
            a = np.asarray(im)
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise ValueError(f"32-bit integer pixels ({a.min()}..{a.max()}); save it as an 8- or 16-bit image")
            return a.astype(np.uint16), False
        if mode == "F":
            raise ValueError("32-bit float pixels; save it as an 8- or 16-bit image")
        alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
        if alpha:
            rgba = im.convert("RGBA")
            back = Image.new("RGBA", rgba.size, (ALPHA_BACKGROUND,) * 3 + (255,))
            return np.asarray(Image.alpha_composite(back, rgba).convert("L")), True
        return np.asarray(im.convert("L")), False


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def _size_summary(sizes: dict[tuple[int, ...], list[Path]], root: Path) -> str:
    parts = []
    for shape, files in sorted(sizes.items(), key=lambda kv: -len(kv[1]))[:3]:
        h, w = shape
        example = files[0].relative_to(root)
        parts.append(f"{h}x{w} ({len(files)} file{'s' if len(files) > 1 else ''}, e.g. {example})")
    more = f" and {len(sizes) - 3} more sizes" if len(sizes) > 3 else ""
    return ", ".join(parts) + more


def read_image_folder(root: Path, bad_images: str = "error") -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Read a folder of images; one level of sub-folders gives the class labels.

    Images are converted to grayscale (an alpha channel composited over black) and must share
    one size (resize happens later). 16-bit files keep their range: the stack is then uint16.
    A file that cannot be read stops the run naming it (``bad_images="error"``) or is left out
    with a warning that counts them (``"skip"``). Hidden files and folders are ignored.
    Returns (images (N,H,W) uint8 or uint16, labels or None, class names).
    """
    if bad_images not in ("error", "skip"):
        raise MFVCError(f"bad_images={bad_images!r} is invalid: must be one of error, skip")
    root = Path(root)
    try:
        files = sorted(
            p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not _hidden(p, root) and p.is_file()
        )
    except OSError as exc:
        raise MFVCError(
            f"cannot list the images in {root}: {exc.strerror or exc}; check the folder and its permissions"
        ) from exc
    if not files:
        raise MFVCError(
            f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); point --dataset at a folder of images"
        )
    with_class = all(p.parent != root for p in files)
    good: list[Path] = []
    images: list[np.ndarray] = []
    bad: list[tuple[Path, str]] = []
    n_alpha = 0
    for p in files:
        try:
            a, had_alpha = decode_image(p)
        except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, DecompressionBombError, ...
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            if bad_images == "error":
                raise MFVCError(
                    f"{p} is not a readable image ({reason}); remove or replace it, or pass --bad-images skip "
                    "to leave unreadable files out"
                ) from exc
            bad.append((p, reason))
            continue
        good.append(p)
        images.append(a)
        n_alpha += had_alpha
    if not good:
        raise MFVCError(f"none of the {len(files)} image files in {root} can be read (e.g. {bad[0][0]}: {bad[0][1]})")
    sizes: dict[tuple[int, ...], list[Path]] = {}
    for p, a in zip(good, images):
        sizes.setdefault(a.shape, []).append(p)
    if len(sizes) > 1:
        raise MFVCError(
            f"{root}: the images have {len(sizes)} different sizes: {_size_summary(sizes, root)}; "
            "resize them to one size first"
        )
    if bad:  # said once the folder is known to be usable: a failing run prints only its error
        log.warning(
            "left out %d of %d image files in %s that cannot be read (bad_images=skip), e.g. %s: %s",
            len(bad),
            len(files),
            root,
            bad[0][0].relative_to(root),
            bad[0][1],
        )
    if n_alpha:
        log.warning(
            "%d of %d images in %s have an alpha channel: transparent pixels are taken as black",
            n_alpha,
            len(images),
            root,
        )
    if any(a.dtype == np.uint16 for a in images):  # 8-bit files among 16-bit ones: the same white
        images = [a if a.dtype == np.uint16 else a.astype(np.uint16) * 257 for a in images]
    classes = sorted({p.relative_to(root).parts[0] for p in good}) if with_class else []
    y = np.asarray([classes.index(p.relative_to(root).parts[0]) for p in good], dtype=np.int64) if with_class else None
    return np.stack(images), y, classes
