"""The layout: the installed package is mfvc_gpu alone, stages by file name, no cycles, small files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mfvc_gpu"


def _imports(path: Path) -> set[str]:
    """The mfvc_gpu modules ``path`` imports at module level (lazy imports inside functions excluded)."""
    tree = ast.parse(path.read_text())
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    here = parts if path.name == "__init__.py" else parts[:-1]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("mfvc_gpu"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mfvc_gpu"))
    return out


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def test_no_import_cycles_between_modules():
    mods = _modules()
    graph = {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}

    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, (*seen, n))) for n in graph[a])

    # a package's __init__ importing its own submodules is how packages work; anything else is a cycle
    cycles = [
        (a, b)
        for a in graph
        for b in graph[a]
        if not b.startswith(a + ".") and reaches(b, a) and not a.startswith(b + ".")
    ]
    assert cycles == []


def test_no_module_imports_another_modules_private_names():
    bad = []
    for m, p in _modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mfvc_gpu")):
                bad += [f"{m}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert bad == []


def test_files_stay_small():
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert big == {}


def test_the_settings_import_no_torch():
    """params.py and config.py, and every package module they import, have no torch or stage code."""
    mods = _modules()
    todo, seen = ["mfvc_gpu.params", "mfvc_gpu.config"], set()
    while todo:
        m = todo.pop()
        if m in seen or m not in mods:
            continue
        seen.add(m)
        src = mods[m].read_text()
        assert "import torch" not in src, m
        todo += [i for i in _imports(mods[m]) if i != "mfvc_gpu"]
    assert seen.isdisjoint({"mfvc_gpu.models", "mfvc_gpu.train", "mfvc_gpu.estimator"}), seen


def test_only_mfvc_gpu_is_installed_and_its_commands_work(tmp_path):
    """``benchmarks`` is the repository's script folder, not a package: outside the checkout it
    does not import, while ``mfvc-gpu bench`` and ``reproduce`` (sub-packages of mfvc_gpu) do."""
    r = subprocess.run(
        [sys.executable, "-c", "import benchmarks"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert r.returncode != 0 and "No module named 'benchmarks'" in r.stderr
    for cmd in ("bench", "reproduce"):
        r = subprocess.run(
            [sys.executable, "-m", "mfvc_gpu", cmd, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120
        )
        assert r.returncode == 0 and "usage: mfvc-gpu " + cmd in r.stdout
    assert not (PKG.parent / "benchmarks" / "__init__.py").exists()
