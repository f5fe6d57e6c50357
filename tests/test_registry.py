"""What the Comfy Registry checks before publishing (``comfy node validate``, comfy-cli 1.23), without comfy-cli.

``comfy node validate`` parses ``pyproject.toml``, requires ``project.version``, and runs
``ruff check --select S102,S307,E702`` (exec, eval, several statements on one line); ``.ci/run`` runs
the real command too. The registry's specification adds: a node id of letters, digits, ``.``, ``_``
and ``-`` that starts with a letter, a ``{text}`` or ``{file}`` licence, a Repository URL, a
PublisherId, and a square icon of at most 400 px.
"""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import tokenize
import tomllib
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT, COMFY = CONFIG["project"], CONFIG["tool"]["comfy"]
ICON = ROOT / "docs" / "icon.png"


def tracked_python_files() -> list[Path]:
    """The .py files ``comfy node pack`` would publish (git-tracked, as ruff sees them)."""
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines()]


def test_pyproject_has_what_the_comfy_registry_requires():
    name = PROJECT["name"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,99}", name) and not re.search(r"[._-]{2}", name)
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])
    license = PROJECT["license"]  # an SPDX string (PEP 639, what comfy-cli itself writes) or a {text|file} table
    assert re.fullmatch(r"[A-Za-z0-9.+-]+", license) if isinstance(license, str) else set(license) & {"text", "file"}
    assert PROJECT["description"] and PROJECT["requires-python"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", PROJECT["urls"]["Repository"])
    assert re.fullmatch(r"[a-z0-9-]+", COMFY["PublisherId"]) and COMFY["DisplayName"]
    assert re.fullmatch(r"(>=|>|<=|<|~=|==)\d+\.\d+\.\d+", COMFY["requires-comfyui"])


def test_icon_url_is_docs_icon_png_of_the_repository():
    repo = PROJECT["urls"]["Repository"].removeprefix("https://github.com/")
    assert COMFY["Icon"] == f"https://raw.githubusercontent.com/{repo}/main/docs/icon.png"


@pytest.mark.skipif(not ICON.exists(), reason="docs/icon.png is made by issue 15's icon item (another branch)")
def test_icon_is_a_square_image_of_at_most_400_px():
    with Image.open(ICON) as im:
        assert im.format == "PNG" and im.width == im.height <= 400


def test_no_exec_eval_or_several_statements_on_one_line():
    """ruff S102 (exec), S307 (eval), E702 (``a; b``) over the published Python files."""
    found = []
    for path in tracked_python_files():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("exec", "eval"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.id}()")
        tokens = list(tokenize.generate_tokens(iter(source.splitlines(keepends=True)).__next__))
        for tok, nxt in itertools.pairwise(tokens):
            if tok.type == tokenize.OP and tok.string == ";" and nxt.type not in (tokenize.NEWLINE, tokenize.COMMENT):
                found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: two statements on one line")
    assert not found, found
