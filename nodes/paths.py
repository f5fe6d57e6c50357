"""ComfyUI model folders this pack registers, and safe file names inside them."""

from __future__ import annotations

import os
import re

import folder_paths

CONCEPT_SET_EXTENSIONS = {".txt", ".json", ".yaml", ".yml"}
SAFE_NAME = re.compile(r"^[\w\- .]+$")


def register_folders() -> None:
    """Register ``models/concept_sets`` (merging with a user's extra_model_paths entry, if any)."""
    folder = os.path.join(folder_paths.models_dir, "concept_sets")
    os.makedirs(folder, exist_ok=True)
    paths, extensions = folder_paths.folder_names_and_paths.get("concept_sets", ([], set()))
    if folder not in paths:
        paths = [*paths, folder]
    folder_paths.folder_names_and_paths["concept_sets"] = (paths, set(extensions) | CONCEPT_SET_EXTENSIONS)


MAX_PREFIX_LENGTH = 160
"""Longest filename prefix: leaves room for the counter, the extension and the loras folder on any OS."""
WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$", re.IGNORECASE)


def _prefix_problem(prefix: str, parts: list[str]) -> str | None:
    """Why ``prefix`` (split into ``parts``) cannot name a file inside the loras folder, or None."""
    if len(prefix) > MAX_PREFIX_LENGTH:
        return f"is {len(prefix)} characters long: use at most {MAX_PREFIX_LENGTH}"
    if not parts or prefix.startswith(("/", "~")) or any(p in (".", "..") or not SAFE_NAME.match(p) for p in parts):
        return ("is not allowed: use a relative name like 'erasures/van_gogh' made of letters, digits, "
                "'_', '-', '.' and spaces")
    for part in parts:
        if WINDOWS_RESERVED.match(part) or part.endswith((".", " ")):
            return (f"has the part {part!r}, which Windows cannot store (reserved device names such as CON or "
                    "AUX, names ending in '.' or a space): use another name")
    return None


def erasure_save_target(prefix: str) -> tuple[str, str]:
    """The folder and file stem for a user-given prefix: ``<loras>/<sub/dirs>``, ``<name>``.

    The prefix may contain sub-folders but cannot leave the loras folder (no absolute paths, no ``..``,
    only letters, digits, ``_ - . space`` in each part, no Windows-reserved names, at most
    :data:`MAX_PREFIX_LENGTH` characters). The saver adds a counter and never overwrites a file.
    """
    parts = [p for p in prefix.replace("\\", "/").split("/") if p]
    problem = _prefix_problem(prefix, parts)
    if problem:
        shown = prefix if len(prefix) <= 60 else prefix[:60] + "..."
        raise ValueError(f"filename_prefix {shown!r} {problem}")
    root = os.path.realpath(folder_paths.get_folder_paths("loras")[0])
    folder = os.path.realpath(os.path.join(root, *parts[:-1]))
    if os.path.commonpath([root, folder]) != root:
        raise ValueError(f"filename_prefix {prefix!r} points outside the loras folder")
    return folder, parts[-1]
