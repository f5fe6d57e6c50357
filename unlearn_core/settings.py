"""One declaration of the user-facing erase settings, from which the node's inputs and the CLI are built.

A setting is a field of :class:`unlearn_core.config.EraseConfig` declared with :func:`setting` (its
default, help text, range or choices, and the value that means "auto" where there is one). The node's
widgets (``nodes/widgets.py``) are those fields in declaration order (saved workflows store widget values by position: append new
settings, as optional inputs so that saved API prompts still validate, never reorder), and ``erase``'s
command-line options are the same fields as ``--dashed-names``. Fields declared without :func:`setting` are
engine-only. :func:`check` validates a config against the declaration: the trainer
calls it, so the node, the CLI and the main job refuse a bad value with the same message.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence


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
    auto: Any = None  # the value that means "auto", where it lies outside [low, high]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this setting, naming the setting and what it accepts; None if nothing."""
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, self.kind) and not isinstance(value, bool)
        if not ok:
            wanted = "a finite number" if self.kind is float else self.kind.__name__
            return f"{self.name} = {value!r}: expected {wanted}"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} = {value!r} is not one of: {', '.join(map(str, self.choices))}"
        if self.auto is not None and value == self.auto:
            return None
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            auto = f", or {self.auto:g} (auto)" if self.auto is not None else ""
            return f"{self.name} = {value!r} is out of range: {self.low:g} .. {self.high:g}{auto}"
        return None


def setting(default: Any, help: str, *, choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
            low: float | None = None, high: float | None = None, step: float | None = None, name: str | None = None,
            aliases: tuple[str, ...] = (), optional: bool = False, auto: Any = None) -> Any:
    """A dataclass field that is also a user-facing setting (see the module docstring)."""
    meta = dict(help=help, choices=choices, low=low, high=high, step=step, name=name, aliases=aliases,
                optional=optional, auto=auto)
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
                           optional=meta["optional"], auto=meta["auto"]))
    return out


def check(config: Any) -> None:
    """Raise ValueError naming every declared setting of ``config`` whose value is not accepted, and its range."""
    problems = [p for s in declared(type(config)) if (p := s.problem(getattr(config, s.field))) is not None]
    if problems:
        raise ValueError("; ".join(problems))


def defaults(config_cls: type) -> dict[str, Any]:
    """The settings' default values by input name (what a graph passes to leave a setting at its default)."""
    return {s.name: s.default for s in declared(config_cls)}


def config_from_inputs(config_cls: type, values: dict[str, Any], **extra: Any):
    """A config from node inputs or parsed CLI options (keyed by setting name; an optional one may be absent),
    plus engine-only ``extra``."""
    return config_cls(**{s.field: values.get(s.name, s.default) if s.optional else values[s.name]
                         for s in declared(config_cls)}, **extra)


def add_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--option`` per setting, with the declared default, range in the help, and choices."""
    for s in declared(config_cls):
        dest = dict(dest=s.name)
        text = s.help.replace("%", "%%")  # argparse formats help strings with %
        if s.kind is bool:
            parser.add_argument(s.flag, *s.aliases, action=argparse.BooleanOptionalAction, default=s.default,
                                help=text, **dest)
            continue
        bounds = f" [{s.low:g} .. {s.high:g}]" if s.low is not None and s.high is not None else ""
        parser.add_argument(s.flag, *s.aliases, type=s.kind, default=s.default, choices=s.choices,
                            help=f"{text}{bounds} (default: %(default)s)", **dest)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return f"`{value}`" if value else "(empty)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _accepts(s: Setting) -> str:
    if s.kind is bool:
        return "on, off"
    if s.choices is not None:
        return ", ".join(s.choices) if len(s.choices) <= 6 else "see below the table"
    if s.low is None:
        return "text"
    auto = f", or {s.auto:g} (auto)" if s.auto is not None else ""
    return f"{s.low:g} to {s.high:g}{auto}"


def markdown_table(config_cls: type) -> str:
    """The settings as a markdown table (name, default, accepted values, help): the README's, generated here."""
    rows = ["| setting | default | accepts | what it does |", "| --- | --- | --- | --- |"]
    for s in declared(config_cls):
        name = f"`{s.name}`" + (" (optional)" if s.optional else "")
        rows.append(f"| {name} | {_shown(s.default)} | {_accepts(s)} | {s.help} |")
    return "\n".join(rows)
