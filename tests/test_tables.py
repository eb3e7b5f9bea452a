"""Tabular feature vectors: CSV/Parquet in, Parquet out, and ``mfvc-gpu cluster --columns`` end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mfvc_gpu import MFVCError, backends, cluster_acc
from mfvc_gpu.cli import main
from mfvc_gpu.resolution import resolve
from mfvc_gpu.tables import parse_columns, read_features, select_columns, wants_gpu, write_parquet, write_results

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")


@pytest.fixture
def table(tmp_path, blobs):
    """The blobs as a table: feature columns f0..f7, a text column and the true class."""
    x, y = blobs
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    df["name"] = [f"row{i}" for i in range(len(df))]
    df["label"] = y
    paths = {"parquet": tmp_path / "blobs.parquet", "csv": tmp_path / "blobs.csv"}
    df.to_parquet(paths["parquet"], index=False)
    df.to_csv(paths["csv"], index=False)
    return df, paths


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_read_features_takes_the_named_columns_in_the_given_order(table, kind):
    df, paths = table
    t = read_features(paths[kind], ["f3", "f0"])
    assert t.engine == "pandas" and t.columns == ["f3", "f0"]
    assert t.features.dtype == np.float32 and t.features.flags.c_contiguous
    np.testing.assert_allclose(t.features, df[["f3", "f0"]].to_numpy(np.float32), rtol=1e-6)


def test_unknown_columns_are_named_with_the_available_ones(table):
    _, paths = table
    with pytest.raises(MFVCError, match=r"column\(s\) nope not in blobs.parquet; its columns are f0, f1"):
        select_columns(paths["parquet"], ["f0", "nope"])


def test_all_columns_by_default_must_be_numeric(table):
    _, paths = table
    with pytest.raises(MFVCError, match=r"name of blobs.csv are not numeric"):
        read_features(paths["csv"])


def test_missing_and_infinite_values_are_refused(tmp_path):
    p = tmp_path / "holes.csv"
    p.write_text("a,b\n1,2\n,3\n4,5\n")
    with pytest.raises(MFVCError, match=r"a of holes.csv have missing values"):
        read_features(p)
    p.write_text("a,b\n1,2\ninf,3\n")
    with pytest.raises(MFVCError, match="infinite values"):
        read_features(p)


def test_missing_file_and_empty_csv(tmp_path):
    with pytest.raises(MFVCError, match="not found"):
        read_features(tmp_path / "absent.parquet")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(MFVCError, match="needs a header row"):
        read_features(tmp_path / "empty.csv")


def test_parse_columns():
    assert parse_columns(" a, b ,c") == ["a", "b", "c"]
    assert parse_columns(None) is None
    with pytest.raises(MFVCError, match="empty name"):
        parse_columns("a,,b")
    with pytest.raises(MFVCError, match="a more than once"):
        parse_columns("a,b,a")


# ---------------------------------------------------------------- writing


def test_parquet_round_trip_is_atomic_and_exact(tmp_path):
    labels = np.array([2, 0, 1, 1], dtype=np.int64)
    emb = np.random.default_rng(0).random((4, 3), dtype=np.float32)
    write_results(tmp_path, labels, emb, prefix="umap")
    lab = pd.read_parquet(tmp_path / "labels.parquet")
    assert list(lab.columns) == ["row", "cluster"] and lab["cluster"].tolist() == [2, 0, 1, 1]
    got = pd.read_parquet(tmp_path / "embedding.parquet")
    assert list(got.columns) == ["umap_0", "umap_1", "umap_2"]
    np.testing.assert_array_equal(got.to_numpy(), emb)
    assert sorted(os.listdir(tmp_path)) == ["embedding.parquet", "labels.parquet"]  # no temporary left


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "x.parquet"
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises for objects it cannot store
        write_parquet(target, {"a": np.array([object(), object()], dtype=object)})
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="different lengths"):
        write_parquet(target, {"a": np.zeros(2), "b": np.zeros(3)})


# ---------------------------------------------------------------- where the table is read


@pytest.mark.parametrize("cuda", [True, False])
@pytest.mark.parametrize("rapids", [True, False])
@pytest.mark.parametrize(
    "device, backend", [("auto", "auto"), ("cpu", "auto"), ("auto", "cpu"), ("cuda", "rapids"), ("cuda", "auto")]
)
def test_cudf_is_used_exactly_when_the_stages_run_on_rapids(monkeypatch, cuda, rapids, device, backend):
    monkeypatch.setattr(backends, "cuda_available", lambda: cuda)
    monkeypatch.setattr(backends, "rapids_available", lambda dask=False: rapids)
    monkeypatch.setattr("mfvc_gpu.tables.cudf_available", lambda: rapids)  # cuML ships with cuDF
    try:
        placement = resolve({"device": device, "backend": backend, "encoder": "none"}).placement
    except MFVCError:
        return  # the run fails before anything is read
    assert wants_gpu(placement) == (placement.backend == "rapids")


# ---------------------------------------------------------------- the command line


def _cluster(paths, tmp_path, *extra):
    out = tmp_path / "run"
    argv = [
        "cluster",
        "--dataset",
        str(paths["parquet"]),
        "--n-clusters",
        "5",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]
    return main(argv), out


def test_cli_clusters_a_parquet_table_by_columns(table, tmp_path, capsys):
    df, paths = table
    cols = ",".join(f"f{i}" for i in range(8))
    rc, out = _cluster(paths, tmp_path, "--columns", cols, "--manifold", "none")
    assert rc == 0
    assert sorted(os.listdir(out)) == [
        ".mfvc-run",
        "config.yaml",
        "embedding.parquet",
        "embedding.png",
        "labels.parquet",
        "metrics.json",
        "model",
    ]
    m = json.loads((out / "metrics.json").read_text())
    assert m["columns"] == cols.split(",") and m["n_samples"] == len(df) and m["table_engine"] == "pandas"
    assert m["backend"] == "cpu" and "note" not in m
    labels = pd.read_parquet(out / "labels.parquet")
    assert labels["row"].tolist() == list(range(len(df)))
    assert cluster_acc(df["label"], labels["cluster"]) > 0.99  # the blobs are well separated
    assert pd.read_parquet(out / "embedding.parquet").shape == (len(df), 8)
    assert "blobs.parquet: 600 samples, 5 clusters" in capsys.readouterr().out


def test_cli_bad_column_exits_2_with_one_line(table, tmp_path, capsys):
    _, paths = table
    rc, out = _cluster(paths, tmp_path, "--columns", "f0,zz")
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.count("\n") == 1 and err.startswith("mfvc-gpu: error: column(s) zz not in blobs.parquet")


def test_cli_table_needs_n_clusters_and_columns_need_a_table(table, tmp_path, capsys):
    _, paths = table
    assert main(["cluster", "--dataset", str(paths["csv"]), "--out", str(tmp_path / "a")]) == 2
    assert "pass --n-clusters" in capsys.readouterr().err
    assert main(["cluster", "--dataset", "digits", "--columns", "a", "--out", str(tmp_path / "b")]) == 2
    assert "--columns applies to .csv/.parquet tables only" in capsys.readouterr().err


def test_cli_records_mixed_mode_for_a_table(table, tmp_path, monkeypatch):
    """CUDA without cuML (faked): pandas reads, the CPU backend clusters, metrics.json says why."""
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "rapids_available", lambda dask=False: False)
    _, paths = table
    out = tmp_path / "mixed"
    rc = main(
        [
            "cluster",
            "--dataset",
            str(paths["csv"]),
            "--columns",
            "f0,f1,f2",
            "--n-clusters",
            "5",
            "--manifold",
            "none",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (m["device"], m["backend"], m["table_engine"]) == ("cuda", "cpu", "pandas")
    assert "UMAP and clustering on the CPU" in m["note"]


@pytest.mark.slow
def test_cli_table_through_umap(table, tmp_path):
    """The full tabular path, UMAP included (slow here: umap-learn compiles its kernels first)."""
    df, paths = table
    rc, out = _cluster(paths, tmp_path, "--columns", "f0,f1,f2,f3,f4,f5,f6,f7")
    assert rc == 0
    emb = pd.read_parquet(out / "embedding.parquet")
    assert list(emb.columns) == [f"umap_{i}" for i in range(5)]
    assert cluster_acc(df["label"], pd.read_parquet(out / "labels.parquet")["cluster"]) > 0.99


# ---------------------------------------------------------------- on the GPU (skip here)


@pytest.mark.rapids
def test_cudf_reads_to_the_device_and_writes_parquet_pandas_can_read(table, tmp_path):
    import cupy

    df, paths = table
    t = read_features(paths["parquet"], ["f1", "f2"], gpu=True)
    assert t.engine == "cudf" and isinstance(t.features, cupy.ndarray) and t.features.flags.c_contiguous
    np.testing.assert_allclose(cupy.asnumpy(t.features), df[["f1", "f2"]].to_numpy(np.float32), rtol=1e-6)
    write_results(tmp_path, cupy.arange(len(df)) % 3, t.features, gpu=True)
    assert pd.read_parquet(tmp_path / "labels.parquet")["cluster"].tolist()[:4] == [0, 1, 2, 0]
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "embedding.parquet").to_numpy(), cupy.asnumpy(t.features))
