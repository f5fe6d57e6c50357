"""Load Concept Set: what to erase, what it becomes, and what must stay."""

from __future__ import annotations

import os

import folder_paths

from ..unlearn_core.concepts import ConceptSet, load_concept_file, load_preset, parse_concept_text, preset_names
from .host import CONCEPT_SET, io

NONE = "none"
EXAMPLE = "# one erasure per line: target -> anchor\nVan Gogh -> a painting\nkeep: a painting in the style of Claude Monet\n"


class LoadConceptSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DivergenceUnlearnLoadConceptSet", display_name="Load Concept Set", category="unlearning",
            description=(
                "The concepts to erase: each line `target -> anchor` (the anchor is what the target should "
                "become; leave it empty to erase towards nothing), `keep: prompt` for prompts that must not "
                "change, `template: a painting by {}` to expand every concept (the anchor fills the template too, "
                "unless it is in double quotes or the template already says it: `Van Gogh -> a painting` trains "
                "\"a painting by Van Gogh\" onto \"a painting\"). Inline text, a preset and a file from "
                "models/concept_sets are merged; the summary lists the prompt pairs that will be trained."),
            inputs=[
                # dynamic_prompts off: the frontend would otherwise eat the "{}" of our templates
                io.String.Input("text", multiline=True, dynamic_prompts=False, default=EXAMPLE,
                                tooltip="Lines `target -> anchor`, `keep: prompt`, `template: ...{}...`, "
                                        "`preset: name`, and # comments. An anchor in double quotes is a "
                                        "whole prompt, never templated."),
                io.Combo.Input("preset", options=[NONE, *preset_names()], default=NONE,
                               tooltip="A bundled example set merged with the text."),
                io.Combo.Input("file", options=[NONE, *folder_paths.get_filename_list("concept_sets")],
                               default=NONE, tooltip="A .txt/.json/.yaml set from models/concept_sets."),
            ],
            outputs=[CONCEPT_SET.Output(display_name="concepts",
                                        tooltip="The concept set, for Divergence Unlearn and Erasure Report."),
                     io.String.Output(display_name="summary", tooltip="A readable summary.")],
        )

    @classmethod
    def fingerprint_inputs(cls, text: str = "", preset: str = NONE, file: str = NONE):
        path = folder_paths.get_full_path("concept_sets", file) if file not in (None, NONE) else None
        return (text, preset, file, os.path.getmtime(path) if path and os.path.exists(path) else None)

    @classmethod
    def execute(cls, text: str, preset: str, file: str) -> io.NodeOutput:
        parts: list[ConceptSet] = []
        if text.strip() and any(l.strip() and not l.strip().startswith("#") for l in text.splitlines()):
            parts.append(parse_concept_text(text, name="inline"))
        if preset != NONE:
            parts.append(load_preset(preset))
        if file != NONE:
            path = folder_paths.get_full_path("concept_sets", file)
            if path is None:
                raise ValueError(f"concept set file {file!r} is not in models/concept_sets any more: pick another")
            parts.append(load_concept_file(path))
        if not parts:
            raise ValueError("nothing to erase: type a line like `Van Gogh -> a painting`, or pick a preset or a file")
        concepts = parts[0]
        for other in parts[1:]:
            concepts = concepts.merged(other)
        if not concepts.pairs:
            raise ValueError("the concept set has keep prompts but nothing to erase: add a line like "
                             "`Van Gogh -> a painting`")
        return io.NodeOutput(concepts, concepts.summary())
