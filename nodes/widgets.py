"""The declared settings (``unlearn_core.settings``) as node inputs: one widget per setting, in declaration order."""

from __future__ import annotations

from ..unlearn_core.settings import declared
from .host import io


def setting_inputs(config_cls: type, optional: bool = False) -> list:
    """The required (or the optional) settings of ``config_cls``: a combo where the setting has choices, else
    an INT/FLOAT/STRING/BOOLEAN widget with its range; a numeric widget reaches the "auto" value too."""
    inputs = []
    for s in declared(config_cls):
        if s.optional != optional:
            continue
        common = dict(optional=optional, tooltip=s.help, default=s.default)
        if s.choices is not None:
            inputs.append(io.Combo.Input(s.name, options=list(s.choices), **common))
        elif s.kind is bool:
            inputs.append(io.Boolean.Input(s.name, **common))
        elif s.kind is str:
            inputs.append(io.String.Input(s.name, **common))
        else:
            low = s.low if s.auto is None or s.low is None else min(s.low, s.auto)
            bounds = {k: v for k, v in (("min", low), ("max", s.high), ("step", s.step)) if v is not None}
            if s.kind is float:
                inputs.append(io.Float.Input(s.name, round=False, **common, **bounds))
            else:
                inputs.append(io.Int.Input(s.name, **common, **bounds))
    return inputs
