"""Markdown for ``mfvc-gpu reproduce``: mean ± std over seeds, the paper's numbers beside, the
machine, the settings and the run time."""

from __future__ import annotations

import os
import statistics
from datetime import datetime, timezone
from importlib import metadata

from ..bench.report import cpu_model, memory_gib

DASH = "—"
NOT_YET = "not yet measured"
VERSIONS = (
    "mfvc_gpu",
    "torch",
    "umap-learn",
    "scikit-learn",
    "numpy",
    "cupy-cuda13x",
    "cuml-cu13",
    "cuml-cu12",
    "cuml",
)


def hardware_summary(device: str = "cpu") -> str:
    """One line: CPU model, logical cores, memory, and the GPU when the run uses one."""
    mem = memory_gib()
    text = f"{cpu_model()}, {os.cpu_count()} logical cores" + (f", {mem:.0f} GiB" if mem else "")
    if device.startswith("cuda"):
        import torch

        text += f"; GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def versions() -> str:
    out = []
    for pkg in VERSIONS:
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(out)


def fmt_mean_std(values: list[float], digits: int = 3) -> str:
    """ "0.910 ± 0.014" (sample standard deviation); one value alone; "—" for none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return DASH
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return DASH
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def summarize(records: list[dict | None]) -> dict:
    """Aggregate one cell's records (one per seed; None where not computed)."""
    done = [r for r in records if r is not None]
    ok = [r for r in done if r["status"] == "ok"]
    cell = dict(n=len(records), ok=len(ok), records=done)
    for k in ("acc", "nmi", "purity"):
        cell[k] = fmt_mean_std([r[k] for r in ok]) if ok else None
        cell[k + "_values"] = [r[k] for r in ok]
    cell["seconds"] = statistics.fmean(r["total_s"] for r in ok) if ok else None
    failed = [r for r in done if r["status"] == "error"]
    skipped = [r for r in done if r["status"] == "skipped"]
    if ok:
        cell["state"] = "ok"
    elif failed:
        cell["state"], cell["why"] = "failed", failed[0]["error"]
    elif skipped:
        cell["state"], cell["why"] = "skipped", skipped[0]["reason"]
    else:
        cell["state"] = "missing"
    return cell


def _score_cells(cell: dict) -> list[str]:
    if cell["state"] == "ok":
        return [cell["acc"], cell["nmi"], cell["purity"]]
    if cell["state"] == "missing":
        return [NOT_YET, DASH, DASH]
    return [f"{cell['state']} ¹", DASH, DASH]


def _paper(p: tuple[float, float] | None) -> list[str]:
    return [f"{p[0]:.3f}", f"{p[1]:.3f}"] if p else [DASH, DASH]


def _seeds(cell: dict) -> str:
    return str(cell["ok"]) if cell["ok"] == cell["n"] else f"{cell['ok']}/{cell['n']}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def header(title: str, run: dict) -> str:
    """Title and the facts of the run: command, settings, machine(s), versions, time."""
    lines = [
        f"# {title}",
        "",
        f"Command: `{run['command']}`",
        "",
        f"* written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; profile `{run['profile']}`, "
        f"{run['epochs']} epochs; seeds {run['seeds']}; device {run['device']}, backend {run['backend']}"
        + (f"; first {run['limit']} images of each set (--limit)" if run.get("limit") else ""),
        f"* hardware (this invocation): {run['hardware']}",
    ]
    others = sorted(set(run.get("result_hardware", ())) - {run["hardware"]})
    if others:
        lines.append("* some cached results were measured on: " + "; ".join(others))
    lines += [
        f"* software: {versions()}",
        f"* this invocation: {fmt_seconds(run['wall_s'])} wall time, {run['computed']} runs computed, "
        f"{run['cached']} taken from the cache; measured compute time of all cells "
        f"{fmt_seconds(run['compute_s'])} (a network or embedding shared by several cells counted once)",
        "",
        "",
    ]
    return "\n".join(lines)


def footnotes(cells: list[tuple[str, dict]], skipped: dict[str, str]) -> str:
    lines = []
    for where, cell in cells:
        if cell["state"] in ("failed", "skipped"):
            lines.append(f"* ¹ {where}: {cell['state']}: {cell['why']}")
    for name, why in skipped.items():
        lines.append(f"* data set {name} skipped: {why}")
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


TIME_NOTE = (
    "`s / seed`: measured seconds per seed of training + manifold + clustering (a training shared by "
    "several rows counts in each of them). `paper`: the paper's Table 2 (ACC / NMI) as quoted in "
    'DESIGN.md; "—" where that is not given.'
)


def table2_markdown(run: dict, cells: dict[str, dict], paper: dict, skipped: dict[str, str]) -> str:
    rows, notes = [], []
    for name, cell in cells.items():
        n = next((r["n_samples"] for r in cell["records"]), None)
        k = next((r["n_classes"] for r in cell["records"]), None)
        rows.append(
            [
                name,
                n or DASH,
                k or DASH,
                _seeds(cell),
                *_score_cells(cell),
                *_paper(paper.get(name)),
                fmt_seconds(cell["seconds"]),
            ]
        )
        notes.append((name, cell))
    head = ["data set", "images", "classes", "seeds", "ACC", "NMI", "purity", "paper ACC", "paper NMI", "s / seed"]
    return (
        header("Table 2 — MFVC on each data set (mean ± std over seeds)", run)
        + md_table(head, rows)
        + "\n\n"
        + TIME_NOTE
        + "\n"
        + footnotes(notes, skipped)
    )


def variants_markdown(title: str, run: dict, per_dataset: dict[str, list[tuple]], skipped: dict[str, str]) -> str:
    """Tables 3 and 4: one section per data set, one row per variant.

    ``per_dataset[name]`` is a list of (label, cell, paper numbers or None).
    """
    parts, notes = [header(title, run)], []
    head = ["method", "seeds", "ACC", "NMI", "purity", "paper ACC", "paper NMI", "s / seed"]
    for name, rows in per_dataset.items():
        recs = [r for _, cell, _ in rows for r in cell["records"]]
        n = next((r.get("n_samples") for r in recs), None)
        k = next((r.get("n_classes") for r in recs), None)
        parts.append(f"## {name}" + (f" — {n} images, {k} classes" if n else "") + "\n")
        parts.append(
            md_table(
                head,
                [[label, _seeds(c), *_score_cells(c), *_paper(p), fmt_seconds(c["seconds"])] for label, c, p in rows],
            )
            + "\n"
        )
        notes += [(f"{name}, {label}", c) for label, c, _ in rows]
    return "\n".join(parts) + "\n" + TIME_NOTE + "\n" + footnotes(notes, skipped)


def sweep_markdown(title: str, param: str, grid: list, series: dict[str, list[dict]]) -> str:
    """One panel of Figures 8 and 9 as a section: one row per grid value, one column per series
    (ACC mean ± std over seeds)."""
    rows = []
    for i, value in enumerate(grid):
        rows.append(
            [value]
            + [
                (
                    s[i]["acc"]
                    if s[i]["state"] == "ok"
                    else (NOT_YET if s[i]["state"] == "missing" else s[i]["state"] + " ¹")
                )
                for s in series.values()
            ]
        )
    notes = [(f"{name}, {param}={grid[i]}", s[i]) for name, s in series.items() for i in range(len(grid))]
    return (
        f"## {title}\n\n" + md_table([param] + [f"ACC, {name}" for name in series], rows) + "\n" + footnotes(notes, {})
    )
