"""The source of :mod:`mfvc_gpu.settings`, generated from the table in :mod:`mfvc_gpu.params`.

``python -m mfvc_gpu.settings_source`` writes ``settings.py`` beside this file (atomically); a test fails
when the two disagree.
"""

from __future__ import annotations

from typing import Any

from .params import BY_PROFILE, CONFIG_PARAMS, ESTIMATOR_PARAMS, NETWORK_INPUT, STAGE_CLASSES, Param, stage_params


def _lit(value: Any) -> str:
    """A default as source text, strings in double quotes (the house style)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if isinstance(value, str) else repr(value)


def _annotation(p: Param, resolved: bool = False) -> str:
    kinds = [p.kind.__name__] + (["str"] if p.words and p.kind is not str else [])
    return " | ".join(kinds + (["None"] if p.optional and not resolved else []))


def _doc(text: str, rows: list[tuple[str, str]]) -> list[str]:
    import textwrap

    fields = [
        textwrap.fill(f"{name} : {help}", 116, initial_indent="    ", subsequent_indent="        ")
        for name, help in rows
    ]
    return [f'    """{text}', "", *fields, '    """', ""]


def render_settings() -> str:
    """The source of ``mfvc_gpu/settings.py``: typed dataclasses and the estimator's ``__init__``, from the table."""
    out = [
        '"""The typed settings, generated from the table in :mod:`mfvc_gpu.params`; do not edit by hand.',
        "",
        "Regenerate with ``python -m mfvc_gpu.settings_source``; a test fails when this file and",
        "the table disagree. Every object checks its fields against the table when it is made.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass",
        "from typing import ClassVar",
        "",
        "from .params import Settings",
        "",
        "",
    ]
    for stage, (name, text) in STAGE_CLASSES.items():
        rows = stage_params(stage)
        out += ["@dataclass(frozen=True, kw_only=True)", f"class {name}(Settings):"]
        out += _doc(
            text,
            [(p.field_name, p.help) for p in rows]
            + ([(n, "the network's input shape") for n, _ in NETWORK_INPUT] if stage == "network" else []),
        )
        out.append(f"    table: ClassVar[str] = {_lit(stage)}")
        for p in rows:
            if p.name in BY_PROFILE:
                out.append(f"    {p.field_name}: {_annotation(p, resolved=True)}")
            else:
                out.append(f"    {p.field_name}: {_annotation(p)} = {_lit(p.default)}")
        if stage == "network":
            out += [f"    {n}: int = {_lit(d)}" for n, d in NETWORK_INPUT]
        out += ["", ""]
    out += ["@dataclass(frozen=True, kw_only=True)", "class RunFields(Settings):"]
    out += _doc(
        "The settings a run records (``config.yaml``): one field per setting with ``config=True``.",
        [(p.name, p.help) for p in CONFIG_PARAMS],
    )
    out.append('    table: ClassVar[str] = "config"')
    out += [f"    {p.name}: {_annotation(p)} = {_lit(p.default_in_run)}" for p in CONFIG_PARAMS]
    out += ["", "", "class EstimatorParams:"]
    out += _doc(
        "The parameters of :class:`mfvc_gpu.MFVC`; ``__init__`` only stores them (scikit-learn's rule).",
        [(p.name, p.help) for p in ESTIMATOR_PARAMS],
    )
    out += ["    def __init__(", "        self,", "        *,"]
    out += [f"        {p.name}: {_annotation(p)} = {_lit(p.default)}," for p in ESTIMATOR_PARAMS]
    out.append("    ) -> None:")
    out += [f"        self.{p.name} = {p.name}" for p in ESTIMATOR_PARAMS]
    names = [n for n, _ in STAGE_CLASSES.values()] + ["RunFields", "EstimatorParams"]
    out += ["", "", f"__all__ = [{', '.join(_lit(n) for n in names)}]"]
    return "\n".join(out) + "\n"


__all__ = ["render_settings"]


if __name__ == "__main__":  # python -m mfvc_gpu.settings_source: write settings.py beside this file, atomically
    from pathlib import Path

    from .fileio import write_text

    write_text(Path(__file__).with_name("settings.py"), render_settings())
