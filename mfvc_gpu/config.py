"""Settings as frozen dataclasses, the two training profiles, and a YAML round trip."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from .errors import MFVCError
from .models.vae import VAEConfig
from .train import TrainConfig

# The paper's protocol (section 3): AdamW, lr 0.005, cosine annealing, batch 64, 200 epochs.
# "fast" is the CPU profile: the same protocol for 30 epochs. Measured with seeds 0-2 on a 2-core
# CPU: MNIST-test ACC 0.966 at 20 epochs, 0.971 at 30; Fashion-MNIST-test 0.591 and 0.592
# (docs/RESULTS.md, "Choosing the fast profile").
PROFILES: dict[str, TrainConfig] = {
    "paper": TrainConfig(epochs=200, batch_size=64, lr=0.005),
    "fast": TrainConfig(epochs=30, batch_size=64, lr=0.005),
}


@dataclass(frozen=True)
class ManifoldConfig:
    """The manifold stage.

    method : "umap" (paper), "isomap" (ablation) or "none" (cluster the latent codes directly).
    n_neighbors : neighbourhood size; larger values favour global structure (paper: 27).
    min_dist : how tightly UMAP packs points; 0.0 gives the dense clumps K-Means likes.
    n_components : output dimension; None means the number of clusters (paper).
    metric : distance in the input space.
    knn : kNN graph build on the GPU, "brute" (zero-copy) or "nn-descent" (copies to host).
    """

    method: str = "umap"
    n_neighbors: int = 27
    min_dist: float = 0.0
    n_components: int | None = None
    metric: str = "euclidean"
    knn: str = "brute"


@dataclass(frozen=True)
class ClusterConfig:
    """The clustering stage: "kmeans" (paper), "dbscan" or "gmm" (ablations)."""

    method: str = "kmeans"
    n_init: int = 10
    eps: float = 0.5
    min_samples: int = 5


@dataclass(frozen=True)
class RunConfig:
    """Everything one clustering run needs; what ``config.yaml`` of a run folder holds."""

    dataset: str = "digits"
    split: str | None = None
    data_dir: str | None = None
    n_clusters: int | None = None
    profile: str = "auto"
    epochs: int | None = None  # None: the profile's value
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    encoder: str = "vae"
    vae: VAEConfig = field(default_factory=VAEConfig)
    manifold: ManifoldConfig = field(default_factory=ManifoldConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        nested = {"vae": VAEConfig, "manifold": ManifoldConfig, "cluster": ClusterConfig}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise MFVCError(f"unknown config keys {sorted(unknown)}; known keys are {sorted(known)}")
        kwargs = {}
        for k, v in d.items():
            if k in nested and isinstance(v, dict):
                sub = {f.name for f in fields(nested[k])}
                bad = set(v) - sub
                if bad:
                    raise MFVCError(f"unknown keys {sorted(bad)} under '{k}'; known keys are {sorted(sub)}")
                v = nested[k](**v)
            kwargs[k] = v
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: Path) -> RunConfig:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise MFVCError(f"cannot read the config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise MFVCError(f"{path} must hold a mapping of settings")
        return cls.from_dict(data)


def profile_for(profile: str, device_type: str) -> str:
    """``auto`` means ``paper`` on CUDA and ``fast`` on the CPU."""
    if profile == "auto":
        return "paper" if device_type == "cuda" else "fast"
    if profile not in PROFILES:
        raise MFVCError(f"profile={profile!r} is not one of auto, {', '.join(PROFILES)}")
    return profile


__all__ = ["PROFILES", "ManifoldConfig", "ClusterConfig", "RunConfig", "VAEConfig", "TrainConfig", "profile_for", "replace"]
