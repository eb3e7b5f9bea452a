"""Time every stage, GPU (cuML) against CPU (umap-learn / scikit-learn), on the same data in one run.

    mfvc-gpu bench --quick                    # the default: small sizes, <= 10 minutes on a 2-core CPU
    mfvc-gpu bench --full                     # for a GPU machine: 10k / 70k images, encode of 1M, latents up to 1M
    mfvc-gpu bench --stages umap,kmeans --sizes 10k,100k,1M

Writes OUT/bench.csv (one row per stage, backend, setting, n, rep), OUT/bench.md (medians,
minimums, quality, speed-ups where both sides ran), OUT/bench.png and OUT/machine.json.
Without a GPU (or without cuML) the GPU rows say "unavailable"; that is not an error. The exit
status is 1 only when a case failed (its row says why).
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from mfvc_gpu.errors import MFVCError
from mfvc_gpu.fileio import check_writable_dir
from mfvc_gpu.runfolder import missing_ancestors, remove_empty

from .predict_stage import predict_ratios
from .report import machine_info, markdown, markdown_table, plot, summarize, write_atomic, write_csv, write_json
from .stages import STAGES, Bench, Settings, check_stages, probe_gpu
from .timing import run_cases
from .train_step import ratios

PRESETS = {
    # Kept small because --quick has 10 minutes on two (shared) cores: umap-learn needs ~10-30 s
    # per call at 1k-5k points, a β-VAE epoch runs at ~25-100 images/s there. The other UMAP
    # settings run at 5000, the smallest size where umap-learn uses NN-descent (low_memory matters).
    "quick": Settings(
        sizes=(1000, 2000, 5000),
        image_sizes=(500,),
        datasets=("mnist",),
        train_subset=256,
        predict_fit=2000,
        variant_size=5000,
        umap_cpu_max_n=None,
        epochs=1,
        train_step_batches=(64,),
        train_step_rounds=3,
        train_step_steps=10,
    ),
    "full": Settings(
        sizes=(10_000, 30_000, 70_000, 100_000, 300_000, 1_000_000),
        image_sizes=(10_000, 70_000),
        encode_sizes=(1_000_000,),
        datasets=("mnist", "fashion-mnist"),
        train_subset=None,
        predict_fit=20_000,
        variant_size=70_000,
        umap_cpu_max_n=100_000,
        epochs=2,
    ),
}
MIN_REPEATS = 3

log = logging.getLogger(__name__)


def parse_sizes(text: str, flag: str = "--sizes") -> tuple[int, ...]:
    """ "1k,70k,1M" -> (1000, 70000, 1000000); sorted, without duplicates."""
    sizes = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", part)
        if not m:
            raise MFVCError(f"{flag} {text!r}: {part!r} is not a size like 5000, 70k or 1M")
        n = int(round(float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]))
        if n < 20:
            raise MFVCError(f"{flag} {text!r}: {n} is too small (at least 20 points)")
        sizes.add(n)
    if not sizes:
        raise MFVCError(f"{flag} {text!r}: no sizes given")
    return tuple(sorted(sizes))


def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, <= 10 minutes on a 2-core CPU (default)")
    mode.add_argument(
        "--full",
        action="store_true",
        help="10k and 70k images, encode of 1M, synthetic latents up to 1M (for a GPU machine)",
    )
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument(
        "--sizes", help="n of the synthetic-latent stages (handoff, umap, kmeans, metrics), e.g. 10k,100k,1M"
    )
    p.add_argument("--image-sizes", help="n of the real-image stages (train, encode, end_to_end), e.g. 10k,70k")
    p.add_argument(
        "--encode-sizes",
        help="extra n of the encode stage, beyond the data set (its images repeated to n), "
        "e.g. 1M (default quick: none, full: 1M)",
    )
    p.add_argument(
        "--dataset",
        help="comma-separated image data sets (default quick: mnist; full: mnist,fashion-mnist); "
        "end_to_end runs on each, load/train/encode on the first",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=MIN_REPEATS,
        help=f"timed calls per case, >= {MIN_REPEATS} (default {MIN_REPEATS})",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per setting before its first size (default 1)")
    p.add_argument("--epochs", type=int, help="training epochs of the end_to_end stage (default quick 1, full 2)")
    p.add_argument(
        "--cpu-max-n",
        type=int,
        help="largest n for CPU UMAP, CPU end_to_end and --encode-sizes CPU rows (default quick: none, full: 100000)",
    )
    p.add_argument(
        "--predict-fit", type=int, help="images the predict stage's model is fitted on (default quick 2000, full 20000)"
    )
    p.add_argument("--train-subset", type=int, help="images per timed training epoch (default quick 256, full: all)")
    p.add_argument("--train-step-batches", help="batch sizes of the train_step race (default quick 64, full 64,256)")
    p.add_argument(
        "--train-step-rounds", type=int, help="turns each train_step variant takes (default quick 3, full 5)"
    )
    p.add_argument("--train-step-steps", type=int, help="optimiser steps per turn (default quick 10, full 20)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default bench-results/)")
    p.add_argument(
        "--data-dir", help="folder searched first for the data sets (then $MFVC_DATA_DIR, the cache, system folders)"
    )
    p.add_argument("--device", default="auto", help="auto (GPU rows when a GPU is there), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, models, UMAP and K-Means (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(a: argparse.Namespace) -> tuple[str, Settings]:
    preset = "full" if a.full else "quick"
    s = PRESETS[preset]
    if a.repeats < MIN_REPEATS:
        raise MFVCError(f"--repeats {a.repeats}: the protocol takes the median of at least {MIN_REPEATS} timed calls")
    if a.warmup < 0:
        raise MFVCError(f"--warmup {a.warmup} must be >= 0")
    for flag, v in (
        ("--epochs", a.epochs),
        ("--cpu-max-n", a.cpu_max_n),
        ("--train-subset", a.train_subset),
        ("--predict-fit", a.predict_fit),
        ("--train-step-rounds", a.train_step_rounds),
        ("--train-step-steps", a.train_step_steps),
    ):
        if v is not None and v < 1:
            raise MFVCError(f"{flag} {v} must be a positive integer")
    stages = tuple(x.strip() for x in a.stages.split(",") if x.strip()) if a.stages else STAGES
    check_stages(stages)
    changes = dict(stages=stages, data_dir=a.data_dir, seed=a.seed)
    if a.sizes:
        changes["sizes"] = parse_sizes(a.sizes)
    if a.image_sizes:
        changes["image_sizes"] = parse_sizes(a.image_sizes, "--image-sizes")
    if a.encode_sizes:
        changes["encode_sizes"] = parse_sizes(a.encode_sizes, "--encode-sizes")
    if a.dataset:
        changes["datasets"] = tuple(x.strip() for x in a.dataset.split(",") if x.strip())
    if a.train_step_batches:
        changes["train_step_batches"] = parse_sizes(a.train_step_batches, "--train-step-batches")
    for key, v in (
        ("epochs", a.epochs),
        ("umap_cpu_max_n", a.cpu_max_n),
        ("train_subset", a.train_subset),
        ("predict_fit", a.predict_fit),
        ("train_step_rounds", a.train_step_rounds),
        ("train_step_steps", a.train_step_steps),
    ):
        if v is not None:
            changes[key] = v
    return preset, replace(s, **changes)


def command_line(a: argparse.Namespace, preset: str) -> str:
    """The command as a user would type it (only the options that were given)."""
    parts = ["mfvc-gpu", "bench", f"--{preset}"]
    for flag in (
        "stages",
        "sizes",
        "image_sizes",
        "encode_sizes",
        "dataset",
        "epochs",
        "cpu_max_n",
        "train_subset",
        "data_dir",
        "train_step_batches",
        "train_step_rounds",
        "train_step_steps",
    ):
        v = getattr(a, flag)
        if v is not None:
            parts += [f"--{flag.replace('_', '-')}", str(v)]
    for flag, default in (
        ("repeats", MIN_REPEATS),
        ("warmup", 1),
        ("device", "auto"),
        ("seed", 0),
        ("out", Path("bench-results")),
    ):
        v = getattr(a, flag)
        if v != default:
            parts += [f"--{flag}", str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def main(a: argparse.Namespace) -> int:
    preset, settings = settings_from_args(a)
    created = missing_ancestors(Path(a.out))
    try:
        return _run(a, preset, settings, check_writable_dir(a.out))  # the folder is proved writable before compute
    except BaseException:
        remove_empty(created)  # what this command created, if nothing was written in it
        raise


def _run(a: argparse.Namespace, preset: str, settings: Settings, out: Path) -> int:
    gpu = probe_gpu(a.device)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    bench = Bench(settings, gpu)
    cases = bench.cases()
    rows = run_cases(cases, repeats=a.repeats, warmup=a.warmup, progress=not a.no_progress)
    rows += bench.train_step_rows()
    wall = time.perf_counter() - t0
    summary = summarize(rows)
    machine = machine_info()
    command = command_line(a, preset)
    protocol = (
        f"{a.warmup} untimed warm-up call(s) per setting at its first size, then {a.repeats} timed calls per case; "
        f"median and min; GPU work synchronised before every clock read; whole run {wall:.0f} s wall."
    )
    write_csv(rows, out / "bench.csv")
    write_atomic(out / "bench.md", markdown(summary, machine, command, protocol, ratios(rows) + predict_ratios(rows)))
    plot(summary, out / "bench.png")
    errors = [r for r in rows if r.get("status") == "error"]
    write_json(
        dict(
            machine=machine,
            run=dict(
                command=command,
                preset=preset,
                settings=asdict(settings),
                gpu=asdict(gpu),
                started=started.isoformat(timespec="seconds"),
                wall_s=round(wall, 1),
                cases=len(cases),
                rows=len(rows),
                errors=len(errors),
            ),
        ),
        out / "machine.json",
    )
    for r in errors:
        log.error("%s %s n=%s %s: %s", r["stage"], r["backend"], r["n_samples"], r["variant"], r["note"])
    lines = [
        markdown_table(summary),
        *ratios(rows),
        *predict_ratios(rows),
        f"{len(rows)} rows in {wall:.0f} s; wrote {out / 'bench.csv'}, {out / 'bench.md'}, {out / 'bench.png'}, "
        f"{out / 'machine.json'}",
    ]
    return (1 if errors else 0), lines
