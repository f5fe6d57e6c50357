"""Concept sets: what to erase, what it should become, and what must stay as it was.

A :class:`ConceptSet` holds

* ``pairs``: erasures ``target -> anchor``.  Training moves the model's prediction
  for the target prompt onto the *original* model's prediction for the anchor
  prompt.  An empty anchor means "erase towards the unconditional prediction".
* ``keep``: preservation prompts (final prompts, never templated) whose
  predictions must not change.
* ``templates``: prompt templates, each with exactly one ``{}``.  Every pair is
  expanded through every template; with no templates the bare concept text is
  used.  The target always fills ``{}``; the anchor fills it too unless it is in
  double quotes or a template already says it (:func:`anchor_prompts`), so
  ``template: a painting by {}`` with ``Van Gogh -> a painting`` trains "a painting
  by Van Gogh" onto "a painting", and with ``Van Gogh -> Claude Monet`` onto "a
  painting by Claude Monet".  Keep prompts are never templated.

Text format (what users type in the node, and the ``.txt`` preset files)::

    # comment lines and blank lines are ignored; so is a trailing " # comment"
    Van Gogh -> a famous artist     # erase target -> anchor ("→" works too)
    nudity ->                       # empty anchor = unconditional
    keep: a photo of a dog          # preservation prompt
    template: a painting in the style of {}
    preset: artist_style            # merge a bundled preset in at this point

One target per line: commas are part of the text, so ``Claude Monet, Salvador
Dali -> a painting`` is a single target.  Write one line per target instead.
``#`` starts a comment only at the start of a line or after whitespace.
Key prefixes (``keep:``, ``template:``, ``preset:``) are case-insensitive and are
recognised before the arrow, so a keep prompt may contain "->".

JSON / YAML files use the :meth:`ConceptSet.to_dict` schema::

    {"name": "...", "pairs": [{"target": "Van Gogh", "anchor": "a painting"},
                              "nudity ->"],
     "keep": ["..."], "templates": ["... {} ..."], "presets": ["object"]}

Only ``pairs`` is required; a pair may be a mapping with ``target`` and
``anchor`` (``anchor`` may be ``""`` or ``null`` for unconditional, but must be
present) or a string ``"target -> anchor"``.  Files are read up to 1 MiB, UTF-8 only;
JSON and YAML nest at most 32 levels and YAML aliases (``*name``) are refused.  ``presets`` is read-only
convenience (merged in first); :meth:`ConceptSet.to_dict` never writes it.

Pure Python: no torch, no ComfyUI.
"""

from __future__ import annotations

import itertools
import os
import re
import reprlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from .bounded_parse import ParseError, load_json, load_yaml

__all__ = [
    "ConceptSetError",
    "ConceptPair",
    "ConceptSet",
    "anchor_prompts",
    "parse_concept_text",
    "load_concept_file",
    "load_preset",
    "preset_names",
    "EXPECTED_LINE_FORMS",
    "FILE_EXTENSIONS",
]

EXPECTED_LINE_FORMS = (
    'expected "target -> anchor", "keep: prompt", "template: ...{}...", or "preset: name"'
)
FILE_EXTENSIONS = (".txt", ".json", ".yaml", ".yml")
MAX_FILE_BYTES = 1 << 20
"""Largest concept-set file read (1 MiB: thousands of lines)."""
SUMMARY_PAIRS = 12  # resolved prompt pairs the summary lists
_NOTHING_TO_ERASE = "nothing to erase: add a line like `Van Gogh -> a painting`"

_ARROW_RE = re.compile(r"->|→")
_COMMENT_RE = re.compile(r"(?:^|\s)#.*$")
_KEY_RE = re.compile(r"^(keep|template|preset)\s*:(.*)$", re.IGNORECASE)
_SHOWN = reprlib.Repr()  # quotes of user input in errors stay short
_SHOWN.maxstring = _SHOWN.maxother = 80
_DICT_KEYS = ("name", "pairs", "keep", "templates", "presets")
_PAIR_KEYS = ("target", "anchor")


class ConceptSetError(ValueError):
    """A concept set (text, file, preset or dict) is malformed.

    The message names the line number or field and shows the expected form.
    """


# --------------------------------------------------------------------------- helpers


def _as_text(value: Any, where: str) -> str:
    """A trimmed string from ``value`` (numbers are accepted for YAML's sake)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConceptSetError(f"{where}: expected a string, got {type(value).__name__} {_SHOWN.repr(value)}")
    return str(value).strip()


def _template_problem(template: str) -> str | None:
    n = template.count("{}")
    if n == 1:
        return None
    return f'a template must contain exactly one "{{}}" (found {n}), e.g. "a painting in the style of {{}}"'


def anchor_prompts(anchor: str, templates: tuple[str, ...]) -> list[str]:
    """The anchor's prompt under each template: "" stays unconditional (the empty prompt); an anchor in
    double quotes, or one whose words some template already says around ``{}``, is a whole prompt, used
    as written under every template; any other anchor fills ``{}`` like its target.

    So with ``template: a painting by {}``, ``Van Gogh -> a painting`` trains "a painting by Van Gogh"
    onto "a painting" (not "a painting by a painting"), ``Van Gogh -> Claude Monet`` onto "a painting by
    Claude Monet", and ``Van Gogh -> "an oil painting"`` onto "an oil painting".
    """
    if not anchor:
        return ["" for _ in templates]
    if len(anchor) >= 2 and anchor[0] == anchor[-1] == '"':
        return [anchor[1:-1].strip() for _ in templates]
    words = _words(anchor)
    for t in templates:
        around = _words(t.replace("{}", " "))
        if any(around[i : i + len(words)] == words for i in range(len(around) - len(words) + 1)):
            return [anchor for _ in templates]
    return [t.replace("{}", anchor, 1) for t in templates]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _dedup(items: Iterable) -> tuple:
    return tuple(dict.fromkeys(items))


def _split_pair(text: str) -> tuple[str, str] | None:
    """``"target -> anchor"`` -> (target, anchor); None when there is no arrow.

    Raises ConceptSetError (without location) for several arrows or an empty target.
    """
    parts = _ARROW_RE.split(text)
    if len(parts) == 1:
        return None
    if len(parts) > 2:
        raise ConceptSetError('more than one "->" (write one "target -> anchor" per line)')
    target, anchor = parts[0].strip(), parts[1].strip()
    if not target:
        raise ConceptSetError('empty target: expected "target -> anchor", e.g. "Van Gogh -> a painting"')
    return target, anchor


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ConceptPair:
    """One erasure: ``target`` (what to erase) -> ``anchor`` (what it should become).

    ``anchor == ""`` means erase towards the unconditional (empty prompt) prediction.
    """

    target: str
    anchor: str = ""

    def __post_init__(self) -> None:
        target = _as_text(self.target, "target")
        anchor = "" if self.anchor is None else _as_text(self.anchor, "anchor")
        if not target:
            raise ConceptSetError('empty target: expected "target -> anchor", e.g. "Van Gogh -> a painting"')
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "anchor", anchor)

    def __str__(self) -> str:
        return f"{self.target} -> {self.anchor}" if self.anchor else f"{self.target} -> (unconditional)"


@dataclass(frozen=True)
class ConceptSet:
    """Erasure pairs, preservation prompts and prompt templates.

    Construction trims whitespace, validates, and removes duplicates (keeping the
    first occurrence's order) from ``pairs``, ``keep`` and ``templates``.  An empty
    ``pairs`` is allowed here (for building sets piece by piece); the parsers and
    loaders reject it.
    """

    pairs: tuple[ConceptPair, ...]
    keep: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.pairs, (str, ConceptPair)) or isinstance(self.keep, str) or isinstance(self.templates, str):
            raise ConceptSetError("pairs, keep and templates must be sequences, not single items")
        pairs = tuple(self.pairs)
        for i, p in enumerate(pairs):
            if not isinstance(p, ConceptPair):
                raise ConceptSetError(f"pairs[{i}]: expected a ConceptPair, got {type(p).__name__}")
        keep = []
        for i, k in enumerate(self.keep):
            k = _as_text(k, f"keep[{i}]")
            if not k:
                raise ConceptSetError(f'keep[{i}]: empty keep prompt (expected e.g. "a photo of a dog")')
            keep.append(k)
        templates = []
        for i, t in enumerate(self.templates):
            t = _as_text(t, f"templates[{i}]")
            problem = _template_problem(t)
            if problem:
                raise ConceptSetError(f"templates[{i}] {_SHOWN.repr(t)}: {problem}")
            templates.append(t)
        name = "" if self.name is None else _as_text(self.name, "name")
        object.__setattr__(self, "pairs", _dedup(pairs))
        object.__setattr__(self, "keep", _dedup(keep))
        object.__setattr__(self, "templates", _dedup(templates))
        object.__setattr__(self, "name", name)

    # ------------------------------------------------------------------ prompts

    def prompt_pairs(self) -> list[tuple[str, str]]:
        """(target_prompt, anchor_prompt) for every pair x template, pair-major order (see :func:`anchor_prompts`)."""
        return list(self.iter_prompt_pairs())

    def iter_prompt_pairs(self) -> Iterator[tuple[str, str]]:
        """:meth:`prompt_pairs` one at a time (the summary shows the first few of a large set)."""
        templates = self.templates or ("{}",)
        for pair in self.pairs:
            for t, anchor in zip(templates, anchor_prompts(pair.anchor, templates)):
                yield t.replace("{}", pair.target, 1), anchor

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(p.target for p in self.pairs)

    def expanded_count(self) -> int:
        """len(prompt_pairs()), without building the list."""
        return len(self.pairs) * max(1, len(self.templates))

    def summary(self) -> str:
        """Readable multi-line description (the node's STRING output)."""
        n_expanded = self.expanded_count()
        title = f"Concept set '{self.name}'" if self.name else "Concept set"
        lines = [
            f"{title}: {len(self.pairs)} pair(s), {len(self.templates)} template(s), "
            f"{len(self.keep)} keep prompt(s) -> {n_expanded} expanded prompt pair(s)",
            "Erase (target -> anchor):",
        ]
        lines += [f"  {p}" for p in self.pairs] or ["  (none)"]
        lines.append("Templates:")
        lines += [f"  {t}" for t in self.templates] or ["  (none: bare concept text)"]
        lines.append("Keep:")
        lines += [f"  {k}" for k in self.keep] or ["  (none)"]
        lines.append(f"Prompt pairs trained ({n_expanded}):")
        for target, anchor in itertools.islice(self.iter_prompt_pairs(), SUMMARY_PAIRS):
            lines.append(f'  "{target}" -> "{anchor}"' if anchor else f'  "{target}" -> (unconditional)')
        if n_expanded > SUMMARY_PAIRS:
            lines.append(f"  ... and {n_expanded - SUMMARY_PAIRS} more")
        return "\n".join(lines)

    # ------------------------------------------------------------------ combine / serialise

    def merged(self, other: "ConceptSet") -> "ConceptSet":
        """Union of both sets, ``self`` first, duplicates removed; name is self's, else other's."""
        if not isinstance(other, ConceptSet):
            raise TypeError(f"can only merge a ConceptSet, not {type(other).__name__}")
        return ConceptSet(
            pairs=self.pairs + other.pairs,
            keep=self.keep + other.keep,
            templates=self.templates + other.templates,
            name=self.name or other.name,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "pairs": [{"target": p.target, "anchor": p.anchor} for p in self.pairs],
            "keep": list(self.keep),
            "templates": list(self.templates),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "ConceptSet":
        """Inverse of :meth:`to_dict`; errors name the field, e.g. ``pairs[2].target: missing``."""
        return _from_dict(d, _including=())


# --------------------------------------------------------------------------- parsing


def _from_dict(d: Any, _including: tuple[str, ...]) -> ConceptSet:
    if not isinstance(d, dict):
        raise ConceptSetError(
            f"top level: expected a mapping with keys {', '.join(_DICT_KEYS)} (only pairs is required), "
            f"got {type(d).__name__}"
        )
    unknown = [k for k in d if k not in _DICT_KEYS]
    if unknown:
        shown = ", ".join(map(_SHOWN.repr, unknown[:5]))  # the first five
        raise ConceptSetError(f"unknown field(s) {shown}: allowed are {', '.join(_DICT_KEYS)}")

    def seq(field: str) -> list:
        value = d.get(field)
        if value is None:
            return []
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConceptSetError(f"{field}: expected a list, got {type(value).__name__}")
        return list(value)

    base = ConceptSet(pairs=())
    for i, preset in enumerate(seq("presets")):
        base = base.merged(_load_preset(_as_text(preset, f"presets[{i}]"), _including))

    if "pairs" not in d and not base.pairs:
        raise ConceptSetError(f"pairs: missing ({_NOTHING_TO_ERASE})")
    pairs = []
    for i, item in enumerate(seq("pairs")):
        where = f"pairs[{i}]"
        if isinstance(item, str):
            try:
                split = _split_pair(item)
            except ConceptSetError as e:
                raise ConceptSetError(f"{where} {_SHOWN.repr(item)}: {e}") from None
            if split is None:
                raise ConceptSetError(
                    f'{where} {_SHOWN.repr(item)}: expected "target -> anchor" or {{"target": ..., "anchor": ...}}'
                )
            pairs.append(ConceptPair(*split))
            continue
        if not isinstance(item, dict):
            raise ConceptSetError(
                f'{where}: expected "target -> anchor" or {{"target": ..., "anchor": ...}}, got {type(item).__name__}'
            )
        extra = [k for k in item if k not in _PAIR_KEYS]
        if extra:
            shown = ", ".join(map(_SHOWN.repr, extra[:5]))  # the first five
            raise ConceptSetError(f"{where}: unknown field(s) {shown}: allowed are target, anchor")
        for key in _PAIR_KEYS:
            if key not in item:
                hint = ' (use "" or null for unconditional)' if key == "anchor" else ""
                raise ConceptSetError(f"{where}.{key}: missing{hint}")
        target = _as_text(item["target"], f"{where}.target")
        if not target:
            raise ConceptSetError(f"{where}.target: empty (expected e.g. \"Van Gogh\")")
        anchor = "" if item["anchor"] is None else _as_text(item["anchor"], f"{where}.anchor")
        pairs.append(ConceptPair(target, anchor))

    keep = []
    for i, k in enumerate(seq("keep")):
        k = _as_text(k, f"keep[{i}]")
        if not k:
            raise ConceptSetError(f'keep[{i}]: empty (expected e.g. "a photo of a dog")')
        keep.append(k)
    templates = []
    for i, t in enumerate(seq("templates")):
        t = _as_text(t, f"templates[{i}]")
        problem = _template_problem(t)
        if problem:
            raise ConceptSetError(f"templates[{i}] {_SHOWN.repr(t)}: {problem}")
        templates.append(t)
    name = d.get("name")
    name = "" if name is None else _as_text(name, "name")

    result = base.merged(ConceptSet(pairs=tuple(pairs), keep=tuple(keep), templates=tuple(templates), name=name))
    if not result.pairs:
        raise ConceptSetError(f"pairs: {_NOTHING_TO_ERASE}")
    return result


def parse_concept_text(text: str, name: str = "") -> ConceptSet:
    """Parse the line format described in the module docstring."""
    return _parse_text(text, name, _including=())


def _parse_text(text: str, name: str, _including: tuple[str, ...]) -> ConceptSet:
    if not isinstance(text, str):
        raise ConceptSetError(f"expected text, got {type(text).__name__}")
    if text.startswith("\ufeff"):
        text = text[1:]
    pairs: list[ConceptPair] = []
    keep: list[str] = []
    templates: list[str] = []

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT_RE.sub("", raw).strip()
        if not line:
            continue

        def fail(msg: str) -> ConceptSetError:
            return ConceptSetError(f"line {lineno}: {msg}: {_SHOWN.repr(raw.strip())}")

        m = _KEY_RE.match(line)
        if m:
            key, value = m.group(1).lower(), m.group(2).strip()
            if key == "keep":
                if not value:
                    raise fail('empty keep prompt, expected "keep: a photo of a dog"')
                keep.append(value)
            elif key == "template":
                problem = _template_problem(value)
                if problem:
                    raise fail(f'{problem}; expected "template: ...{{}}..."')
                templates.append(value)
            else:  # preset
                try:
                    included = _load_preset(value, _including)
                except ConceptSetError as e:
                    raise fail(str(e)) from None
                pairs.extend(included.pairs)
                keep.extend(included.keep)
                templates.extend(included.templates)
            continue

        try:
            split = _split_pair(line)
        except ConceptSetError as e:
            raise fail(str(e)) from None
        if split is None:
            raise fail(f"not understood; {EXPECTED_LINE_FORMS}")
        pairs.append(ConceptPair(*split))

    if not pairs:
        raise ConceptSetError(_NOTHING_TO_ERASE)
    return ConceptSet(pairs=tuple(pairs), keep=tuple(keep), templates=tuple(templates), name=name)


# --------------------------------------------------------------------------- files


def load_concept_file(path: str | os.PathLike) -> ConceptSet:
    """Load a ``.txt`` (line format), ``.json`` or ``.yaml``/``.yml`` (dict schema) file.

    The set's name defaults to the file's stem.  Errors are prefixed with the path.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in FILE_EXTENSIONS:
        shown = _SHOWN.repr(ext) if ext else "(none)"
        raise ConceptSetError(f"{path}: unsupported file extension {shown}; allowed are {', '.join(FILE_EXTENSIONS)}")
    text = _read_text(path)
    try:
        if ext == ".txt":
            cs = parse_concept_text(text, name=path.stem)
        else:
            try:
                data = load_json(text) if ext == ".json" else load_yaml(text)
            except ParseError as e:
                raise ConceptSetError(str(e)) from None
            cs = ConceptSet.from_dict(data)
            if not cs.name:
                cs = ConceptSet(pairs=cs.pairs, keep=cs.keep, templates=cs.templates, name=path.stem)
    except ConceptSetError as e:
        raise ConceptSetError(f"{path}: {e}") from None
    return cs


def _read_text(path: Path) -> str:
    """The text of a regular UTF-8 file of at most :data:`MAX_FILE_BYTES`; pipes are refused without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConceptSetError(f"{path}: not a regular file (a folder, pipe or device): pick a concept-set file")
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConceptSetError(f"{path}: cannot read concept file ({e.strerror or e})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConceptSetError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB, the limit for a concept-set file: "
                              "split it into several files")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConceptSetError(f"{path}: not UTF-8 text (byte {e.start} is {data[e.start]:#04x}): "
                              "save the file as UTF-8") from None


# --------------------------------------------------------------------------- presets


def _presets_dir():
    """The bundled presets folder (a Traversable / Path)."""
    if __package__:
        try:
            from importlib.resources import files

            return files(__package__).joinpath("presets")
        except (ImportError, ModuleNotFoundError, TypeError):  # pragma: no cover
            pass
    return Path(__file__).resolve().parent / "presets"  # pragma: no cover


def preset_names() -> list[str]:
    """Names of the bundled presets, sorted (``artist_style``, ``character``, ...)."""
    folder = _presets_dir()
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):  # pragma: no cover
        return []
    return sorted(e.name[:-4] for e in entries if e.name.endswith(".txt") and e.is_file())


def _normalise_preset_name(name: str) -> str:
    n = name.strip().lower()
    if n.endswith(".txt"):
        n = n[:-4]
    return re.sub(r"[\s\-]+", "_", n)


def load_preset(name: str) -> ConceptSet:
    """Load a bundled preset by name (case-insensitive; "artist-style" == "artist_style")."""
    return _load_preset(name, _including=())


def _load_preset(name: str, _including: tuple[str, ...]) -> ConceptSet:
    if not isinstance(name, str):
        raise ConceptSetError(f"preset name must be a string, got {type(name).__name__}")
    key = _normalise_preset_name(name)
    names = preset_names()
    if key not in names:
        shown = _SHOWN.repr(name.strip()) if name.strip() else "(empty)"
        raise ConceptSetError(f"unknown preset {shown}; valid presets are: {', '.join(names)}")
    if key in _including:
        chain = " -> ".join(_including + (key,))
        raise ConceptSetError(f"preset {key!r} includes itself ({chain})")
    text = _presets_dir().joinpath(key + ".txt").read_text(encoding="utf-8-sig")
    try:
        return _parse_text(text, name=key, _including=_including + (key,))
    except ConceptSetError as e:
        raise ConceptSetError(f"preset {key!r}: {e}") from None
