"""Packaging: Manager requirements, the engine without ComfyUI or the tooling, the CLI (registry metadata:
test_registry.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_manager_requirements_never_list_torch():
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    names = [l.split("<")[0].split(">")[0].split("=")[0].strip().lower() for l in lines if l]
    assert names and not {"torch", "torchvision", "torchaudio", "torchsde"} & set(names)


def test_engine_imports_and_runs_without_comfyui():
    code = ("import sys, torch, unlearn_core.trainer, unlearn_core.erasure, unlearn_core.report;"
            "from unlearn_core.divergences import get_closed_form;"
            "assert float(get_closed_form('hellinger').value(torch.tensor(8.0))) > 0;"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'nodes')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_engine_never_imports_the_tooling_package():
    # Every module of unlearn_core imported (the lazy imports inside functions checked by reading the source):
    # none of unlearn_demo (demo, headless runner, toy pipeline) comes with them.
    code = ("import sys, pkgutil, importlib, unlearn_core;"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(unlearn_core.__path__, 'unlearn_core.')"
            " if not m.name.endswith('__main__')];"  # (__main__ runs the CLI; it imports only unlearn_core.cli)
            "assert not [m for m in sys.modules if m.split('.')[0] == 'unlearn_demo'], sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    imports = re.compile(r"^\s*(from|import)\s+unlearn_demo\b|import_module\([\"']unlearn_demo", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "unlearn_core").rglob("*.py") if imports.search(p.read_text())]
    assert offenders == []


def test_cli_erases_a_toy_pipeline_end_to_end(tmp_path):
    env_cmd = [sys.executable, "-m", "unlearn_core"]
    subprocess.run([sys.executable, "-m", "unlearn_demo", "toy-pipeline", str(tmp_path / "toy")], check=True,
                   capture_output=True)
    out = subprocess.run([*env_cmd, "erase", "--pipeline", str(tmp_path / "toy"),
                          "--concepts", "a red circle -> a red shape; keep: a blue square",
                          "--target-mode", "anchor",  # S to the anchor shrinks (anchor_guidance aims past it)
                          "--steps", "40", "--lr", "3e-3", "--resolution", "64", "--anchor-samples", "4",
                          "--sample-steps", "4", "--out", str(tmp_path / "e.safetensors"),
                          "--report-json", str(tmp_path / "r.json")], check=True, capture_output=True, text=True)
    assert "erasure written to" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pairs"][0]["after"] < 0.6 * report["pairs"][0]["before"]
    bad = subprocess.run([*env_cmd, "erase", "--pipeline", str(tmp_path), "--concepts", "a -> b",
                          "--out", str(tmp_path / "x.safetensors")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a diffusers pipeline folder" in bad.stderr


def test_start_up_check_names_only_this_pack_failing_to_import():
    from unlearn_demo.headless import pack_import_failures

    # The current ComfyUI logs its own optional modules failing (no torchaudio here); the demo job's
    # temporary folder is called divergence-unlearn-demo-*, which must not count as this pack.
    root = "/home/user/divergence-unlearn-demo-x1/ComfyUI"
    other = (f"Cannot import {root}/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'\n"
             f"   0.0 seconds (IMPORT FAILED): {root}/custom_nodes/some-other-pack\n")
    ours = f"   0.1 seconds (IMPORT FAILED): {root}/custom_nodes/divergence-unlearn\n"
    assert pack_import_failures(other) == []
    assert pack_import_failures(other + ours) == [ours.rstrip("\n")]

