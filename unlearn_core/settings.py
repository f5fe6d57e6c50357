"""One declaration of the user-facing erase settings, from which the node's inputs and the CLI are built.

A setting is a field of :class:`unlearn_core.trainer.EraseConfig` declared with :func:`setting` (its
default, help text, range or choices). The node's widgets are those fields in declaration order (saved
workflows store widget values by position: append new settings, as optional inputs so that saved API
prompts still validate, never reorder), and ``erase``'s
command-line options are the same fields as ``--dashed-names``. Fields declared without
:func:`setting` are engine-only.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

_KIND = {int: "INT", float: "FLOAT", str: "STRING", bool: "BOOLEAN"}


@dataclass(frozen=True)
class Setting:
    field: str  # the EraseConfig field
    name: str  # the node input's name; the CLI option is --name with dashes
    kind: type
    default: Any
    help: str
    choices: Sequence[str] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    aliases: tuple[str, ...] = ()  # extra CLI spellings
    optional: bool = False  # an optional node input: API prompts saved before it existed still validate


def setting(default: Any, help: str, *, choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
            low: float | None = None, high: float | None = None, step: float | None = None, name: str | None = None,
            aliases: tuple[str, ...] = (), optional: bool = False) -> Any:
    """A dataclass field that is also a user-facing setting (see the module docstring)."""
    meta = dict(help=help, choices=choices, low=low, high=high, step=step, name=name, aliases=aliases,
                optional=optional)
    return dataclasses.field(default=default, metadata={"setting": meta})


def declared(config_cls: type) -> list[Setting]:
    """The user-facing settings of ``config_cls`` in declaration order."""
    out = []
    for f in dataclasses.fields(config_cls):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        out.append(Setting(field=f.name, name=meta["name"] or f.name, kind=type(f.default), default=f.default,
                           help=meta["help"], choices=list(choices) if choices is not None else None,
                           low=meta["low"], high=meta["high"], step=meta["step"], aliases=meta["aliases"],
                           optional=meta["optional"]))
    return out


def defaults(config_cls: type) -> dict[str, Any]:
    """The settings' default values by input name (what a graph passes to leave a setting at its default)."""
    return {s.name: s.default for s in declared(config_cls)}


def node_inputs(config_cls: type, optional: bool = False) -> dict[str, tuple]:
    """ComfyUI ``INPUT_TYPES`` entries for the required (or the optional) settings: combos for choices, else
    INT/FLOAT/STRING/BOOLEAN widgets."""
    inputs = {}
    for s in declared(config_cls):
        if s.optional != optional:
            continue
        options: dict[str, Any] = {"default": s.default, "tooltip": s.help}
        options.update({k: v for k, v in (("min", s.low), ("max", s.high), ("step", s.step)) if v is not None})
        if s.kind is float:
            options["round"] = False
        inputs[s.name] = (s.choices if s.choices is not None else _KIND[s.kind], options)
    return inputs


def config_from_inputs(config_cls: type, values: dict[str, Any], **extra: Any):
    """A config from node inputs or parsed CLI options (keyed by setting name; an optional one may be absent),
    plus engine-only ``extra``."""
    return config_cls(**{s.field: values.get(s.name, s.default) if s.optional else values[s.name]
                         for s in declared(config_cls)}, **extra)


def add_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--option`` per setting, with the declared default, range in the help, and choices."""
    for s in declared(config_cls):
        flag = "--" + s.name.replace("_", "-")
        dest = dict(dest=s.name)
        if s.kind is bool:
            parser.add_argument(flag, *s.aliases, action=argparse.BooleanOptionalAction, default=s.default,
                                help=s.help, **dest)
            continue
        bounds = f" [{s.low:g} .. {s.high:g}]" if s.low is not None and s.high is not None else ""
        parser.add_argument(flag, *s.aliases, type=s.kind, default=s.default, choices=s.choices,
                            help=f"{s.help}{bounds} (default: %(default)s)", **dest)

