"""The benchmark suite: timing protocol, tidy rows, speed-ups, outputs, the ``bench`` command.

Tiny sizes only; UMAP is not run here (its first call compiles for a minute on two cores).
"""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from mfvc_gpu.bench import parse_sizes, report, stages, timing
from mfvc_gpu.bench.stages import Bench, Case, Settings, probe_gpu
from mfvc_gpu.cli import main
from mfvc_gpu.errors import MFVCError

REQUIRED = ["stage", "backend", "device", "n_samples", "n_features", "rep", "seconds", "acc", "nmi", "trustworthiness"]


class FakeClock:
    """Returns the given instants in order; records how many times it was read."""

    def __init__(self, instants):
        self.instants = list(instants)
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return self.instants.pop(0)


def test_measure_takes_median_and_min_and_syncs_around_every_call():
    events = []
    clock = FakeClock([0, 100, 100, 101, 200, 205, 300, 302])  # warm-up 100 s, then calls of 1, 5 and 2 s
    calls = iter(range(10))

    def fn(arg):
        events.append(("run", arg))
        return arg * 10

    def setup():
        value = next(calls)
        events.append(("setup", value))
        return value

    m = timing.measure(fn, repeats=3, warmup=1, setup=setup, sync=lambda: events.append(("sync",)), clock=clock)
    assert m.warmup_seconds == [100]
    assert m.seconds == [1, 5, 2]
    assert m.median == 2 and m.min == 1
    assert m.results == [10, 20, 30]  # the warm-up call's result is not kept
    assert clock.reads == 8
    # each call: setup, sync, (clock), run, sync, (clock)
    assert events[:4] == [("setup", 0), ("sync",), ("run", 0), ("sync",)]
    assert sum(e == ("sync",) for e in events) == 8
    assert len(m.peak_rss_mb) == 3 and all(v > 10 for v in m.peak_rss_mb)  # MiB of this process
    assert m.gpu_max_alloc_mb == [None] * 3


def test_measure_with_a_sleeping_stage_measures_wall_time():
    durations = iter([0.05, 0.01, 0.03, 0.02])  # the first is the warm-up
    m = timing.measure(lambda: time.sleep(next(durations)), repeats=3, warmup=1)
    assert m.warmup_seconds[0] >= 0.05
    assert 0.02 <= m.median < 0.2
    assert 0.01 <= m.min < m.median


def test_measure_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        timing.measure(lambda: None, repeats=0)


def test_device_sync_is_a_no_op_on_the_cpu():
    assert timing.device_sync("cpu")() is None


def _case(stage, backend, n, seconds_per_call, calls, **kw):
    def run():
        calls.append((stage, backend, n))
        time.sleep(seconds_per_call)
        return n

    return Case(stage, backend, "cpu", "lib", n, 4, run=run, **kw)


def test_run_cases_one_row_per_rep_warms_up_once_per_setting():
    calls = []
    cases = [
        _case("kmeans", "cpu", 100, 0.001, calls, score=lambda out, s: {"acc": out / 1000}),
        _case("kmeans", "cpu", 200, 0.001, calls, score=lambda out, s: {"acc": out / 1000}),
        Case("kmeans", "gpu", "cuda", "cuml", 100, 4, status="unavailable", note="unavailable: no GPU"),
        _case("kmeans", "cpu", 100, 0.001, calls, variant="other", baseline=False),
    ]
    rows = timing.run_cases(cases, repeats=3, warmup=1, progress=False)
    # warm-up once per setting: 1 + 3 calls at n=100, 3 at n=200, 1 + 3 for the other setting
    assert calls.count(("kmeans", "cpu", 100)) == 4 + 4 and calls.count(("kmeans", "cpu", 200)) == 3
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 9 and len(rows) == 10
    keys = [(r["stage"], r["backend"], r["variant"], r["n_samples"], r["rep"]) for r in ok]
    assert len(set(keys)) == len(keys)
    assert sorted(r["rep"] for r in ok if r["n_samples"] == 200) == [1, 2, 3]
    assert all(r["seconds"] >= 0.001 for r in ok)
    assert {r["acc"] for r in ok if r["n_samples"] == 200} == {0.2}
    gpu = [r for r in rows if r["backend"] == "gpu"]
    assert gpu[0]["status"] == "unavailable" and gpu[0]["seconds"] is None and gpu[0]["rep"] is None


def test_a_size_dependent_code_path_gets_its_own_warm_up():
    calls = []
    cases = [
        _case("umap", "cpu", n, 0, calls, code_path=path)
        for n, path in ((100, "exact"), (200, "exact"), (5000, "nn-descent"))
    ]
    timing.run_cases(cases, repeats=3, warmup=1, progress=False)
    assert [calls.count(("umap", "cpu", n)) for n in (100, 200, 5000)] == [4, 3, 4]


def test_a_failing_case_gives_an_error_row_and_the_rest_still_runs():
    calls = []

    def broken():
        raise RuntimeError("out of memory")

    cases = [Case("umap", "cpu", "cpu", "umap-learn", 50, 4, run=broken), _case("kmeans", "cpu", 50, 0, calls)]
    rows = timing.run_cases(cases, repeats=3, warmup=0, progress=False)
    assert rows[0]["status"] == "error" and "out of memory" in rows[0]["note"]
    assert [r["rep"] for r in rows[1:]] == [1, 2, 3]


def _row(stage, backend, n, rep, seconds, baseline=True, variant="default", status="ok"):
    return dict(
        stage=stage,
        backend=backend,
        device="cuda" if backend == "gpu" else "cpu",
        library="x",
        variant=variant,
        baseline=baseline,
        dataset="synthetic",
        n_samples=n,
        n_features=10,
        rep=rep,
        seconds=seconds,
        status=status,
        note="",
    )


def test_speed_up_only_where_both_sides_ran():
    rows = [_row("umap", "cpu", 1000, r, s) for r, s in ((1, 8.0), (2, 9.0), (3, 7.0))]
    rows += [_row("umap", "gpu", 1000, r, s) for r, s in ((1, 2.0), (2, 2.5), (3, 1.5))]
    rows += [
        _row("umap", "cpu", 1000, r, s, baseline=False, variant="parallel") for r, s in ((1, 4.0), (2, 4.0), (3, 4.0))
    ]
    rows += [_row("umap", "cpu", 5000, r, 20.0) for r in (1, 2, 3)]
    rows += [_row("umap", "gpu", 5000, None, None, status="unavailable")]
    rows += [_row("kmeans", "gpu", 1000, r, 1.0) for r in (1, 2, 3)]  # no CPU side
    summary = {(g["stage"], g["backend"], g["n_samples"], g["variant"]): g for g in report.summarize(rows)}
    gpu = summary[("umap", "gpu", 1000, "default")]
    assert gpu["median_s"] == 2.0 and gpu["min_s"] == 1.5 and gpu["reps"] == 3
    assert gpu["speed_up"] == pytest.approx(8.0 / 2.0)
    assert summary[("umap", "cpu", 1000, "parallel")]["vs_default"] == pytest.approx(2.0)
    assert summary[("umap", "cpu", 1000, "default")]["speed_up"] is None
    assert summary[("umap", "gpu", 5000, "default")]["speed_up"] is None
    assert summary[("umap", "gpu", 5000, "default")]["status"] == "unavailable"
    assert summary[("kmeans", "gpu", 1000, "default")]["speed_up"] is None
    table = report.markdown_table(report.summarize(rows))
    assert table.count("4.00×") == 1 and "2.00×" in table and "unavailable" in table


def test_csv_has_the_tidy_columns(tmp_path):
    rows = [_row("kmeans", "cpu", 500, r, 0.1 * r) for r in (1, 2, 3)] + [
        _row("kmeans", "gpu", 500, None, None, status="unavailable")
    ]
    path = report.write_csv(rows, tmp_path / "b.csv")
    with open(path) as f:
        reader = csv.DictReader(f)
        assert set(REQUIRED) <= set(reader.fieldnames)
        got = list(reader)
    assert [r["rep"] for r in got] == ["1", "2", "3", ""]
    assert got[3]["seconds"] == "" and got[3]["status"] == "unavailable"
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary name, then renamed


def test_parse_sizes():
    assert parse_sizes("5000,1k,70k,1M,1k") == (1000, 5000, 70_000, 1_000_000)
    with pytest.raises(MFVCError, match="not a size"):
        parse_sizes("ten")


def test_gpu_rows_are_marked_unavailable_without_a_gpu():
    gpu = probe_gpu("auto")
    if gpu.rapids:
        pytest.skip("cuML and a GPU are present: the GPU rows run")
    cases = Bench(Settings(stages=("kmeans", "handoff"), sizes=(300,)), gpu).cases()
    gpu_cases = [c for c in cases if c.backend == "gpu"]
    assert len(gpu_cases) == 2
    assert all(c.status == "unavailable" and c.note.startswith("unavailable") for c in gpu_cases)
    assert probe_gpu("cpu").device is None


def test_unknown_stage_is_a_user_error():
    with pytest.raises(MFVCError, match="unknown stage"):
        Bench(Settings(stages=("kmeans", "tsne")), probe_gpu("cpu"))


def test_synthetic_blobs_are_reproducible_and_clustered():
    x1, y1 = stages.synthetic_blobs(400, 10, seed=3)
    x2, y2 = stages.synthetic_blobs(400, 10, seed=3)
    assert x1.dtype == np.float32 and x1.shape == (400, 10) and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert set(np.unique(y1)) == set(range(10))
    # an embedding identical to the input is perfectly trustworthy; a random one is not
    idx = np.arange(200)
    assert stages.trust(x1, x1, idx) == pytest.approx(1.0)
    assert stages.trust(x1, np.random.default_rng(0).normal(size=(400, 2)), idx) < 0.7


def test_bench_command_writes_csv_markdown_chart_and_machine(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["bench", "--stages", "kmeans", "--sizes", "500", "--repeats", "3", "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.md", "bench.png", "machine.json"]
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    cpu = [r for r in rows if r["backend"] == "cpu"]
    assert [r["rep"] for r in cpu] == ["1", "2", "3"]
    assert all(r["stage"] == "kmeans" and r["n_samples"] == "500" and r["n_features"] == "10" for r in cpu)
    assert all(float(r["seconds"]) > 0 and 0.8 <= float(r["acc"]) <= 1.0 for r in cpu)
    gpu = [r for r in rows if r["backend"] == "gpu"]
    if not probe_gpu("auto").rapids:
        assert len(gpu) == 1 and gpu[0]["status"] == "unavailable" and gpu[0]["seconds"] == ""
    md = (out / "bench.md").read_text()
    assert (
        "| kmeans | synthetic | 500 | 10 | cpu |" in md and "mfvc-gpu bench --quick --stages kmeans --sizes 500" in md
    )
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    info = json.loads((out / "machine.json").read_text())
    assert info["machine"]["cpu_count"] >= 1 and info["machine"]["cpu_model"]
    assert "scikit-learn" in info["machine"]["versions"] and "torch" in info["machine"]["versions"]
    assert info["run"]["errors"] == 0 and info["run"]["settings"]["sizes"] == [500]
    assert "| kmeans |" in capsys.readouterr().out


def test_bench_times_torch_stages_with_thread_settings(tmp_path):
    out = tmp_path / "res"
    rc = main(
        [
            "bench",
            "--stages",
            "train,encode",
            "--dataset",
            "digits",
            "--image-sizes",
            "40",
            "--train-subset",
            "24",
            "--warmup",
            "0",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    with open(out / "bench.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    train = [r for r in rows if r["stage"] == "train"]
    encode = [r for r in rows if r["stage"] == "encode"]
    assert {r["n_samples"] for r in train} == {"24"} and {r["n_samples"] for r in encode} == {"40"}
    import torch

    expected = {f"torch_threads={torch.get_num_threads()}"} | (
        {"torch_threads=1"} if torch.get_num_threads() > 1 else set()
    )
    assert {r["variant"] for r in train} == expected
    for r in train + encode:
        assert float(r["images_per_s"]) == pytest.approx(int(r["n_samples"]) / float(r["seconds"]))


def test_encode_sizes_beyond_the_data_set_repeat_its_images_and_respect_the_cpu_cap(tmp_path):
    out = tmp_path / "res"
    rc = main(
        [
            "bench",
            "--stages",
            "encode",
            "--dataset",
            "digits",
            "--image-sizes",
            "40",
            "--encode-sizes",
            "2k,3k",
            "--cpu-max-n",
            "2500",
            "--warmup",
            "0",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    with open(out / "bench.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["backend"] == "cpu"]
    by_n = {(r["n_samples"], r["status"]) for r in rows}
    assert by_n == {("40", "ok"), ("2000", "ok"), ("3000", "skipped")}  # digits has 1797 images: repeated
    big = [r for r in rows if r["n_samples"] == "2000"]
    assert len(big) == 3 and all(r["dataset"].endswith("repeated to 2000") for r in big)
    assert all(float(r["images_per_s"]) == pytest.approx(2000 / float(r["seconds"])) for r in big)
    (skipped,) = [r for r in rows if r["n_samples"] == "3000"]
    assert "above --cpu-max-n 2500" in skipped["note"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "2"], "at least 3"),
        (["--sizes", "abc"], "not a size"),
        (["--stages", "kmeans,nope"], "unknown stage"),
    ],
)
def test_bench_user_errors_exit_2(tmp_path, capsys, argv, message):
    assert main(["bench", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_device_sync_on_cuda_waits_for_torch_and_cupy(monkeypatch):
    import sys
    import types

    import torch

    seen = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(("torch", device)))
    stream = types.SimpleNamespace(synchronize=lambda: seen.append(("cupy",)))
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(get_current_stream=lambda: stream))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    timing.device_sync("cuda:1")()
    assert seen == [("torch", "cuda:1"), ("cupy",)]


def test_train_step_race_alternates_the_variants_and_reports_ratios(digits):
    from mfvc_gpu.bench.train_step import race, ratios

    rows = race(digits.images[:128], "cpu", (32,), rounds=2, steps=2, variants=("eager", "eager contiguous"))
    assert [(r["variant"], r["rep"]) for r in rows] == [
        ("eager b=32", 1),
        ("eager contiguous b=32", 1),
        ("eager contiguous b=32", 2),
        ("eager b=32", 2),
    ]  # turns rotate
    assert all(r["status"] == "ok" and r["n_samples"] == 64 and r["images_per_s"] == 64 / r["seconds"] for r in rows)
    assert [r["baseline"] for r in rows] == [True, False, False, True]
    (line,) = ratios(rows)
    assert line.startswith("train_step cpu batch 32: eager contiguous") and "× eager" in line
