"""Data sets: the registry, the readers, loading into 1×32×32 images in [0, 1], and download."""

from .download import fetch
from .loading import Dataset, dataset_status, load_dataset, to_images, unit_float, verify_file
from .registry import REGISTRY, DatasetSpec, cache_dir, locate, search_dirs


def verify_dataset(name: str, data_dir=None) -> list[str]:
    """Problems found checking a data set's files against their published checksums ([] = fine)."""
    spec = REGISTRY[name]
    paths = locate(spec, spec.default_split, data_dir) or []
    return [p for p in (verify_file(path, spec) for path in paths) if p]


__all__ = [
    "REGISTRY",
    "Dataset",
    "DatasetSpec",
    "cache_dir",
    "dataset_status",
    "fetch",
    "load_dataset",
    "locate",
    "search_dirs",
    "to_images",
    "unit_float",
    "verify_dataset",
    "verify_file",
]
