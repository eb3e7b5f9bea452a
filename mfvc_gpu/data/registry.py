"""What data sets exist, which files make them, their checksums and where to look for them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# md5 of the official gzip files (as published by their authors), and md5 of the decompressed
# contents. MNIST: both published. Fashion-MNIST: the .gz md5 sums are those of the project's
# README; the decompressed md5 sums were computed from the files of Debian's
# dataset-fashion-mnist package (upstream git 55506a9), whose .gz files were re-compressed.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
}
IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
EMNIST_SPLITS = ("digits", "balanced", "letters", "byclass", "bymerge", "mnist")
EMNIST_CLASSES = {"digits": 10, "balanced": 47, "letters": 26, "byclass": 62, "bymerge": 47, "mnist": 10}


@dataclass(frozen=True)
class DatasetSpec:
    """One named data set.

    kind : "sklearn" (shipped with scikit-learn), "idx", "emnist" (transposed IDX) or "usps".
    files : split -> (images file, labels file) for IDX sets; split -> (file,) for USPS.
    default_split : what ``--split`` means when not given ("all" is the paper's protocol).
    """

    name: str
    kind: str
    n_classes: int
    files: dict = field(default_factory=dict)
    md5: dict = field(default_factory=dict)
    mirrors: tuple = ()
    default_split: str = "all"
    folder: str = ""
    description: str = ""

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.files) + (("all",) if len(self.files) > 1 else ())

    @property
    def dir_name(self) -> str:
        return self.folder or self.name


def _emnist(split: str) -> DatasetSpec:
    prefix = f"emnist-{split}"
    return DatasetSpec(
        name=prefix,
        kind="emnist",
        n_classes=EMNIST_CLASSES[split],
        files={
            s: (f"{prefix}-{s}-images-idx3-ubyte.gz", f"{prefix}-{s}-labels-idx1-ubyte.gz") for s in ("train", "test")
        },
        folder="emnist",
        description=f"EMNIST {split} (28×28, {EMNIST_CLASSES[split]} classes)",
    )


REGISTRY: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", "sklearn", 10, description="scikit-learn digits (1797, 8×8), offline"),
    "mnist": DatasetSpec(
        "mnist",
        "idx",
        10,
        files=IDX_SPLITS,
        md5=MNIST_MD5,
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        description="MNIST (70k = train + test, 28×28)",
    ),
    "mnist-test": DatasetSpec(
        "mnist-test",
        "idx",
        10,
        files=IDX_SPLITS,
        md5=MNIST_MD5,
        default_split="test",
        folder="mnist",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        description="MNIST test split (10k)",
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        "idx",
        10,
        files=IDX_SPLITS,
        md5=FASHION_MD5,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        description="Fashion-MNIST (70k = train + test, 28×28)",
    ),
    "fashion-mnist-test": DatasetSpec(
        "fashion-mnist-test",
        "idx",
        10,
        files=IDX_SPLITS,
        md5=FASHION_MD5,
        default_split="test",
        folder="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        description="Fashion-MNIST test split (10k)",
    ),
    "usps": DatasetSpec(
        "usps",
        "usps",
        10,
        files={"train": ("usps.h5",), "test": ("usps.h5",)},
        description="USPS (9298 = train + test of usps.h5, 16×16)",
    ),
    **{f"emnist-{s}": _emnist(s) for s in EMNIST_SPLITS},
}


def matches_checksum(path: Path, spec: DatasetSpec) -> bool | None:
    """True/False when ``path`` is one of the spec's files with a published md5; None when none is known."""
    from .readers import md5_of

    key = path.name if path.name in spec.md5 else path.name + ".gz"
    if key not in spec.md5:
        return None
    gz_md5, raw_md5 = spec.md5[key]
    return md5_of(path) == gz_md5 or md5_of(path, decompressed=True) == raw_md5


def _belongs_elsewhere(path: Path, spec: DatasetSpec) -> bool:
    """True when ``path`` is not ``spec``'s file but matches another data set's published checksum."""
    if matches_checksum(path, spec) is not False:
        return False
    return any(matches_checksum(path, other) for other in REGISTRY.values() if other.dir_name != spec.dir_name)


def search_dirs(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for a data set's files, in order.

    ``data_dir`` (and ``$MFVC_DATA_DIR``) may hold the files directly or in a ``<name>/`` sub-folder.
    """
    roots: list[Path] = []
    for base in (data_dir, os.environ.get("MFVC_DATA_DIR")):
        if base:
            roots += [Path(base) / spec.dir_name, Path(base)]
    roots.append(cache_dir() / spec.dir_name)
    roots.append(Path("/usr/share/datasets") / spec.dir_name)
    return roots


def cache_dir() -> Path:
    """The user cache, ``$XDG_CACHE_HOME/mfvc_gpu`` (default ``~/.cache/mfvc_gpu``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mfvc_gpu"


def locate(spec: DatasetSpec, split: str, data_dir=None) -> list[Path] | None:
    """Paths of the files a split needs, from the first folder that holds all of them, else None."""
    names = sorted({f for s in _parts(spec, split) for f in spec.files[s]})
    for root in search_dirs(spec, data_dir):
        found = []
        for n in names:
            p = root / n
            if not p.exists() and n.endswith(".gz") and (root / n[:-3]).exists():
                p = root / n[:-3]  # uncompressed copies are accepted too
            found.append(p)
        if not all(p.exists() for p in found):
            continue
        if root.name != spec.dir_name and _belongs_elsewhere(min(found, key=lambda p: p.stat().st_size), spec):
            continue  # a flat folder holding another set's files of the same names (MNIST vs Fashion-MNIST)
        return found
    return None


def _parts(spec: DatasetSpec, split: str) -> list[str]:
    return list(spec.files) if split == "all" else [split]
