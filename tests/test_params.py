"""The one parameter table: the CLI, the YAML schema and the estimator are all built from it."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import yaml

from mfvc_gpu import MFVC, MFVCError, RunConfig
from mfvc_gpu.cli import add_param_flags, config_from_args, main
from mfvc_gpu.params import BY_NAME, CONFIG_PARAMS, ESTIMATOR_PARAMS, PARAMS


def other_value(p):
    """A valid value of ``p`` other than its default (for the round trip)."""
    if p.choices:
        return next(c for c in p.choices if c != p.default_in_run)
    if p.kind is bool:
        return not p.default
    if p.kind is int:
        return (p.default or int(p.low or 0)) + 3
    if p.kind is float:
        return round((p.default or 0.0) + 0.125, 6)
    return f"some-{p.name}"


def parse(argv):
    parser = argparse.ArgumentParser()
    add_param_flags(parser)
    parser.add_argument("--config")
    return parser.parse_args(argv)


def test_every_setting_has_one_row_and_a_flag_where_it_should():
    assert len(BY_NAME) == len(PARAMS)
    parser = argparse.ArgumentParser()
    add_param_flags(parser)
    flags = {a.dest for a in parser._actions}
    for p in PARAMS:
        assert (p.name in flags) == p.cli, p.name
    # the settings the CLI used to lack (the defect this table fixes)
    for name in ("residual", "fusion", "eps", "min_samples", "n_components", "metric", "n_init"):
        assert name in flags


@pytest.mark.parametrize("p", [p for p in CONFIG_PARAMS if p.cli], ids=lambda p: p.name)
def test_each_setting_round_trips_flag_yaml_config_estimator(p, tmp_path):
    value = other_value(p)
    if p.kind is bool:
        argv = [p.flag if value else "--no-" + p.flag[2:]]
    else:
        argv = [p.flag, str(value)]
    cfg = config_from_args(parse(argv))
    assert getattr(cfg, p.name) == value
    path = cfg.to_yaml(tmp_path / "config.yaml")
    again = config_from_args(parse(["--config", str(path)]))
    assert again == cfg
    assert yaml.safe_load(path.read_text())[p.name] == value
    if p.estimator:
        assert MFVC(**again.estimator_params()).get_params()[p.name] == value


def test_the_estimator_signature_is_the_table():
    params = MFVC().get_params()
    assert list(params) == sorted(p.name for p in ESTIMATOR_PARAMS)
    assert all(params[p.name] == p.default for p in ESTIMATOR_PARAMS)
    doc = MFVC.__doc__
    assert all(f"{p.name} :" in doc for p in ESTIMATOR_PARAMS)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"n_neighbors": 1}, "n_neighbors=1 is invalid: must be an integer >= 2"),
        ({"min_dist": 1.5}, r"min_dist=1.5 is invalid: must be a number in \[0, 1\]"),
        ({"metric": "hamming"}, "metric='hamming' is invalid: must be one of euclidean, cosine"),
        ({"residual": "yes"}, "residual='yes' is invalid: must be true or false"),
        ({"colour": 3}, "unknown setting 'colour'"),
        ({"manifold": {"metrik": "cosine"}}, "unknown setting 'metrik'"),
        ({"epochs": 2.5}, "epochs=2.5 is invalid: must be an integer >= 1 or None"),
    ],
)
def test_bad_config_values_fail_with_the_key_the_value_and_the_range(data, message, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(MFVCError, match=message):
        RunConfig.from_yaml(path)


def test_stage_groups_and_old_names_are_read():
    cfg = RunConfig.from_dict(
        {
            "manifold": {"metric": "cosine", "method": "isomap"},
            "cluster": {"n_init": 1},
            "vae": {"latent_dim": 8},
            "seed": 4,
        }
    )
    assert (cfg.metric, cfg.manifold, cfg.n_init, cfg.latent_dim, cfg.random_state) == ("cosine", "isomap", 1, 8, 4)


def test_a_grouped_config_is_used_by_the_run_and_recorded(tmp_path, digits, capsys):
    """The defect that started the table: manifold: {metric: cosine} and cluster: {n_init: 1}
    were ignored by the run yet echoed in its config.yaml."""
    data = tmp_path / "small.npz"
    np.savez(data, images=digits.images[:200, 0], labels=digits.labels[:200])  # uint8
    conf = tmp_path / "in.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "encoder": "none",
                "manifold": {"metric": "cosine", "n_neighbors": 10, "out_of_sample": "umap"},
                "cluster": {"n_init": 1},
            }
        )
    )
    out = tmp_path / "run"
    assert main(["cluster", "--dataset", str(data), "--config", str(conf), "--out", str(out), "--no-progress"]) == 0
    ran = yaml.safe_load((out / "config.yaml").read_text())
    assert (ran["metric"], ran["n_init"], ran["n_neighbors"]) == ("cosine", 1, 10)
    model = json.loads((out / "model" / "model.json").read_text())
    assert model["manifold"]["metric"] == "cosine" and model["cluster"]["n_init"] == 1
    est = MFVC.load(out / "model")  # fitted with UMAP's own transform: rebuilt from the saved settings
    est.transform(est.latent_[:1] + 1.0)  # a new point (feature vectors: encoder='none')
    assert est.manifold_model_.metric == "cosine"


def test_metric_and_clusterer_left_to_the_profile_take_its_values(monkeypatch):
    """paper: the paper's Euclidean UMAP and K-Means; fast: cosine and a Gaussian mixture (the search's
    choice); K-Means wherever only K-Means works; an explicit choice wins."""
    from mfvc_gpu import backends
    from mfvc_gpu.config import PROFILES
    from mfvc_gpu.resolution import resolve

    def resolved(est, cuda=False, workers=None):
        monkeypatch.setattr(backends, "cuda_available", lambda: cuda)
        monkeypatch.setattr(backends, "rapids_available", lambda dask=False: False)
        r = resolve(est.get_params(), workers=workers)
        return r.profile, r.manifold.metric, r.cluster.method

    assert resolved(MFVC(), cuda=True) == ("paper", "euclidean", "kmeans")
    assert resolved(MFVC()) == ("fast", "cosine", "gmm")
    assert resolved(MFVC(profile="paper")) == ("paper", "euclidean", "kmeans")
    assert resolved(MFVC(n_clusters="auto")) == ("fast", "cosine", "kmeans")
    assert resolved(MFVC(manifold="none")) == ("fast", "cosine", "kmeans")
    assert resolved(MFVC(), workers=(False, False)) == ("fast", "cosine", "kmeans")  # the Dask path
    assert resolved(MFVC(metric="manhattan", cluster="dbscan")) == ("fast", "manhattan", "dbscan")
    assert {k: PROFILES["paper"][k] for k in ("metric", "cluster")} == {"metric": "euclidean", "cluster": "kmeans"}
    with pytest.raises(MFVCError, match="n_clusters='auto' chooses K for K-Means; cluster='gmm' needs a number"):
        resolve(MFVC(n_clusters="auto", cluster="gmm").get_params(), n_samples=1000)


def test_a_run_records_the_metric_and_clusterer_it_used():
    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(c, 0.3, size=(60, 4)) for c in (0.0, 3.0, 6.0)]).astype(np.float32)
    est = MFVC(encoder="none", n_clusters=3, device="cpu", backend="cpu", n_neighbors=10, random_state=0).fit(Z)
    ran = est.resolved_params()
    assert (ran["profile"], ran["metric"], ran["cluster"]) == ("fast", "cosine", "gmm")
    assert type(est.cluster_model_).__name__ == "GaussianMixture" and est.cluster_config_.n_init == 10
    assert MFVC(**ran).get_params()["cluster"] == "gmm"  # fed back, it reproduces the fit's choice


def test_a_mixture_that_cannot_be_fitted_is_one_clear_error(monkeypatch):
    from sklearn.mixture import GaussianMixture

    from mfvc_gpu.backends.cpu import CPUBackend
    from mfvc_gpu.config import ClusterConfig

    def ill(self, X, y=None):
        raise ValueError(
            "Fitting the mixture model failed because some components have ill-defined empirical covariance. Try"
        )

    monkeypatch.setattr(GaussianMixture, "fit_predict", ill)
    with pytest.raises(
        MFVCError,
        match=r"the Gaussian mixture could not be fitted to the 30 embedded points: Fitting the "
        r"mixture model failed .*; use cluster='kmeans' \(--cluster kmeans\), or fewer clusters",
    ):
        CPUBackend().fit_cluster(np.zeros((30, 2), np.float32), ClusterConfig(method="gmm"), 3, 0)
