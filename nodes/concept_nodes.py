"""Load Concept Set: what to erase, what it becomes, and what must stay."""

from __future__ import annotations

import os

import folder_paths

from ..unlearn_core.concepts import ConceptSet, load_concept_file, load_preset, parse_concept_text, preset_names

NONE = "none"
EXAMPLE = "# one erasure per line: target -> anchor\nVan Gogh -> a painting\nkeep: a painting in the style of Claude Monet\n"


class LoadConceptSet:
    DESCRIPTION = ("The concepts to erase: each line `target -> anchor` (the anchor is what the target should "
                   "become; leave it empty to erase towards nothing), `keep: prompt` for prompts that must not "
                   "change, `template: a painting by {}` to expand every concept (the anchor fills the template too, "
                   "unless it is in double quotes or the template already says it: `Van Gogh -> a painting` trains "
                   "\"a painting by Van Gogh\" onto \"a painting\"). Inline text, a preset and a file from "
                   "models/concept_sets are merged; the summary lists the prompt pairs that will be trained.")
    CATEGORY = "unlearning"
    RETURN_TYPES = ("CONCEPT_SET", "STRING")
    RETURN_NAMES = ("concepts", "summary")
    OUTPUT_TOOLTIPS = ("The concept set, for Divergence Unlearn and Erasure Report.", "A readable summary.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                # dynamicPrompts off: the frontend would otherwise eat the "{}" of our templates
                "text": ("STRING", {"multiline": True, "dynamicPrompts": False, "default": EXAMPLE,
                                    "tooltip": "Lines `target -> anchor`, `keep: prompt`, `template: ...{}...`, "
                                               "`preset: name`, and # comments. An anchor in double quotes is a "
                                               "whole prompt, never templated."}),
                "preset": ([NONE, *preset_names()], {"default": NONE,
                                                     "tooltip": "A bundled example set merged with the text."}),
                "file": ([NONE, *folder_paths.get_filename_list("concept_sets")],
                         {"default": NONE, "tooltip": "A .txt/.json/.yaml set from models/concept_sets."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, text="", preset=NONE, file=NONE):
        path = folder_paths.get_full_path("concept_sets", file) if file not in (None, NONE) else None
        return (text, preset, file, os.path.getmtime(path) if path and os.path.exists(path) else None)

    def load(self, text: str, preset: str, file: str):
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
        return (concepts, concepts.summary())
