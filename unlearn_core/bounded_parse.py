"""JSON and YAML parsing with bounds, and JSON writing that every JSON reader accepts.

Untrusted files (concept sets, erasure headers) are refused before parsing when they nest deeper than
:data:`MAX_DEPTH` (the parsers would otherwise recurse until ``RecursionError``), and YAML aliases
(``*name``) are refused, since a few hundred bytes of nested aliases expand to gigabytes.
Errors are :class:`ParseError` with a short message that never quotes the input.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
"""Deepest nesting of lists and mappings accepted (our formats need 4)."""

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


class ParseError(ValueError):
    """The text is not valid JSON / YAML, or exceeds a bound; the message says which and where."""


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON text, strings left out (a linear scan, no recursion)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def load_json(text: str) -> Any:
    """``json.loads`` for text nested at most :data:`MAX_DEPTH` deep (``NaN`` / ``Infinity`` are read)."""
    if json_depth(text) > MAX_DEPTH:
        raise ParseError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ParseError(f"invalid JSON: {e}") from None


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` for text without aliases, nested at most :data:`MAX_DEPTH` deep."""
    import yaml  # only needed for YAML files

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        depth = 0
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent):
                raise ParseError("YAML aliases (*name) are not allowed: write the value out where it is used")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ParseError(f"nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        return yaml.load(text, Loader=loader)
    except ParseError:
        raise
    except yaml.YAMLError as e:
        raise ParseError(f"invalid YAML: {e}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise ParseError(f"invalid YAML: {e}") from None


def finite(value: Any) -> Any:
    """``value`` with every NaN / infinite float inside lists, tuples and dicts replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dump_json(value: Any) -> str:
    """Strict JSON (no ``NaN`` / ``Infinity``, which JavaScript's ``JSON.parse`` rejects): those become null."""
    return json.dumps(finite(value), allow_nan=False)
