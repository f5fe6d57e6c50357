"""What an erasure file records about how it was made: a typed, versioned record in its safetensors header.

The header holds it as JSON under ``divergence_unlearn`` (with the tensors' ``names`` and ``shapes``, which
:mod:`.erasure` reads itself). Format 2 names every field; files of format 1 (no ``format`` field: the
pack before this record was typed) stored the step records as positional rows and the keep projection as one
sentence, and are read into the same record. Top-level fields a newer writer added are kept in ``extra`` and written
back, as is a config whose settings are not today's :class:`~unlearn_core.config.EraseConfig` (``config`` is then
None); a file of a newer format is refused with a message that says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

from . import __version__
from .config import EraseConfig
from .settings import check

LIBRARY = "divergence-unlearn"
FORMAT = 2


class MalformedMetadata(ValueError):
    """A header field of the wrong type or value; the message names the field."""


class Stop(str, Enum):
    """Why an erasure ended; only CAP means it did not reach what it was asked."""

    ERASED = "erase_until"  # every target reached erase_until
    SETTLED = "settled"  # erase_until auto: every target past its anchor, and the least of them no longer moving
    CAP = "steps_cap"  # erase_until was set, and the steps ran out before it was reached: a warning
    STEPS = "steps"  # erase_until 0: it ran the steps asked for
    KEEP_DRIFT = "max_keep_drift"  # a keep prompt drifted past max_keep_drift; the state before was returned


class Projection(str, Enum):
    """What the keep projection did (:class:`ProjectionRecord` says it in words too, with its numbers)."""

    APPLIED = "applied"
    OFF = "off"  # keep_projection was off
    NO_KEEP_PROMPTS = "no_keep_prompts"
    NOT_APPLICABLE = "not_applicable"  # the parameter set trains no weight that reads the text
    FELL_BACK = "fell_back"  # a target would have kept too little to train: the keep loss alone
    UNRECORDED = "unrecorded"  # a file written before the projection existed


@dataclass(frozen=True)
class ProjectionRecord:
    """What the keep projection did, as values and in words."""

    status: Projection = Projection.UNRECORDED
    note: str = ""  # the same in words, with its numbers (the console's line)
    tensors: int = 0  # trained tensors whose updates were projected
    keep_directions: int | None = None  # text directions the keep prompts span
    text_directions: int | None = None  # of the text embedding's width
    target_shares: tuple[float, ...] = ()  # per target: the share of its most distinct row left to train

    @classmethod
    def from_json(cls, raw: Any) -> "ProjectionRecord":
        """Format 2's mapping, or format 1's sentence (its status read from its wording; the numbers unrecorded)."""
        if isinstance(raw, str):
            return cls(_projection_of_sentence(raw), raw)
        if not isinstance(raw, dict) or set(raw) - {f.name for f in fields(cls)}:
            raise MalformedMetadata("metadata field 'keep_projection' is not a projection record")
        shares = raw.get("target_shares", [])
        directions = [raw.get(k) for k in ("keep_directions", "text_directions")]
        if (not isinstance(raw.get("note", ""), str) or not _is_int(raw.get("tensors", 0))
                or not all(d is None or _is_int(d) for d in directions) or not isinstance(shares, list)
                or not all(_is_real(v) for v in shares)):
            raise MalformedMetadata("metadata field 'keep_projection' holds a value of the wrong type")
        return cls(**dict(raw, status=_enum(Projection, raw.get("status") or Projection.UNRECORDED, "keep_projection"),
                          target_shares=tuple(float(v) for v in shares)))


@dataclass(frozen=True)
class StepRecord:
    """One logged optimiser step; the probes' values only on check steps (else None)."""

    step: int
    loss: float | None  # None: not finite
    mean_s: float | None  # mean S of the erasure terms (before sigma)
    keep_s: float | None = None  # mean S of the keep prompts' terms; None without keep prompts
    grad_norm: float | None = None
    moved: float | None = None  # the least any target moved onto its anchor
    drift: float | None = None  # the largest keep drift
    progress: float | None = None  # the least progress of any target towards its mode's aim


STEP_FIELDS = tuple(f.name for f in fields(StepRecord))  # also the column order of format 1's rows


@dataclass
class ErasureMetadata:
    """How an erasure was made: the model it fits, the concepts, the resolved config it ran, and how it ended."""

    family: str = "unknown"  # the model family it was trained on (errors name it)
    key_format: str = ""  # "ldm" (ComfyUI's names) or "diffusers"; "" = unrecorded
    prediction_type: str = ""
    fingerprint: str = ""  # of the original weights of the trained tensors (erasure.fingerprint)
    concepts: dict = field(default_factory=dict)  # ConceptSet.to_dict()
    config: EraseConfig | None = None  # the resolved config it ran (no "auto" left); None: unrecorded or another
    sigma_auto: bool = False  # sigma was calibrated (the setting was 0)
    seconds: float | None = None
    history: list[StepRecord] = field(default_factory=list)
    stop: Stop | None = None
    stopped: str = ""  # the stop, in words (the console's and the node's last line)
    keep_projection: ProjectionRecord = field(default_factory=ProjectionRecord)
    low_rank: dict | None = None  # {"rank", "max_relative_error"} once converted to a LoRA (export.to_lora)
    library: str = LIBRARY
    version: str = __version__  # the pack's version that wrote it
    extra: dict = field(default_factory=dict)  # fields this version does not know, kept as they were

    @property
    def capped(self) -> bool:
        """The run hit its steps before the measure it was asked to reach: a warning, not success."""
        return self.stop == Stop.CAP

    def to_json(self) -> dict[str, Any]:
        """The header's form (format 2): step records as columns, enums as their values."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("history", "extra")}
        projection = self.keep_projection
        out.update(config=asdict(self.config) if self.config is not None else self.extra.get("config"),
                   stop=self.stop.value if self.stop else None,
                   keep_projection=dict(asdict(projection), status=projection.status.value,
                                        target_shares=list(projection.target_shares)),
                   history={name: [getattr(r, name) for r in self.history] for name in STEP_FIELDS})
        return {**self.extra, **out, "format": FORMAT}

    @classmethod
    def from_json(cls, raw: Any) -> "ErasureMetadata":
        """The record in a header's JSON, of format 1 or 2; :class:`MalformedMetadata` names a field that is wrong."""
        if not isinstance(raw, dict):
            raise MalformedMetadata(f"its metadata is a {type(raw).__name__}, not a mapping")
        raw = dict(raw)
        version = raw.pop("format", 1)
        if not _is_int(version) or version < 1:
            raise MalformedMetadata("metadata field 'format' is not a positive integer")
        if version > FORMAT:
            raise MalformedMetadata(f"it is of format {version}, written by a newer Divergence Unlearn than this one "
                                    f"(which reads formats 1 to {FORMAT}): update the pack")
        known = {f.name for f in fields(cls)} - {"extra"}
        for key, kind in FIELD_TYPES.items():
            value = raw.get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)):
                raise MalformedMetadata(f"metadata field {key!r} is a {type(value).__name__}")
        if (raw.get("key_format") or "") not in ("", "ldm", "diffusers"):
            raise MalformedMetadata("metadata field 'key_format' is neither 'ldm' nor 'diffusers'")
        known_raw = {k: raw.pop(k) for k in list(raw) if k in known}
        values = {k: v for k, v in known_raw.items() if v is not None}
        values["history"] = _step_records(values.get("history", []))
        values["stop"] = _enum(Stop, values.get("stop"), "stop")
        values["keep_projection"] = ProjectionRecord.from_json(values.get("keep_projection", {}))
        values["config"] = _erase_config(values.get("config"))
        if "config" in known_raw and values["config"] is None:
            raw["config"] = known_raw["config"]  # settings of another version: kept as they were
        return cls(**values, extra=raw)


FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "library": str, "version": str, "family": str, "key_format": str, "prediction_type": str, "fingerprint": str,
    "concepts": dict, "config": dict, "low_rank": dict, "seconds": (int, float), "history": (list, dict),
    "stop": str, "stopped": str, "keep_projection": (str, dict), "sigma_auto": bool,
}
"""The JSON type of every field of the record (None is accepted for each: unrecorded)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_or_none(value: float | None) -> float | None:
    """A recorded number, None where it is not finite (JSON has no NaN: the header stores those as null)."""
    return value if value is None or math.isfinite(value) else None


def _number(value: Any) -> float | None:
    if value is not None and not _is_real(value):
        raise MalformedMetadata("metadata field 'history' holds something other than numbers")
    return value if value is None or _is_int(value) else _finite_or_none(float(value))


def _step_records(history: list | dict) -> list[StepRecord]:
    """Format 1's positional rows (a prefix of STEP_FIELDS each) or format 2's columns, as records."""
    if isinstance(history, dict):
        if set(history) - set(STEP_FIELDS) or not all(isinstance(c, list) for c in history.values()):
            raise MalformedMetadata(f"metadata field 'history' has columns other than {', '.join(STEP_FIELDS)}")
        lengths = {len(c) for c in history.values()}
        if len(lengths) > 1:
            raise MalformedMetadata("metadata field 'history' has columns of different lengths")
        rows = [dict(zip(history, values)) for values in zip(*history.values())]
    else:
        if not all(isinstance(row, list) and len(row) <= len(STEP_FIELDS) for row in history):
            raise MalformedMetadata("metadata field 'history' holds something other than rows of numbers")
        rows = [dict(zip(STEP_FIELDS, row)) for row in history]
    records = []
    for row in rows:
        row = {k: _number(v) for k, v in row.items()}
        records.append(StepRecord(**{"step": 0, "loss": None, "mean_s": None, **row}))
    return records


def _erase_config(recorded: dict | None) -> EraseConfig | None:
    """The recorded settings as an EraseConfig where they are exactly today's settings, each accepted; else None."""
    names = {f.name for f in fields(EraseConfig)}
    if not recorded or set(recorded) != names:
        return None
    config = EraseConfig(**recorded)
    try:
        check(config)
    except ValueError:
        return None
    return config


def _enum(kind: type[Enum], value: Any, name: str):
    if value is None or isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        raise MalformedMetadata(f"metadata field {name!r} is not one of {', '.join(m.value for m in kind)}") from None


def _projection_of_sentence(note: str) -> Projection:
    """Format 1's keep-projection sentence, as the status it stated."""
    if not note:
        return Projection.UNRECORDED
    if note == "off":
        return Projection.OFF
    if note == "no keep prompts":
        return Projection.NO_KEEP_PROMPTS
    if note.startswith("not applicable"):
        return Projection.NOT_APPLICABLE
    if note.startswith("not applied"):
        return Projection.FELL_BACK
    return Projection.APPLIED


def step_record(info) -> StepRecord:
    """The record of a logged :class:`~unlearn_core.steps.StepInfo`: NaN (what it holds where nothing was measured)
    and infinities (an fp16 step that overflowed) as None, as the header stores them."""
    return StepRecord(info.step, **{name: _finite_or_none(getattr(info, name)) for name in STEP_FIELDS[1:]})

