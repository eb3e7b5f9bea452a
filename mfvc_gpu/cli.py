"""The ``mfvc-gpu`` command: parse arguments into a config, call the public API, report.

User mistakes end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from .errors import MFVCError

# Sub-commands whose code lives outside this file: module -> (name, help). Each module has
# ``add_arguments(parser)`` and ``main(args) -> int``.
EXTERNAL_COMMANDS = {
    "mfvc_gpu.bench": ("bench", "time every stage, GPU against CPU"),
    "mfvc_gpu.reproduce": ("reproduce", "regenerate the paper's tables and figures"),
}


def _flag_type(param):
    """argparse ``type`` for a setting: its kind, with 'none' accepted where None is."""
    def convert(text: str):
        if param.optional and text.lower() in ("none", "null"):
            return None
        try:
            return param.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {param.valid()}") from None

    convert.__name__ = param.kind.__name__
    return convert


def add_param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of the table (``cli=True``), grouped by stage. Every flag defaults to
    None, "not given": the value then comes from ``--config``, else from the table's default."""
    from .params import PARAMS

    groups: dict[str, argparse._ArgumentGroup] = {}
    for p in PARAMS:
        if not p.cli:
            continue
        group = groups.setdefault(p.stage, parser.add_argument_group(f"{p.stage} settings"))
        flags = [p.flag] + ["--" + a.replace("_", "-") for a in p.aliases]
        default = p.default_in_run
        text = f"{p.help} (default: {default})"
        if p.kind is bool:
            group.add_argument(*flags, dest=p.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(*flags, dest=p.name, type=_flag_type(p), choices=list(p.choices) if p.choices else None,
                               default=None, metavar=None if p.choices else p.name.upper(), help=text)


def _add_cluster(sub) -> None:
    p = sub.add_parser("cluster", help="cluster a data set and write a run folder",
                       description="Train the β-VAE, embed with UMAP, cluster with K-Means; write OUT/. "
                                   "Every setting has a flag; --config starts from a config.yaml (flags win).")
    add_param_flags(p)
    a = p.add_argument
    a("--columns", help="for a .csv/.parquet --dataset: comma-separated feature columns (default: all columns)")
    a("--dask-cluster", help="run encoding, UMAP and K-Means on Dask: local (CPU worker processes), local-cuda "
                             "(one worker per GPU, dask-cuda) or a scheduler address tcp://HOST:PORT (default: no Dask)")
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
    metrics = run_cluster(cfg, out, resume=a.resume, overwrite=a.overwrite, progress=not a.no_progress, columns=a.columns,
                          dask_cluster=a.dask_cluster, n_workers=a.n_workers)
    scores = "  ".join(f"{k.upper()} {metrics[k]:.4f}" for k in ("acc", "nmi", "purity", "ari") if k in metrics)
    print(f"{metrics['dataset']}: {metrics['n_samples']} samples, {metrics['n_clusters']} clusters, "
          f"profile {metrics['profile']}, device {metrics['device']}, backend {metrics['backend']}")
    if scores:
        print(scores)
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timings"].items()))
    print(f"run folder: {out}")
    return 0


def _add_datasets(sub) -> None:
    p = sub.add_parser("datasets", help="list, verify or fetch data sets")
    dsub = p.add_subparsers(dest="action", required=True)
    for name, helptext in (("list", "each data set: found or not, where, size"), ("verify", "check found files against published checksums")):
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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="mfvc-gpu", description="MFVC deep image clustering (β-VAE → UMAP → K-Means) on GPU or CPU")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_cluster(sub)
    _add_datasets(sub)
    for module, (name, helptext) in EXTERNAL_COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=helptext, description=(mod.__doc__ or helptext).strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except MFVCError as exc:
        print(f"mfvc-gpu: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mfvc-gpu: interrupted; a cluster run continues with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
