"""``mfvc-gpu reproduce``: table rows and mean ± std, the cache, resume, figures, skipped data sets.

Tiny runs: 200 digits, 1 epoch, 1–2 seeds, reduced grids. umap-learn is replaced here by a
PCA stand-in that records its calls, so that the tests do not spend a minute compiling numba code
and can count how often the manifold stage really runs; everything else (training, MFVC's
stages, the cache, the tables and the figures) is the real code. The real UMAP is exercised by
the pipeline's own tests.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from mfvc_gpu.cli import main
from mfvc_gpu.reproduce import runner as repro_runner
from mfvc_gpu.reproduce.report import fmt_mean_std, summarize, variants_markdown
from mfvc_gpu.reproduce.runner import Runner
from mfvc_gpu.reproduce.variants import Variant

BASE = ["--datasets", "digits", "--limit", "200", "--epochs", "1", "--no-progress"]
TABLE4 = [
    "reproduce",
    "--table",
    "4",
    *BASE,
    "--seeds",
    "2",
    "--variants",
    "kmeans-pixels,vae-kmeans,mfvc-dbscan,mfvc-no-simam,mfvc",
]


class Calls:
    """What the expensive steps were asked to do."""

    def __init__(self):
        self.train, self.umap, self.n2d = [], [], []
        self.interrupt_on_train: int | None = None


def _install(mp: pytest.MonkeyPatch, calls: Calls) -> None:
    import umap
    from sklearn.decomposition import PCA

    class RecordingUMAP:
        def __init__(self, n_neighbors=15, min_dist=0.1, n_components=2, metric="euclidean", random_state=None):
            self.args = dict(n_neighbors=n_neighbors, min_dist=min_dist, n_components=n_components)
            self.random_state = random_state

        def fit_transform(self, x):
            calls.umap.append(self.args)
            return PCA(self.args["n_components"], random_state=self.random_state).fit_transform(x)

    real_train, real_n2d = repro_runner.train_vae_features, repro_runner.train_n2d_features

    def train(images, params, checkpoint):
        calls.train.append(dict(attention=params["attention"], seed=params["random_state"]))
        if calls.interrupt_on_train == len(calls.train):
            raise KeyboardInterrupt
        return real_train(images, params, checkpoint)

    def n2d(*args, **kw):
        calls.n2d.append(args[3])
        return real_n2d(*args, **kw)

    mp.setattr(umap, "UMAP", RecordingUMAP)
    mp.setattr(repro_runner, "train_vae_features", train)
    mp.setattr(repro_runner, "train_n2d_features", n2d)


@pytest.fixture
def calls(monkeypatch):
    c = Calls()
    _install(monkeypatch, c)
    return c


@pytest.fixture(scope="module")
def table4(tmp_path_factory):
    """One Table 4 run (5 rows, 2 seeds) whose cache the other tests reuse."""
    out = tmp_path_factory.mktemp("repro")
    c = Calls()
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, c)
        rc = main([*TABLE4, "--out", str(out)])
    return out, rc, c


def _results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("cache/*/seed*/results/*.json"))]


def _rows(md: str) -> dict[str, list[str]]:
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| method") and not line.startswith("| data set"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("cache/**/*") if p.is_file()}


def test_table4_rows_mean_std_and_one_training_per_network(table4):
    out, rc, c = table4
    assert rc == 0
    # 2 seeds × 2 networks (SimAM for three rows, no attention for one); pixels need none
    assert sorted((t["attention"], t["seed"]) for t in c.train) == [
        ("none", 0),
        ("none", 1),
        ("simam", 0),
        ("simam", 1),
    ]
    # UMAP: SimAM codes (shared by MFVC and MFVC (DBSCAN)) and no-SimAM codes, per seed
    assert len(c.umap) == 4 and all(u == dict(n_neighbors=27, min_dist=0.0, n_components=10) for u in c.umap)
    rows = _rows((out / "table4.md").read_text())
    assert list(rows) == ["K-Means", "MFVC (DBSCAN)", "MFVC without SimAM", "β-VAE + K-Means", "MFVC"]
    recs = _results(out)
    assert len(recs) == 10 and all(r["status"] == "ok" and r["n_samples"] == 200 for r in recs)
    for label, cells in rows.items():
        seeds, acc, nmi, purity, paper_acc, paper_nmi, secs = cells
        assert seeds == "2" and paper_acc == paper_nmi == "—" and secs.endswith(" s")
        for cell in (acc, nmi, purity):
            assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}", cell), (label, cell)
        accs = sorted(r["acc"] for r in recs if r["label"] == label)
        assert len(accs) == 2
        assert acc == f"{statistics.fmean(accs):.3f} ± {statistics.stdev(accs):.3f}"
    assert not list(out.glob("cache/**/*.ckpt.pt")) and not list(out.glob("**/.*.tmp"))  # no checkpoint or temp left
    md = (out / "table4.md").read_text()
    assert "Command: `mfvc-gpu reproduce --table 4" in md and "logical cores" in md and "torch" in md


def test_mean_std_formatting_and_partial_cells():
    assert fmt_mean_std([0.9, 0.92]) == "0.910 ± 0.014"
    assert fmt_mean_std([0.5]) == "0.500"
    assert fmt_mean_std([]) == "—"
    ok = dict(status="ok", acc=0.8, nmi=0.7, purity=0.9, total_s=2.0)
    cell = summarize([ok, None])
    assert cell["state"] == "ok" and cell["ok"] == 1 and cell["acc"] == "0.800"
    md = variants_markdown(
        "T",
        dict(
            command="c",
            profile="fast",
            epochs=1,
            seeds="0–1",
            device="cpu",
            backend="cpu",
            hardware="h",
            wall_s=1.0,
            compute_s=2.0,
            computed=1,
            cached=0,
        ),
        {"x": [("row", cell, (0.969, 0.926)), ("empty", summarize([None, None]), None)]},
        {},
    )
    rows = _rows(md)
    assert rows["row"] == ["1/2", "0.800", "0.700", "0.900", "0.969", "0.926", "2.0 s"]
    assert rows["empty"][1] == "not yet measured"


def test_second_run_and_table2_come_from_the_cache(table4, calls):
    out, _, _ = table4
    before = _mtimes(out)
    assert main([*TABLE4, "--out", str(out)]) == 0
    assert main(["reproduce", "--table", "2", *BASE, "--seeds", "2", "--out", str(out)]) == 0
    assert calls.train == [] and calls.umap == []  # no training, no manifold: all from the cache
    assert _mtimes(out) == before  # and nothing rewritten
    t2, t4 = _rows((out / "table2.md").read_text()), _rows((out / "table4.md").read_text())
    assert t2["digits"][:6] == ["200", "10", "2", *t4["MFVC"][1:4]]
    assert "2 taken from the cache" in (out / "table2.md").read_text()


def test_interrupted_run_resumes_where_it_stopped(tmp_path, calls):
    out = tmp_path / "r"
    cmd = ["reproduce", "--table", "2", *BASE, "--seeds", "2", "--out", str(out)]
    calls.interrupt_on_train = 2  # Ctrl-C while the second seed's network trains
    assert main(cmd) == 130
    done = _results(out)
    assert [r["seed"] for r in done] == [0]
    first = next(out.glob("cache/*/seed0/results/*.json"))
    stamp = first.stat().st_mtime_ns
    assert not (out / "table2.md").exists()
    calls.interrupt_on_train, calls.train = None, []
    assert main(cmd) == 0
    assert [t["seed"] for t in calls.train] == [1]  # only the unfinished seed trains
    assert first.stat().st_mtime_ns == stamp
    assert _rows((out / "table2.md").read_text())["digits"][2] == "2"


def test_figures_reuse_the_trained_encoder(table4, calls):
    out, _, _ = table4
    grid = ["--n-neighbors-grid", "5,27", "--min-dist-grid", "0,0.5"]
    assert main(["reproduce", "--figure", "8", *BASE, "--seeds", "1", *grid, "--out", str(out)]) == 0
    assert calls.train == []  # the sweep re-runs UMAP + K-Means on the cached codes only
    assert sorted((u["n_neighbors"], u["min_dist"]) for u in calls.umap) == [(5, 0.0), (27, 0.5)]  # (27, 0) is MFVC's
    md = (out / "figure8.md").read_text()
    assert re.search(r"^\| 5 \| \d\.\d{3} \|$", md, re.M) and re.search(r"^\| 0\.5 \| \d\.\d{3} \|$", md, re.M)
    calls.umap.clear()
    assert (
        main(["reproduce", "--figure", "9", *BASE, "--seeds", "1", "--min-samples-grid", "5,10", "--out", str(out)])
        == 0
    )
    assert calls.train == [] and len(calls.umap) == 1  # only the pixels' embedding is new
    assert re.search(r"^\| 10 \| \d\.\d{3} \| \d\.\d{3} \|$", (out / "figure9.md").read_text(), re.M)
    assert main(["reproduce", "--figure", "5", *BASE, "--out", str(out)]) == 0
    assert main(["reproduce", "--figure", "7", *BASE, "--out", str(out)]) == 0
    assert calls.train == []
    pngs = [
        "figure8-n_neighbors.png",
        "figure8-min_dist.png",
        "figure9-digits-first200.png",
        "figure5-digits-first200.png",
        "figure7-digits-first200-mfvc.png",
        "figure7-digits-first200-kmeans-pixels.png",
        "figure7-digits-first200-classes.png",
    ]
    for name in pngs:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert "![MFVC, digits](figure5-digits-first200.png)" in (out / "figure5.md").read_text()


def test_table3_trains_the_n2d_autoencoder_once_per_seed(table4, calls):
    out, _, _ = table4
    cmd = [
        "reproduce",
        "--table",
        "3",
        *BASE,
        "--seeds",
        "1",
        "--variants",
        "n2d,umap-gmm-pixels,mfvc",
        "--out",
        str(out),
    ]
    assert main(cmd) == 0
    assert calls.n2d == [0] and calls.train == []
    rows = _rows((out / "table3.md").read_text())
    assert list(rows) == ["UMAP + GMM (pixels)", "N2D-style (MLP autoencoder + UMAP + GMM)", "MFVC"]
    assert all(re.fullmatch(r"\d\.\d{3}", r[1]) for r in rows.values())
    codes = list(out.glob("cache/digits-first200/seed0/features/n2d-*.npy"))
    assert len(codes) == 1 and np.load(codes[0]).shape == (200, 10)
    assert main(cmd) == 0 and calls.n2d == [0]


def test_missing_data_sets_are_listed_as_skipped(table4, calls, tmp_path, monkeypatch):
    out, _, _ = table4
    monkeypatch.setenv("MFVC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    names = ["digits", str(tmp_path / "no-such.npz")]
    if not Path("/usr/share/datasets/emnist").exists():
        names.append("emnist-letters")
    assert (
        main(
            [
                "reproduce",
                "--table",
                "2",
                "--datasets",
                *names,
                "--limit",
                "200",
                "--epochs",
                "1",
                "--seeds",
                "2",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    md = (out / "table2.md").read_text()
    assert list(_rows(md)) == ["digits"]
    assert re.search(r"^\* data set .*no-such\.npz skipped: unknown data set", md, re.M)
    if "emnist-letters" in names:
        assert re.search(r"^\* data set emnist-letters skipped: data set 'emnist-letters' not found", md, re.M)
    assert calls.train == []


def test_oversized_and_failing_rows_are_reported_not_raised(tmp_path, calls):
    runner = Runner(tmp_path, epochs=1, limit=200, device="cpu", backend="cpu")
    big = Variant(
        "iso", "Isomap", features="pixels", manifold={"manifold": "isomap"}, max_samples=100, too_large="too many"
    )
    rec = runner.result("digits", big, 0)
    assert rec["status"] == "skipped" and rec["reason"] == "200 images: too many"
    bad = Variant(
        "bad", "bad", features="pixels", manifold={"manifold": "none"}, cluster={"cluster": "dbscan", "eps": -1.0}
    )
    rec = runner.result("digits", bad, 0)
    assert rec["status"] == "error" and "eps=-1.0" in rec["error"]
    assert runner.result("digits", bad, 0)["cached"]  # cached as failed: not computed again ...
    runner.retry_failed = True
    assert not runner.result("digits", bad, 0)["cached"]  # ... unless asked
    cell = summarize([rec])
    md = variants_markdown(
        "T",
        dict(
            command="c",
            profile="fast",
            epochs=1,
            seeds="0",
            device="cpu",
            backend="cpu",
            hardware="h",
            wall_s=1.0,
            compute_s=0.0,
            computed=1,
            cached=0,
        ),
        {"digits": [("bad", cell, None)]},
        {},
    )
    assert _rows(md)["bad"][1] == "failed ¹" and "* ¹ digits, bad: failed: MFVCError: eps=-1.0" in md


def test_report_only_computes_nothing(tmp_path, calls):
    assert main(["reproduce", "--table", "4", *BASE, "--seeds", "1", "--report-only", "--out", str(tmp_path)]) == 0
    rows = _rows((tmp_path / "table4.md").read_text())
    assert len(rows) == 9 and all(r[1] == "not yet measured" for r in rows.values())
    assert calls.train == [] and calls.umap == [] and not list(tmp_path.glob("cache/**/*.json"))


def test_compute_time_counts_a_shared_network_and_embedding_once():
    from mfvc_gpu.reproduce import compute_seconds

    def rec(seed, features, embedding, train, manifold, cluster):
        return dict(
            dataset="d",
            seed=seed,
            features=features,
            embedding=embedding,
            seconds=dict(train=train, manifold=manifold, cluster=cluster),
        )

    recs = [
        rec(0, "vae", "vae.umap", 100.0, 10.0, 1.0),  # MFVC
        rec(0, "vae", "vae.umap", 100.0, 10.0, 2.0),  # MFVC (DBSCAN): same network, same embedding
        rec(0, "vae", None, 100.0, 0.0, 3.0),  # β-VAE + K-Means: same network, no manifold
        rec(0, "pixels", None, 0.0, 0.0, 4.0),  # K-Means on pixels
        rec(1, "vae", "vae.umap", 90.0, 9.0, 1.0),
    ]  # another seed trains its own network
    assert compute_seconds(recs) == pytest.approx(100 + 10 + 1 + 2 + 3 + 4 + 90 + 9 + 1)
    assert compute_seconds([dict(dataset="d", seed=0, status="error")]) == 0.0


def test_a_variant_named_for_its_clusterer_uses_it_and_the_rest_take_the_profiles():
    from mfvc_gpu.reproduce.variants import MFVC, TABLE3, TABLE4

    for v in TABLE3 + TABLE4:
        if "K-Means" in v.label:
            assert v.cluster.get("cluster") == "kmeans", v.name
        if "GMM" in v.label:
            assert (
                v.cluster == {"cluster": "gmm", "n_init": 2} and v.manifold.get("metric", "euclidean") == "euclidean"
            ), v.name
    assert MFVC.cluster == {} and "metric" not in MFVC.manifold  # MFVC itself: the profile's clustering


def test_the_runner_resolves_a_variant_by_the_estimators_rule(tmp_path):
    """A variant without a manifold stage and no clusterer gets K-Means, as the estimator would give it."""
    from mfvc_gpu.reproduce.variants import MFVC, Variant

    fast, paper = (
        Runner(tmp_path, "fast", device="cpu", backend="cpu"),
        Runner(tmp_path, "paper", device="cpu", backend="cpu"),
    )
    codes_only = Variant("codes", "codes", manifold={"manifold": "none"})
    assert fast.cluster_params(codes_only)["cluster"] == "kmeans"
    assert (fast.manifold_params(MFVC)["metric"], fast.cluster_params(MFVC)["cluster"]) == ("cosine", "gmm")
    assert (paper.manifold_params(MFVC)["metric"], paper.cluster_params(MFVC)["cluster"]) == ("euclidean", "kmeans")
