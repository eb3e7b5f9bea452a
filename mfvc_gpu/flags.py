"""Command-line flags derived from the table of settings: one flag per setting, for every command that takes them."""

from __future__ import annotations

import argparse

from .params import PARAMS, Param


def flag_type(param: Param):
    """argparse ``type`` for a setting: its kind, with 'none' accepted where None is."""

    def convert(text: str):
        if param.optional and text.lower() in ("none", "null"):
            return None
        if text in param.words:
            return text
        try:
            return param.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {param.valid()}") from None

    convert.__name__ = param.kind.__name__
    return convert


def add_param_flags(parser: argparse.ArgumentParser, only=None, table_defaults: bool = False) -> None:
    """One flag per setting of the table (``cli=True``; ``only(param)`` narrows them), grouped by
    stage. Every flag defaults to None, "not given": the value then comes from ``--config``, else
    from the table's default; with ``table_defaults`` the flag defaults to the table's default itself."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for p in PARAMS:
        if not p.cli or (only is not None and not only(p)):
            continue
        group = groups.setdefault(p.stage, parser.add_argument_group(f"{p.stage} settings"))
        flags = [p.flag] + ["--" + a.replace("_", "-") for a in p.aliases]
        shown = p.default_in_run
        default = shown if table_defaults else None
        text = f"{p.help} (default: {shown})"
        if p.kind is bool:
            group.add_argument(*flags, dest=p.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            group.add_argument(
                *flags,
                dest=p.name,
                type=flag_type(p),
                choices=list(p.choices) if p.choices else None,
                default=default,
                metavar=None if p.choices else p.name.upper(),
                help=text,
            )


__all__ = ["add_param_flags", "flag_type"]
