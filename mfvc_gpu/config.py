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
from .params import ALIASES, BY_NAME, CONFIG_PARAMS, PROFILES, STAGES
from .settings import ClusterConfig, ManifoldConfig, RunFields


class RunConfig(RunFields):
    """Everything one clustering run needs; what ``config.yaml`` of a run folder holds. One typed field
    per setting of :data:`mfvc_gpu.params.PARAMS` with ``config=True`` (see :class:`~mfvc_gpu.settings.RunFields`)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def estimator_params(self) -> dict[str, Any]:
        """The :class:`mfvc_gpu.MFVC` keyword arguments of this run."""
        return {p.name: getattr(self, p.name) for p in CONFIG_PARAMS if p.estimator}

    def to_yaml(self, path: Path) -> Path:
        """Write ``config.yaml`` atomically: the flat mapping, grouped by stage with a comment each."""
        from .fileio import write_text

        d = self.to_dict()
        parts = []
        for stage in STAGES:
            keys = {p.name: d[p.name] for p in CONFIG_PARAMS if p.stage == stage}
            if keys:
                parts.append(f"# {stage}\n" + yaml.safe_dump(keys, sort_keys=False))
        return write_text(path, "".join(parts))

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """Settings given flat or grouped by stage; unknown keys and invalid values fail with one line."""
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

    @classmethod
    def from_yaml(cls, path: Path) -> RunConfig:
        """Read ``config.yaml`` as untrusted text: ``yaml.safe_load`` only (no Python objects, ever)."""
        path = Path(path)
        data = _read_yaml(path)
        try:
            return cls.from_dict(data)
        except MFVCError as exc:
            raise MFVCError(f"{path}: {exc}") from exc


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


MAX_CONFIG_BYTES = 1 << 20  # a config.yaml is a few hundred bytes


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (a ``!!python/...`` tag is refused, never built)."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    if "python/" in problem or "could not determine a constructor" in problem:
        problem = f"{problem}; only plain YAML (settings and their values) is read, no Python objects"
    return " ".join(f"{problem}{where}".split())


def _read_yaml(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise MFVCError(f"cannot read the config {path}: {path.stat().st_size} bytes is not a config file")
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except OSError as exc:
        raise MFVCError(f"cannot read the config {path}: {exc.strerror or exc}; check the path") from exc
    except UnicodeDecodeError as exc:
        raise MFVCError(
            f"cannot read the config {path}: it is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except yaml.YAMLError as exc:
        raise MFVCError(f"cannot read the config {path}: {_yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise MFVCError(f"{path} must hold a mapping of settings")
    return data


__all__ = ["PROFILES", "ManifoldConfig", "ClusterConfig", "RunConfig", "replace"]
