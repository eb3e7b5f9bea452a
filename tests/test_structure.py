"""The structure the code keeps: one writer of the estimator's state, one resolution step, a declared
backend contract, typed settings generated from the table, and no import of the command line."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest

from mfvc_gpu import MFVC, MFVCError

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mfvc_gpu"
SOURCES = sorted([*PKG.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


def _name(p: Path) -> str:
    return str(p.relative_to(ROOT))


# ---------------------------------------------------------------- one writer of the fitted state
def test_only_the_estimator_sets_its_fitted_attributes(writers, digits, tmp_path):
    est = MFVC(n_clusters=10, epochs=1, latent_dim=4, manifold="none", progress=False).fit(digits.images[:200])
    est.predict(digits.images[200:230])
    est.save(tmp_path / "model")
    loaded = MFVC.load(tmp_path / "model")
    loaded.transform(digits.images[200:230])
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(c, 0.2, size=(40, 3)) for c in (0, 3, 6)]).astype(np.float32)
    MFVC(n_clusters=3, n_neighbors=5, random_state=0).fit_features(z).predict(z[:5] + 0.01)
    assert writers.ours().keys() == {"mfvc_gpu.estimator"}
    assert {"labels_", "embedding_", "latent_", "model_", "seed_", "resolution_"} <= writers.ours()[
        "mfvc_gpu.estimator"
    ]


def test_no_module_but_the_estimator_assigns_an_estimators_attribute():
    """The static side of the rule: ``est.name_ = ...`` (or ``setattr(est, ...)``) appears in estimator.py alone."""
    bad = []
    for path in SOURCES:
        if path.name == "estimator.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                else []
            )
            flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            bad += [
                f"{_name(path)}:{node.lineno}"
                for t in flat
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in ("est", "estimator")
            ]
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") in ("setattr", "delattr")
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id in ("est", "estimator")
            ):
                bad.append(f"{_name(path)}:{node.lineno}")
    assert bad == []


# ---------------------------------------------------------------- one resolution step
def _calls(path: Path, names: set[str]) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if called in names:
                out.append(f"{_name(path)}:{node.lineno} {called}")
    return out


def test_the_placement_rule_and_the_profile_merge_live_in_the_resolution_step():
    """``backends.place`` is called by resolution.py alone, and the profiles' values are read there alone
    (params.py declares them); everyone else resolves through ``resolution.resolve``."""
    placed = [c for p in SOURCES if p.name != "resolution.py" for c in _calls(p, {"place"})]
    assert placed == []
    profiles = [
        _name(p)
        for p in SOURCES
        if p.name not in ("resolution.py", "params.py")
        and any(
            isinstance(n, ast.Name) and n.id == "PROFILES" and isinstance(n.ctx, ast.Load)
            for n in ast.walk(ast.parse(p.read_text()))
        )
    ]
    assert profiles == []


def test_a_bare_stage_config_never_means_a_profile():
    from mfvc_gpu.settings import ClusterConfig, ManifoldConfig, TrainConfig

    for cls, needed in (
        (TrainConfig, {"epochs", "batch_size", "lr", "augment"}),
        (ManifoldConfig, {"metric"}),
        (ClusterConfig, {"method"}),
    ):
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        assert required == needed, cls
        with pytest.raises(TypeError, match="missing"):
            cls()
    with pytest.raises(MFVCError, match=r"TrainConfig.epochs=None: a stage config holds resolved values"):
        TrainConfig(epochs=None, batch_size=64, augment=0.0, lr=0.005)
    with pytest.raises(MFVCError, match=r"lr=-1.0 is invalid: must be a number > 0"):
        TrainConfig(epochs=1, batch_size=64, augment=0.0, lr=-1.0)


def test_the_resolution_is_frozen_and_complete():
    from mfvc_gpu.resolution import resolve

    r = resolve({"device": "cpu", "random_state": 3, "n_clusters": 7})
    assert (r.profile, r.seed, r.n_components, r.placement.device, r.train.epochs) == ("fast", 3, 7, "cpu", 30)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = 4  # type: ignore[misc]
    with pytest.raises(MFVCError, match="unknown setting 'n_cluster'"):
        resolve({"n_cluster": 3})


# ---------------------------------------------------------------- the backend contract
def test_every_backend_implements_the_whole_contract():
    from mfvc_gpu.backends import Backend
    from mfvc_gpu.backends.cpu import CPUBackend
    from mfvc_gpu.backends.rapids import RapidsBackend

    members = {n: m for n, m in vars(Backend).items() if callable(m) and not n.startswith("_")}
    assert len(members) >= 12
    for cls in (CPUBackend, RapidsBackend):
        for name, declared in members.items():
            impl = getattr(cls, name, None)
            assert callable(impl), f"{cls.__name__} lacks {name}"
            assert list(inspect.signature(impl).parameters) == list(inspect.signature(declared).parameters), (
                f"{cls.__name__}.{name}"
            )
        assert isinstance(cls(), Backend)


def test_the_estimator_never_asks_which_backend_it_has():
    for name in ("estimator.py", "pipeline.py", "persistence.py", "runs.py", "predict.py"):
        tree = ast.parse((PKG / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):  # backend_ == "rapids", b.name != "cpu", ...
                text = ast.unparse(node)
                assert "backend" not in text and "rapids" not in text, f"{name}:{node.lineno}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                assert "Backend" not in ast.unparse(node) and "OnHost" not in ast.unparse(node), f"{name}:{node.lineno}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("hasattr", "getattr") and node.args:
                assert "backend" not in ast.unparse(node.args[0]) and ast.unparse(node.args[0]) != "b", (
                    f"{name}:{node.lineno}"
                )


# ---------------------------------------------------------------- typed settings from the table
def test_the_settings_file_is_what_the_table_generates():
    """``python -m mfvc_gpu.settings_source`` after a change to the table."""
    from mfvc_gpu.settings_source import render_settings

    assert (PKG / "settings.py").read_text() == render_settings()


def test_the_settings_are_visible_to_readers_and_tools():
    from mfvc_gpu.params import ESTIMATOR_PARAMS
    from mfvc_gpu.settings import TrainConfig, VAEConfig

    sig = inspect.signature(MFVC.__init__)
    assert [p for p in sig.parameters][1:] == [p.name for p in ESTIMATOR_PARAMS]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(sig.parameters.values())[1:])
    hints = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    assert hints["epochs"] == "int" and hints["compile"] == "str" and hints["amp"] == "bool"
    assert {f.name for f in dataclasses.fields(VAEConfig)} >= {"latent_dim", "beta", "in_channels", "image_size"}


# ---------------------------------------------------------------- layers
def test_nothing_imports_the_command_line_but_the_entry_point():
    bad = []
    for path in SOURCES:
        if path == PKG / "__main__.py" or path == PKG / "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                if mod.endswith("cli") or mod.endswith(".cli") or any(a.name == "cli" for a in node.names):
                    bad.append(f"{_name(path)}:{node.lineno}")
            elif isinstance(node, ast.Import) and any(a.name.endswith(".cli") for a in node.names):
                bad.append(f"{_name(path)}:{node.lineno}")
    assert bad == []
