"""The ``mfvc-gpu`` command: parse arguments into a config, call the public API, report.

Every failure ends with one line on stderr, never a traceback: exit status 2 for what the user
can fix (a bad setting or file, a full or read-only disk, a diverging loss), 130 for Ctrl-C and
143 for SIGTERM (128 + the signal, as a shell reports them; a cluster run then continues with ``--resume``),
1 for an unexpected error (``-v`` shows its traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from . import interrupts
from .errors import MFVCError
from .flags import add_param_flags


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the usage text is what ``--help`` is for."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: object) -> str:
    """``text`` on one line: a message that a library wrote over several lines is joined."""
    return " ".join(str(text).split()) or "unknown error"


def _add_cluster(sub) -> None:
    p = sub.add_parser(
        "cluster",
        help="cluster a data set and write a run folder",
        description="Train the β-VAE, embed with UMAP, cluster (K-Means, or the fast profile's Gaussian mixture); "
        "write OUT/. Every setting has a flag; --config starts from a config.yaml (flags win).",
    )
    add_param_flags(p)
    a = p.add_argument
    a("--columns", help="for a .csv/.parquet --dataset: comma-separated feature columns (default: all columns)")
    a(
        "--dask-cluster",
        help="run encoding, UMAP and K-Means on Dask: local (CPU worker processes), local-cuda "
        "(one worker per GPU, dask-cuda) or a scheduler address tcp://HOST:PORT (default: no Dask)",
    )
    a("--n-workers", type=int, help="Dask workers to start (local, local-cuda) or to wait for (an address)")
    a("--config", type=Path, help="a config.yaml to start from, e.g. a run folder's (flags win)")
    a("--out", type=Path, help="run folder to write (default runs/<dataset>-seed<seed>)")
    a("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    a("--overwrite", action="store_true", help="replace an existing run folder (only once the new one is complete)")
    a("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cluster)


def config_from_args(a: argparse.Namespace):
    """RunConfig from --config (or the defaults), then every flag that was given."""
    from .config import RunConfig
    from .params import CONFIG_PARAMS

    cfg = RunConfig.from_yaml(a.config) if a.config else RunConfig()
    given = {p.name: getattr(a, p.name) for p in CONFIG_PARAMS if p.cli and getattr(a, p.name, None) is not None}
    return replace(cfg, **given)


def cmd_cluster(a: argparse.Namespace) -> int:
    from .runs import run_cluster

    cfg = config_from_args(a)
    out = a.out or Path("runs") / f"{Path(cfg.dataset).stem}-seed{cfg.random_state}"
    metrics = run_cluster(
        cfg,
        out,
        resume=a.resume,
        overwrite=a.overwrite,
        progress=not a.no_progress,
        columns=a.columns,
        dask_cluster=a.dask_cluster,
        n_workers=a.n_workers,
    )
    scores = "  ".join(f"{k.upper()} {metrics[k]:.4f}" for k in ("acc", "nmi", "purity", "ari") if k in metrics)
    print(
        f"{metrics['dataset']}: {metrics['n_samples']} samples, {metrics['n_clusters']} clusters, "
        f"profile {metrics['profile']}, device {metrics['device']}, backend {metrics['backend']}"
    )
    if scores:
        print(scores)
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timings"].items()))
    print(f"run folder: {out}")
    return 0


def _add_apply(sub) -> None:
    """``predict`` and ``transform``: a saved model on new images."""
    from .params import BY_NAME

    for name, helptext in (
        ("predict", "label images with a saved model (labels.csv; --embedding for the coordinates)"),
        ("transform", "embed images with a saved model (the UMAP coordinates as .npy or .csv)"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        p.add_argument(
            "--model", type=Path, required=True, help="a model folder: a run folder's model/, or MFVC.save's"
        )
        p.add_argument("--dataset", required=True, help=BY_NAME["dataset"].help)
        p.add_argument(
            "--out",
            type=Path,
            required=name == "transform",
            help="labels.csv to write" if name == "predict" else "the coordinates: a .npy or .csv file",
        )
        if name == "predict":
            p.add_argument("--embedding", type=Path, help="also write the coordinates (.npy or .csv)")
        add_param_flags(p, only=lambda q: q.name in APPLY_SETTINGS, table_defaults=True)
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.set_defaults(func=cmd_apply)


APPLY_SETTINGS = (
    "split",
    "data_dir",
    "pixel_max",
    "bad_images",
    "device",
    "backend",
)  # predict's, transform's


def cmd_apply(a: argparse.Namespace) -> int:
    from .predict import run_predict

    labels_out, emb_out = (a.out, a.embedding) if a.command == "predict" else (None, a.out)
    r = run_predict(
        a.model,
        a.dataset,
        labels_out,
        embedding=emb_out,
        split=a.split,
        data_dir=a.data_dir,
        pixel_max=a.pixel_max,
        bad_images=a.bad_images,
        device=a.device,
        backend=a.backend,
        progress=not a.no_progress,
        overwrite=a.overwrite,
        embedding_flag="--embedding" if a.command == "predict" else "--out",
    )
    sizes = ", ".join(f"{c}: {n}" for c, n in r["cluster_sizes"].items())
    print(
        f"{r['dataset']}: {r['n_samples']} images in {r['seconds']:.1f} s (device {r['device']}, backend "
        f"{r['backend']})"
    )
    if a.command == "predict":
        print(f"clusters (images): {sizes}")
    scores = "  ".join(f"{k.upper()} {r[k]:.4f}" for k in ("acc", "nmi", "purity", "ari") if k in r)
    if scores:
        print(scores)
    print("wrote " + ", ".join(str(p) for p in (labels_out, emb_out) if p is not None))
    return 0


def _add_datasets(sub) -> None:
    p = sub.add_parser("datasets", help="list, verify or fetch data sets")
    dsub = p.add_subparsers(dest="action", required=True)
    for name, helptext in (
        ("list", "each data set: found or not, where, size"),
        ("verify", "check found files against published checksums"),
    ):
        q = dsub.add_parser(name, help=helptext)
        q.add_argument("--data-dir", help="folder searched first")
        q.add_argument("--json", action="store_true", help="machine-readable output")
    f = dsub.add_parser("fetch", help="download a data set from its official mirrors")
    f.add_argument("name")
    f.add_argument("--data-dir", help="where to put the files (default: the user cache)")
    f.add_argument("--mirror", help="base URL of another mirror serving the same file names")
    f.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_datasets)


def cmd_datasets(a: argparse.Namespace) -> int:
    from .data import dataset_status, fetch, verify_dataset

    if a.action == "fetch":
        folder = fetch(a.name, a.data_dir, a.mirror, progress=not a.no_progress)
        print(f"{a.name}: files verified in {folder}")
        return 0
    rows = dataset_status(a.data_dir)
    if a.action == "verify":
        for r in rows:
            r["problems"] = verify_dataset(r["name"], a.data_dir) if r["found"] else []
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = "found" if r["found"] else "missing"
            if a.action == "verify" and r["found"]:
                state = "ok" if not r["problems"] else "BAD"
            size = f"{r['bytes'] / 2**20:7.1f} MiB" if r["bytes"] else " " * 11
            print(f"{r['name']:<20} {state:<8} {size}  {r['where'] or r['description']}")
            for problem in r.get("problems", []):
                print(f"    {problem}")
    return 1 if a.action == "verify" and any(r.get("problems") for r in rows) else 0


def _printing(command):
    """The bench and reproduce handlers return (status, lines of output); the CLI prints them."""

    def run(a: argparse.Namespace) -> int:
        status, lines = command(a)
        for line in lines:
            print(line)
        return status

    return run


def build_parser() -> argparse.ArgumentParser:
    from . import __version__, bench, reproduce

    parser = _Parser(
        prog="mfvc-gpu", description="MFVC deep image clustering (β-VAE → UMAP → K-Means or GMM) on GPU or CPU"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_cluster(sub)
    _add_apply(sub)
    _add_datasets(sub)
    for mod, name, helptext in (
        (bench, "bench", "time every stage, GPU against CPU"),
        (reproduce, "reproduce", "regenerate the paper's tables and figures"),
    ):
        p = sub.add_parser(name, help=helptext, description=(mod.__doc__ or helptext).strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(func=_printing(mod.main))
    return parser


def _signal_of(exc: BaseException) -> int:
    return getattr(exc, "signum", signal.SIGINT)


def _interrupted_message(command: str | None, exc: BaseException) -> str:
    what = "terminated (SIGTERM)" if _signal_of(exc) == signal.SIGTERM else "interrupted"
    if command == "cluster":
        return (
            f"{what}; the run folder was not written: rerun the same command with --resume to continue from the "
            "last finished epoch"
        )
    if command == "reproduce":
        return f"{what}; finished results are cached: rerun the same command to continue"
    return f"{what}; nothing was left half-written"


def _numerical_message(exc: BaseException) -> str:
    return (
        f"training diverged ({one_line(exc)}); lower the learning rate (e.g. --lr 0.0005) or check the input "
        "images (their pixel range, NaNs)"
    )


def _memory_message(exc: BaseException) -> str:
    return f"out of memory ({one_line(exc)[:200]}); lower --batch-size, use fewer images, or run on a larger machine"


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc)[:200]


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    """The warnings a finished command met, one line each, each once."""
    seen = set()
    for w in caught:
        text = f"{one_line(w.message)} ({w.category.__name__})"
        if text not in seen:
            seen.add(text)
            print(f"mfvc-gpu: warning: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command; every failure ends with one line on stderr: exit status 2 for what the user
    can fix (``MFVCError``, a file-system error, a diverging loss, memory), 130 for Ctrl-C, 143 for SIGTERM,
    1 for an unexpected error (``-v`` shows its traceback). The libraries' Python warnings are held
    while the command runs and printed one line each when it succeeds (live with ``-v``)."""
    from .fileio import os_error

    args = None
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed as the bytes it is
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    try:
        with interrupts.catching():  # from the start, Ctrl-C and SIGTERM stop the command at its next safe point
            parser = build_parser()
            args = parser.parse_args(argv)
            interrupts.check()
            logging.basicConfig(
                level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
            )
            if args.verbose:
                return int(args.func(args) or 0)
            with warnings.catch_warnings(record=True) as caught:  # held until the outcome is known
                status = int(args.func(args) or 0)
        _show_warnings(caught)  # a failed command prints only its one line
        return status
    except KeyboardInterrupt as exc:
        print(f"mfvc-gpu: {_interrupted_message(getattr(args, 'command', None), exc)}", file=sys.stderr)
        return 128 + _signal_of(exc)
    except MFVCError as exc:
        print(f"mfvc-gpu: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"mfvc-gpu: error: {_numerical_message(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 141  # the reader of stdout went away (| head): nothing to report
    except OSError as exc:  # a write site that was missed: still one line naming the path
        where = exc.filename if isinstance(exc.filename, (str, bytes, os.PathLike)) and exc.filename else "a file"
        print(f"mfvc-gpu: error: {one_line(os_error(os.fsdecode(where), exc, 'access'))}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback with -v
        if _is_out_of_memory(exc):
            print(f"mfvc-gpu: error: {_memory_message(exc)}", file=sys.stderr)
            return 2
        if getattr(args, "verbose", False):
            raise
        print(
            f"mfvc-gpu: internal error: {type(exc).__name__}: {one_line(exc)[:500]} "
            "(rerun with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
