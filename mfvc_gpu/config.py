"""A run's settings (what ``config.yaml`` holds) and the stage configs, derived from the table.

:class:`RunConfig` has one field per setting in :data:`mfvc_gpu.params.PARAMS` that a run
records; the YAML schema is the same flat mapping (``n_neighbors: 15``). For convenience the
settings may also be grouped under their stage (``manifold: {metric: cosine}``), where a stage's
``method`` names the stage's own choice (``cluster: {method: dbscan}``). Unknown keys and invalid
values fail with one line naming the key, the value and what is valid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .errors import MFVCError
from .params import ALIASES, BY_NAME, CONFIG_PARAMS, PROFILES, STAGES, stage_dataclass

# A stage config holds resolved values: a setting that defaults to its profile's defaults here to the paper's.
ManifoldConfig = stage_dataclass("ManifoldConfig", "manifold", "The manifold stage.", defaults=PROFILES["paper"],
                                 module=__name__)
ClusterConfig = stage_dataclass("ClusterConfig", "cluster", "The clustering stage.", defaults=PROFILES["paper"],
                                module=__name__)


def profile_for(profile: str, device_type: str) -> str:
    """``auto`` means ``paper`` on CUDA and ``fast`` on the CPU."""
    if profile == "auto":
        return "paper" if device_type == "cuda" else "fast"
    if profile not in PROFILES:
        raise MFVCError(f"profile={profile!r} is invalid: must be one of auto, {', '.join(PROFILES)}")
    return profile


def with_profile(settings: dict, profile: str, kmeans_only: bool = False) -> dict:
    """``settings`` with every None that ``profile`` has a value for replaced by it. A clusterer left to
    the profile is K-Means where only K-Means works: no manifold stage (``manifold`` 'none'), choosing K
    (``n_clusters`` 'auto'), or ``kmeans_only`` (the Dask path)."""
    kmeans_only = kmeans_only or settings.get("manifold") == "none" or settings.get("n_clusters") == "auto"
    own = PROFILES[profile] | ({"cluster": "kmeans"} if kmeans_only else {})
    return {k: own[k] if v is None and k in own else v for k, v in settings.items()}


def _run_config_class() -> type:
    fields = [(p.name, Any, dataclasses.field(default=p.default_in_run)) for p in CONFIG_PARAMS]
    return dataclasses.make_dataclass("RunConfig", fields, frozen=True, namespace={
        "__doc__": "Everything one clustering run needs; what ``config.yaml`` of a run folder holds. "
                   "One field per setting of :data:`mfvc_gpu.params.PARAMS` (``config=True``).",
        "to_dict": lambda self: dataclasses.asdict(self),
        "to_yaml": _to_yaml,
        "from_dict": classmethod(_from_dict),
        "from_yaml": classmethod(_from_yaml),
        "estimator_params": _estimator_params,
        "__post_init__": _check_all,
    })


def _check_all(self) -> None:
    for p in CONFIG_PARAMS:
        checked = p.check(getattr(self, p.name))
        object.__setattr__(self, p.name, checked)


def _estimator_params(self) -> dict:
    """The :class:`mfvc_gpu.MFVC` keyword arguments of this run."""
    return {p.name: getattr(self, p.name) for p in CONFIG_PARAMS if p.estimator}


def _to_yaml(self, path: Path) -> Path:
    """Write ``config.yaml`` atomically: the flat mapping, grouped by stage with a comment each."""
    from .fileio import write_text

    d = self.to_dict()
    parts = []
    for stage in STAGES:
        keys = {p.name: d[p.name] for p in CONFIG_PARAMS if p.stage == stage}
        if keys:
            parts.append(f"# {stage}\n" + yaml.safe_dump(keys, sort_keys=False))
    return write_text(path, "".join(parts))


def _flatten(d: dict) -> dict:
    """Accept settings grouped under their stage (and ``vae`` for ``network``); return the flat mapping."""
    flat: dict = {}
    for key, value in d.items():
        stage = "network" if key == "vae" else key
        if isinstance(value, dict) and stage in STAGES:
            for sub, v in value.items():
                flat[stage if sub == "method" and stage in BY_NAME else sub] = v
        else:
            flat[key] = value
    return flat


def _from_dict(cls, d: dict):
    if not isinstance(d, dict):
        raise MFVCError(f"a config must be a mapping of settings, not {type(d).__name__}")
    known = {p.name for p in CONFIG_PARAMS}
    kwargs = {}
    for key, value in _flatten(d).items():
        name = ALIASES.get(key, key)
        if name not in known:
            raise MFVCError(f"unknown setting {key!r} in the config; known settings are {', '.join(sorted(known))}")
        kwargs[name] = value
    return cls(**kwargs)


MAX_CONFIG_BYTES = 1 << 20  # a config.yaml is a few hundred bytes


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (a ``!!python/...`` tag is refused, never built)."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    if "python/" in problem or "could not determine a constructor" in problem:
        problem = f"{problem}; only plain YAML (settings and their values) is read, no Python objects"
    return " ".join(f"{problem}{where}".split())


def _from_yaml(cls, path: Path):
    """Read ``config.yaml`` as untrusted text: ``yaml.safe_load`` only (no Python objects, ever)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise MFVCError(f"cannot read the config {path}: {path.stat().st_size} bytes is not a config file")
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except OSError as exc:
        raise MFVCError(f"cannot read the config {path}: {exc.strerror or exc}; check the path") from exc
    except UnicodeDecodeError as exc:
        raise MFVCError(f"cannot read the config {path}: it is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise MFVCError(f"cannot read the config {path}: {_yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise MFVCError(f"{path} must hold a mapping of settings")
    try:
        return cls.from_dict(data)
    except MFVCError as exc:
        raise MFVCError(f"{path}: {exc}") from exc


RunConfig = _run_config_class()
RunConfig.__module__ = __name__

__all__ = ["PROFILES", "ManifoldConfig", "ClusterConfig", "RunConfig", "profile_for", "with_profile", "replace"]
