"""The one resolution step: from an estimator's parameters to what a fit runs.

:func:`resolve` checks every parameter against the table, applies the placement rule
(:func:`mfvc_gpu.backends.place`) and the profile merge (a setting left at None takes its
profile's value; K-Means where only K-Means works), and returns a frozen :class:`Resolution`:
the placement, the profile, the four stage configs, the seed and UMAP's output dimension.
It is the only caller of the placement rule and of the profile merge: the estimator, the
reproduction runner, torchrun, the Dask path and the search script all resolve through it.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import backends
from .backends import Placement
from .errors import MFVCError
from .params import BY_NAME, ESTIMATOR_PARAMS, PROFILES, STAGE_CLASSES, stage_params
from .settings import ClusterConfig, ManifoldConfig, TrainConfig, VAEConfig

AUTO_COMPONENTS = 10  # UMAP's output dimension while K is being chosen (n_clusters="auto", n_components unset)
DEFAULTS: dict[str, Any] = {p.name: p.default for p in ESTIMATOR_PARAMS}
_CLASSES = {"network": VAEConfig, "train": TrainConfig, "manifold": ManifoldConfig, "cluster": ClusterConfig}
assert set(_CLASSES) == set(STAGE_CLASSES)


@dataclass(frozen=True)
class Resolution:
    """What one fit runs, resolved once. ``params``: every estimator parameter, with the profile's
    values in place of None; ``train_device``: where the network trains (the placement's device,
    except on the Dask path, where the client trains and the workers run the rest)."""

    placement: Placement
    train_device: str
    profile: str
    vae: VAEConfig
    train: TrainConfig
    manifold: ManifoldConfig
    cluster: ClusterConfig
    seed: int
    n_components: int
    params: Mapping[str, Any] = field(repr=False)


def has_map(manifold: ManifoldConfig, cluster: ClusterConfig) -> bool:
    """Whether a fit with these stage configs trains the learned map: ``out_of_sample='map'`` with a manifold
    stage and a clusterer that labels new points (DBSCAN does not)."""
    return manifold.out_of_sample == "map" and manifold.method != "none" and cluster.method != "dbscan"


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every estimator parameter (the table's default where absent) checked against the table; unknown
    names are refused. Returns the full mapping."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise MFVCError(f"unknown setting {unknown[0]!r}; the estimator's settings are {', '.join(sorted(DEFAULTS))}")
    full = DEFAULTS | dict(params)
    for p in ESTIMATOR_PARAMS:
        value = full[p.name]
        if p.name == "random_state":
            if isinstance(value, numbers.Integral) or value is None:
                BY_NAME["random_state"].check(value)
            elif type(value).__name__ != "RandomState":
                raise MFVCError(
                    f"random_state={value!r} is invalid: must be an integer >= 0, None or a numpy RandomState"
                )
        elif p.name == "device":
            if not isinstance(value, str):
                raise MFVCError(f"device={value!r} is not one of auto, cpu, cuda, cuda:N")
            backends.check_device(value)
        elif p.name == "checkpoint":
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise MFVCError(f"checkpoint={value!r} is not a path")
        else:
            full[p.name] = p.check(value)
    if full["n_clusters"] is None:
        raise MFVCError("n_clusters=None: give the number of clusters, or 'auto'")
    if full["fit_sample"] is not None and full["cluster"] == "dbscan":
        raise MFVCError(
            "fit_sample labels the images outside the sample with the fitted clusterer, and DBSCAN labels no new "
            "points; use cluster='kmeans' or 'gmm', or leave out fit_sample"
        )
    if full["n_clusters"] == "auto" and full["cluster"] not in (None, "kmeans"):
        raise MFVCError(f"n_clusters='auto' chooses K for K-Means; cluster={full['cluster']!r} needs a number")
    return full


def check_sizes(params: Mapping[str, Any], n_samples: int) -> None:
    """The checks that depend on the number of samples."""
    n_clusters, k_min, k_max = params["n_clusters"], params["k_min"], params["k_max"]
    if n_clusters == "auto":
        if k_min > k_max or k_max >= n_samples:
            raise MFVCError(f"k_min={k_min}, k_max={k_max}: need k_min <= k_max < {n_samples} (the samples)")
    elif n_clusters > n_samples:
        raise MFVCError(f"n_clusters={n_clusters} exceeds the number of samples ({n_samples}); lower it or add data")
    if params["manifold"] != "none" and params["n_neighbors"] >= n_samples:
        raise MFVCError(
            f"n_neighbors={params['n_neighbors']} must be below the number of samples ({n_samples}); lower it"
        )
    if params["manifold"] != "none" and params["n_components"] is not None and params["n_components"] >= n_samples - 1:
        raise MFVCError(f"n_components={params['n_components']} must be well below the number of samples ({n_samples})")


def seed_of(random_state: Any) -> int:
    """An int seed from ``random_state`` (None, an int or a RandomState), without touching global streams."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(BY_NAME["random_state"].check(random_state))
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def check(params: Mapping[str, Any], n_samples: int | None = None, dask: bool = False) -> dict[str, Any]:
    """:func:`check_params`, then (given ``n_samples``) :func:`check_sizes`, then (``dask``) what the Dask path
    cannot do; the full checked mapping. Everything :func:`resolve` refuses before placing anything."""
    full = check_params(params)
    if n_samples is not None:
        check_sizes(full, n_samples)
    if dask:
        _dask_only(full)
    return full


def _dask_only(params: Mapping[str, Any]) -> None:
    """What the Dask path cannot do, refused before any work."""
    if params["fit_sample"] is not None:
        raise MFVCError(
            "fit_sample: the Dask path fits UMAP on its own sample (sample_size) and labels every row itself; "
            "leave out fit_sample (--fit-sample) there"
        )
    if params["n_clusters"] == "auto":
        raise MFVCError(
            "n_clusters='auto': the Dask path needs a number of clusters; choose one (a run without Dask "
            "on a sample can choose it for you)"
        )
    if params["cluster"] not in (None, "kmeans"):
        raise MFVCError(
            f"cluster={params['cluster']!r}: the Dask path clusters with K-Means only; use kmeans or leave "
            "out --dask-cluster"
        )
    if params["manifold"] not in ("umap", "none"):
        raise MFVCError(
            f"manifold={params['manifold']!r}: the Dask path runs UMAP or no manifold stage; leave out "
            f"--dask-cluster for {params['manifold']}"
        )


def resolve(
    params: Mapping[str, Any], *, n_samples: int | None = None, workers: tuple[bool, bool] | None = None
) -> Resolution:
    """Resolve an estimator's parameters (absent ones take the table's defaults) into a :class:`Resolution`.

    ``n_samples``: the number of samples to fit, for the checks that depend on it. ``workers``: on the
    Dask path, whether every worker has a CUDA GPU and whether every one has cuML; UMAP and K-Means are
    then placed by those facts, and the network trains on this process's device.
    """
    full = check(params, n_samples, dask=workers is not None)
    if workers is not None:
        try:
            placement = backends.place(full["device"], full["backend"], cuda=workers[0], rapids=workers[1], dask=True)
        except MFVCError as exc:
            raise MFVCError(f"on the Dask workers: {exc}") from exc
        train_device = backends.place(full["device"], "cpu").device
    else:
        placement = backends.place(full["device"], full["backend"])
        train_device = placement.device
    profile = "paper" if full["profile"] == "auto" and train_device.startswith("cuda") else full["profile"]
    profile = "fast" if profile == "auto" else profile
    kmeans_only = workers is not None or full["manifold"] == "none" or full["n_clusters"] == "auto"
    own = PROFILES[profile] | ({"cluster": "kmeans"} if kmeans_only else {})
    merged = {k: own[k] if v is None and k in own else v for k, v in full.items()}
    if merged["out_of_sample"] == "auto":  # measured: the map in one process, UMAP's transform on the Dask path
        merged["out_of_sample"] = "umap" if workers is not None else "map"
    stages = {s: cls(**{p.field_name: merged[p.name] for p in stage_params(s)}) for s, cls in _CLASSES.items()}
    auto = merged["n_clusters"] == "auto"
    n_components = merged["n_components"] or (AUTO_COMPONENTS if auto else merged["n_clusters"])
    return Resolution(
        placement,
        train_device,
        profile,
        stages["network"],
        stages["train"],
        stages["manifold"],
        stages["cluster"],
        seed_of(full["random_state"]),
        int(n_components),
        merged,
    )


__all__ = [
    "Resolution",
    "resolve",
    "has_map",
    "check",
    "check_params",
    "check_sizes",
    "seed_of",
    "AUTO_COMPONENTS",
    "DEFAULTS",
]
