"""Unlabeled images start to finish: K chosen for you, the run report, predict from the command line."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from mfvc_gpu.choose_k import CRITERION, ranked, search_k
from mfvc_gpu.cli import main


@pytest.fixture(scope="module")
def unlabeled_folder(tmp_path_factory, digits):
    """300 digits as PNG files in one flat folder: no class sub-folders, so no labels."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images") / "my_images"
    root.mkdir()
    for i, img in enumerate(digits.images[:300, 0]):
        Image.fromarray(img).save(root / f"img{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def auto_run(unlabeled_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    rc = main(
        [
            "cluster",
            "--dataset",
            str(unlabeled_folder),
            "--epochs",
            "2",
            "--latent-dim",
            "8",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def test_search_k_finds_well_separated_blobs():
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=1500, centers=6, n_features=5, cluster_std=0.5, random_state=3)
    s = search_k(x, (2, 12), seed=0, sample=1000)
    assert s.chosen == 6 and s.runner_up != 6
    assert [r["k"] for r in s.scores] == list(range(2, 13)) and s.sample == 1000
    assert max(s.scores, key=lambda r: r["silhouette"])["k"] == 6


def test_every_criterion_is_scored_and_a_seed_gives_the_same_k():
    from sklearn.datasets import make_blobs

    from mfvc_gpu.choose_k import CRITERIA

    x, _ = make_blobs(n_samples=1200, centers=5, n_features=4, cluster_std=0.6, random_state=7)
    a, b = (search_k(x, (2, 9), seed=4, sample=800) for _ in range(2))
    assert a.scores == b.scores and (a.chosen, a.runner_up, a.favourites) == (b.chosen, b.runner_up, b.favourites)
    assert set(a.favourites) == set(CRITERIA) and all(set(CRITERIA) <= set(r) for r in a.scores)
    for c, sign in CRITERIA.items():  # each favourite is that criterion's best K
        assert a.favourites[c] == max(a.scores, key=lambda r, c=c, sign=sign: sign * r[c])["k"]
    assert a.favourites["bic"] == a.favourites["icl"] == 5 and a.chosen == 5
    assert all(r["icl"] >= r["bic"] for r in a.scores)  # ICL adds a non-negative entropy term
    other = search_k(x, (2, 9), seed=4, sample=800, criterion="stability")
    assert other.criterion == "stability" and other.chosen == other.favourites["stability"]
    with pytest.raises(ValueError, match="criterion='gap'"):
        search_k(x, (2, 9), criterion="gap")


def test_the_knee_is_where_a_falling_curve_bends():
    """Steep to K = 10, nearly flat after (the shape the BIC takes on UMAP's clumps): the knee is 10, the
    ends lie on the chord, and a flat curve has no knee."""
    from mfvc_gpu.choose_k import knee_depth

    ks = list(range(2, 31))
    bic = [-20_000.0 * k if k <= 10 else -200_000.0 - 1_000.0 * (k - 10) for k in ks]
    depth = knee_depth(ks, bic)
    assert ks[int(np.argmax(depth))] == 10 and depth[0] == depth[-1] == 0.0
    assert knee_depth(ks, [5.0] * len(ks)) == [0.0] * len(ks) and knee_depth([4], [1.0]) == [0.0]


def test_the_report_says_where_the_criteria_disagree():
    from mfvc_gpu.report import _k_text

    base = dict(chosen=10, runner_up=9, criterion="silhouette", sample=5000, seconds=3.0)
    text = _k_text(base | dict(favourites=dict(silhouette=10, bic=14, icl=10, stability=2)))
    assert "The criteria disagree: the bic prefers K = 14, the stability prefers K = 2." in text
    assert "Every criterion prefers this K." in _k_text(base | dict(favourites=dict(silhouette=10, icl=10)))
    assert "disagree" not in _k_text(base)  # a search saved before the other criteria: nothing to compare


def test_a_folder_without_labels_gets_k_chosen_and_a_report(auto_run):
    m = json.loads((auto_run / "metrics.json").read_text())
    assert "acc" not in m  # nothing to score against
    ks = m["k_search"]
    assert ks["criterion"] == CRITERION and 2 <= ks["chosen"] <= 30 and ks["chosen"] == m["n_clusters"]
    scores = json.loads((auto_run / "k_search.json").read_text())["scores"]
    assert [s["k"] for s in scores] == list(range(2, 31))
    assert ranked(scores, CRITERION)[0] == ks["chosen"]
    assert set(ks) >= {"chosen", "runner_up", "criterion"}
    favourites = json.loads((auto_run / "k_search.json").read_text())["favourites"]
    assert favourites[CRITERION] == ks["chosen"] and set(favourites) >= {"bic", "icl", "stability"}
    for name in ("report.html", "clusters.png", "k_search.png", "embedding.png", "labels.csv", "config.yaml"):
        assert (auto_run / name).stat().st_size > 0, name
    labels = [int(r["cluster"]) for r in csv.DictReader(open(auto_run / "labels.csv"))]
    assert len(set(labels)) == ks["chosen"]
    assert "n_clusters: auto" in (auto_run / "config.yaml").read_text()  # feeding it back chooses again


def test_the_report_is_self_contained(auto_run):
    page = (auto_run / "report.html").read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing to fetch
    assert page.count("<img") >= 3 + json.loads((auto_run / "metrics.json").read_text())["n_clusters"]
    assert "Number of clusters" in page and "Settings as they ran" in page


def test_predict_labels_the_training_images_as_the_run_did(auto_run, unlabeled_folder, tmp_path, capsys):
    out, emb = tmp_path / "labels.csv", tmp_path / "emb.npy"
    assert (
        main(
            [
                "predict",
                "--model",
                str(auto_run / "model"),
                "--dataset",
                str(unlabeled_folder),
                "--out",
                str(out),
                "--embedding",
                str(emb),
            ]
        )
        == 0
    )
    assert out.read_text() == (auto_run / "labels.csv").read_text()
    assert np.load(emb).shape[0] == 300
    assert "wrote" in capsys.readouterr().out
    assert (
        main(["predict", "--model", str(auto_run / "model"), "--dataset", str(unlabeled_folder), "--out", str(out)])
        == 2
    )
    assert "--overwrite" in capsys.readouterr().err
    coords = tmp_path / "coords.csv"
    assert (
        main(
            ["transform", "--model", str(auto_run / "model"), "--dataset", str(unlabeled_folder), "--out", str(coords)]
        )
        == 0
    )
    rows = coords.read_text().splitlines()
    assert rows[0].startswith("index,umap_0") and len(rows) == 301


def test_predict_on_labelled_images_prints_the_scores(tmp_path, digits, capsys):
    data = tmp_path / "small.npz"
    np.savez(data, images=digits.images[:300, 0], labels=digits.labels[:300])
    run = tmp_path / "run"
    assert (
        main(
            [
                "cluster",
                "--dataset",
                str(data),
                "--epochs",
                "1",
                "--latent-dim",
                "4",
                "--manifold",
                "none",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["predict", "--model", str(run / "model"), "--dataset", str(data), "--out", str(tmp_path / "l.csv")]) == 0
    )
    printed = capsys.readouterr().out
    acc = json.loads((run / "metrics.json").read_text())["acc"]
    assert f"ACC {acc:.4f}" in printed  # the same images, the same labels, the same score


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_report_renders_in_a_headless_browser(auto_run, tmp_path):
    """Loaded from file:// in headless Chromium: no console errors, no blocked or failed
    requests, and the screenshot is not blank."""
    from PIL import Image

    shot = tmp_path / "report.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1100,1600",
        f"--screenshot={shot}",
        (auto_run / "report.html").as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [
        line for line in r.stderr.splitlines() if "CONSOLE" in line or "Refused to" in line or "net::ERR" in line
    ]
    assert console == []
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1100) and pixels.std() > 10  # text, figures and galleries, not a blank page
