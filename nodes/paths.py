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


def erasure_save_path(prefix: str) -> str:
    """A new, unused ``<loras>/<sub/dirs>/<name>_00001.safetensors`` path for a user-given prefix.

    The prefix may contain sub-folders but cannot leave the loras folder (no absolute paths, no
    ``..``, only letters, digits, ``_ - . space`` in each part); existing files are never overwritten.
    """
    parts = [p for p in prefix.replace("\\", "/").split("/") if p]
    if not parts or prefix.startswith(("/", "~")) or any(p in (".", "..") or not SAFE_NAME.match(p) for p in parts):
        raise ValueError(f"filename_prefix {prefix!r} is not allowed: use a relative name like "
                         "'erasures/van_gogh' made of letters, digits, '_', '-', '.' and spaces")
    root = os.path.realpath(folder_paths.get_folder_paths("loras")[0])
    folder = os.path.realpath(os.path.join(root, *parts[:-1]))
    if os.path.commonpath([root, folder]) != root:
        raise ValueError(f"filename_prefix {prefix!r} points outside the loras folder")
    os.makedirs(folder, exist_ok=True)
    counter = 1
    while True:
        path = os.path.join(folder, f"{parts[-1]}_{counter:05d}.safetensors")
        if not os.path.exists(path):
            return path
        counter += 1
