"""benchmarks/search_defaults.py: points share the reproduction cache, the CSV is tidy, a rerun computes nothing."""

import csv
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def search():
    spec = importlib.util.spec_from_file_location("search_defaults", REPO / "benchmarks" / "search_defaults.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_point_is_a_valid_setting_of_mfvc(search):
    from mfvc_gpu import MFVC
    from mfvc_gpu.resolution import check

    for name, (grid, changes) in search.POINTS.items():
        changes = search.settings_of(grid, changes)
        check(MFVC(**changes).get_params(), 10_000)  # a typo in a point fails here, not after an hour of training
        v = search.variant_of(name, changes)
        assert grid in ("network", "manifold") and "," not in name
        if name != "default":  # a manifold point keeps the default network; a network point changes it
            assert (grid == "manifold") == (not v.network and "epochs" not in changes), name


def test_a_search_writes_one_row_per_run_and_resumes_from_the_cache(search, tmp_path, monkeypatch, capsys):
    import mfvc_gpu.reproduce.runner as runner

    args = [
        "--points",
        "default,nn=10",
        "--datasets",
        "digits",
        "--seeds",
        "0",
        "--limit",
        "200",
        "--out",
        str(tmp_path),
    ]
    trained = []
    real = runner.train_vae_features
    monkeypatch.setattr(runner, "train_vae_features", lambda *a, **k: trained.append(1) or real(*a, **k))
    assert search.main(args) == 0
    assert len(trained) == 1  # nn=10 reuses the default point's network
    with open(tmp_path / "search" / "search.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["point"], r["dataset"], r["seed"], r["status"]) for r in rows] == [
        ("default", "digits", "0", "ok"),
        ("nn=10", "digits", "0", "ok"),
    ]
    assert [r["n_neighbors"] for r in rows] == ["27", "10"] and {r["epochs"] for r in rows} == {"30"}
    assert rows[0]["train_s"] == rows[1]["train_s"] and float(rows[0]["acc"]) > 0.3
    first = (tmp_path / "search" / "search.csv").read_text()
    monkeypatch.setattr(runner, "train_vae_features", lambda *a, **k: pytest.fail("trained again"))
    assert search.main(args) == 0  # the same command again: every run from the cache
    assert (tmp_path / "search" / "search.csv").read_text() == first
    assert "| network | default | digits | 1 |" in (tmp_path / "search" / "search.md").read_text()
    assert search.main([*args[:-2], "--points", "nn=15", "--report-only", "--out", str(tmp_path)]) == 0
    assert "1 run(s) of these points are not in the cache yet" in capsys.readouterr().out
    assert search.main([*args, "--report-only", "--confusion"]) == 0
    table = (tmp_path / "search" / "confusion-default-digits-seed0.md").read_text().splitlines()
    counts = [
        list(map(int, (c.strip("* ") for c in line.strip("|").split("|")[1:])))
        for line in table[3:]
        if line.startswith("| ")
    ]
    assert sum(row[-1] for row in counts) == 200 and all(sum(row[:-1]) == row[-1] for row in counts)


def test_an_unknown_point_is_one_line(search, capsys):
    assert search.main(["--points", "beta=7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("search_defaults: unknown point(s) beta=7") and len(err.splitlines()) == 1
