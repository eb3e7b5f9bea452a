"""Outputs of a benchmark run: tidy CSV, Markdown summary, PNG chart, JSON about the machine.

* ``bench.csv``: one row per timed call (stage, backend, n_samples, setting, rep), or one row for
  a case that did not run (``status`` unavailable / skipped / error, no seconds).
* ``bench.md``: per case the median and the minimum over the repeats, the quality, and the GPU's
  speed-up over the CPU default, computed only where both sides ran.
* ``bench.png``: median seconds per stage per backend (log scale) and the scaling curve of UMAP
  and K-Means against n.
* ``machine.json``: CPU model, cores, memory, GPU, driver, library versions, the command.

Every file is written under a temporary name in the same folder, then renamed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from mfvc_gpu.fileio import write_bytes

COLUMNS = [
    "stage",
    "backend",
    "device",
    "library",
    "variant",
    "baseline",
    "dataset",
    "n_samples",
    "n_features",
    "rep",
    "seconds",
    "status",
    "images_per_s",
    "acc",
    "nmi",
    "trustworthiness",
    "knn_build",
    "zero_copy",
    "peak_rss_mb",
    "gpu_max_alloc_mb",
    "gpu_used_mb",
    "warmup_s",
    "encode_s",
    "embed_s",
    "cluster_s",
    "note",
]
GROUP = ("stage", "dataset", "n_samples", "n_features", "backend", "device", "library", "variant", "baseline")
QUALITY = ("acc", "nmi", "trustworthiness")
PACKAGES = (
    "mfvc_gpu",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "umap-learn",
    "pynndescent",
    "numba",
    "matplotlib",
    "tqdm",
    "cupy-cuda13x",
    "cupy-cuda12x",
    "cupy",
    "cuml-cu13",
    "cuml-cu12",
    "cuml",
    "cudf-cu13",
    "cudf-cu12",
    "cudf",
)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    return write_bytes(path, data.encode() if isinstance(data, str) else data)


def write_csv(rows: list[dict], path: Path, columns: tuple[str, ...] = COLUMNS) -> Path:
    """``rows`` as CSV (``columns``, None as empty), written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return write_atomic(path, buf.getvalue())


def _median(values) -> float | None:
    values = [float(v) for v in values if v not in (None, "") and not (isinstance(v, float) and math.isnan(v))]
    return float(statistics.median(values)) if values else None


def summarize(rows: list[dict]) -> list[dict]:
    """One record per case: median / min seconds over its reps, median quality, and ratios.

    ``speed_up`` (GPU rows): median of the CPU default at the same stage, data and n divided by
    this row's median, only when both ran. ``vs_default`` (other CPU settings): the same ratio
    against the CPU default, so > 1 means that setting is faster than what the pipeline runs.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in GROUP), []).append(r)
    out = []
    for key, rs in groups.items():
        rec = dict(zip(GROUP, key))
        ok = [r for r in rs if r.get("status") == "ok" and r.get("seconds") is not None]
        rec["status"] = "ok" if ok else rs[0].get("status", "error")
        rec["note"] = rs[0].get("note") or ""
        rec["reps"] = len(ok)
        secs = [float(r["seconds"]) for r in ok]
        rec["median_s"] = float(statistics.median(secs)) if secs else None
        rec["min_s"] = min(secs) if secs else None
        for k in (*QUALITY, "images_per_s", "peak_rss_mb", "gpu_used_mb"):
            rec[k] = _median(r.get(k) for r in ok)
        rec["knn_build"] = next((r.get("knn_build") for r in ok if r.get("knn_build")), None)
        rec["zero_copy"] = next((r.get("zero_copy") for r in ok if r.get("zero_copy") is not None), None)
        rec["speed_up"] = rec["vs_default"] = None
        out.append(rec)
    cpu_default = {
        (g["stage"], g["dataset"], g["n_samples"]): g["median_s"]
        for g in out
        if g["backend"] == "cpu" and g["baseline"] and g["status"] == "ok" and g["median_s"]
    }
    for g in out:
        base = cpu_default.get((g["stage"], g["dataset"], g["n_samples"]))
        if base is None or g["status"] != "ok" or not g["median_s"]:
            continue
        if g["backend"] == "gpu":
            g["speed_up"] = base / g["median_s"]
        elif not g["baseline"]:
            g["vs_default"] = base / g["median_s"]
    return out


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3g}" if v >= 1e-3 else f"{v:.2e}"


def _quality(g: dict) -> str:
    parts = []
    if g.get("acc") is not None:
        parts.append(f"ACC {g['acc']:.3f} NMI {g['nmi']:.3f}")
    if g.get("trustworthiness") is not None:
        parts.append(f"trust {g['trustworthiness']:.3f}")
    if g.get("zero_copy") is not None:
        parts.append("zero-copy" if str(g["zero_copy"]) == "True" else "copied")
    if g.get("knn_build"):
        parts.append(f"kNN {g['knn_build']}")
    return ", ".join(parts) or "—"


def markdown_table(summary: list[dict]) -> str:
    head = (
        "| stage | data | n | d | backend | setting | median s | min s | reps | images/s | quality | GPU "
        "speed-up | vs CPU default |\n"
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---|---:|---:|\n"
    )
    lines = []
    for g in summary:
        median = _fmt_s(g["median_s"]) if g["status"] == "ok" else g["status"]
        ips = f"{g['images_per_s']:.0f}" if g.get("images_per_s") else "—"
        speed = f"{g['speed_up']:.2f}×" if g.get("speed_up") else "—"
        vs = f"{g['vs_default']:.2f}×" if g.get("vs_default") else "—"
        backend = g["backend"] if g["device"] in ("cpu", "cuda") else f"{g['backend']} ({g['device']})"
        setting = g["variant"] + ("" if g["baseline"] else " *")
        lines.append(
            f"| {g['stage']} | {g['dataset']} | {g['n_samples']} | {g['n_features']} | {backend} | {setting} | "
            f"{median} | {_fmt_s(g['min_s'])} | {g['reps']} | {ips} | {_quality(g)} | {speed} | {vs} |"
        )
    return head + "\n".join(lines) + "\n"


def markdown(summary: list[dict], machine: dict, command: str, protocol: str, ratio_lines: list[str] = ()) -> str:
    m = machine
    gpus = ", ".join(f"{g['name']} (driver {m.get('driver') or '?'})" for g in m.get("gpus", [])) or "none"
    v = m.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "umap-learn", "scikit-learn", "cuml", "cupy") if v.get(k))
    notes = sorted(
        {f"{g['stage']} {g['backend']}: {g['note']}" for g in summary if g["status"] not in ("ok",) and g["note"]}
    )
    text = [
        "# mfvc-gpu bench",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m.get('cpu_model')} ({m.get('cpu_count')} cores, {m.get('memory_gib')} GiB); GPU: {gpus}  ",
        f"Libraries: {libs}  ",
        f"Protocol: {protocol}",
        "",
        markdown_table(summary),
        "GPU speed-up = median of the CPU default / median of the GPU row, shown only where both ran. "
        "Settings marked * are not the pipeline's default; 'vs CPU default' > 1 means faster than the default.",
    ]
    if ratio_lines:
        text += [
            "",
            "Training step, variants alternating in this run (median images/s, ratio to eager):",
            *[f"- {line}" for line in ratio_lines],
        ]
    if notes:
        text += ["", "Not run:", *[f"- {n}" for n in notes]]
    return "\n".join(text) + "\n"


def plot(summary: list[dict], path: Path) -> Path:
    """Left: median seconds per stage and backend (default settings, largest n both can show),
    log scale. Right: the scaling of UMAP and K-Means with n, log-log."""
    from mfvc_gpu.plotting import pyplot, save_figure

    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    ok = [g for g in summary if g["status"] == "ok" and g["baseline"] and g["median_s"]]
    stages = list(dict.fromkeys(g["stage"] for g in summary))
    colours = {"cpu": "tab:blue", "gpu": "tab:green"}
    labels, seen = [], set()
    for i, stage in enumerate(stages):
        here = [g for g in ok if g["stage"] == stage]
        cpu_n = [g["n_samples"] for g in here if g["backend"] == "cpu"]
        n = max(cpu_n) if cpu_n else max((g["n_samples"] for g in here), default=None)
        labels.append(f"{stage}\nn={n}" if n else stage)
        for j, backend in enumerate(("cpu", "gpu")):
            g = next((g for g in here if g["backend"] == backend and g["n_samples"] == n), None)
            x = i + (j - 0.5) * 0.38
            if g is not None:
                ax1.bar(
                    x, g["median_s"], width=0.36, color=colours[backend], label=None if backend in seen else backend
                )
                seen.add(backend)
            elif any(h["stage"] == stage and h["backend"] == backend for h in summary):  # a row that did not run
                ax1.text(
                    x,
                    0.5,
                    f"{backend}: n/a",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="grey",
                    transform=ax1.get_xaxis_transform(),
                )
    ax1.set_xlim(-0.6, len(stages) - 0.4)
    ax1.set_xticks(range(len(stages)))
    ax1.set_xticklabels(labels, fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylabel("median seconds (log)")
    ax1.set_title("time per stage (default settings)", fontsize=10)
    if seen:
        ax1.legend()
    series: dict[str, list[tuple[int, float]]] = {}
    for g in summary:
        if g["stage"] in ("umap", "kmeans") and g["status"] == "ok" and g["median_s"]:
            series.setdefault(f"{g['stage']} {g['backend']} {g['variant']}", []).append((g["n_samples"], g["median_s"]))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax2.plot(
            [p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="-" if len(pts) > 1 else "none", label=name
        )
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    for axis in (ax2.xaxis, ax2.yaxis):  # labels at 1, 2, 5 × 10^k: readable on narrow ranges too
        axis.set_major_formatter(fmt)
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_minor_formatter(fmt)
    ax2.set_xlabel("n (synthetic latents)")
    ax2.set_ylabel("median seconds (log)")
    ax2.set_title("scaling with n", fontsize=10)
    ax2.grid(alpha=0.3, which="both")
    if series:
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, "no UMAP / K-Means timings", ha="center", va="center", transform=ax2.transAxes)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Physical memory in GiB, rounded to 0.1."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            key = name.split("-cu")[0] if name.startswith(("cupy", "cuml", "cudf")) else name
            out.setdefault(key, metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
    out["python"] = sys.version.split()[0]
    return out


def _driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        res = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """The machine the numbers come from: CPU, cores, memory, GPUs, driver, CUDA, library versions."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                dict(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
            )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        cpu_usable=usable,
        memory_gib=memory_gib(),
        platform=platform.platform(),
        torch_threads=torch.get_num_threads(),
        threads_env={
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
        },
        gpus=gpus,
        driver=_driver() if gpus else None,
        torch_cuda=torch.version.cuda,
        versions=_versions(),
    )


def write_json(obj: dict, path: Path) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


__all__ = [
    "COLUMNS",
    "write_csv",
    "summarize",
    "markdown",
    "markdown_table",
    "plot",
    "machine_info",
    "write_json",
    "write_atomic",
]
