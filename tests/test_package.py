"""Packaging: Manager requirements, the engine without ComfyUI or the tooling, the CLI, the built wheel (registry
metadata: test_registry.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
    root = "/srv/comfy/divergence-unlearn-demo-x1/ComfyUI"
    other = (f"Cannot import {root}/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'\n"
             f"   0.0 seconds (IMPORT FAILED): {root}/custom_nodes/some-other-pack\n")
    ours = f"   0.1 seconds (IMPORT FAILED): {root}/custom_nodes/divergence-unlearn\n"
    assert pack_import_failures(other) == []
    assert pack_import_failures(other + ours) == [ours.rstrip("\n")]


# ------------------------------------------------------------------ the wheel: the pack root outside a clone


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The project built as a wheel (from a copy of the source, so no stale build/ joins in) and installed
    with ``pip install --target`` into a folder outside the clone; the folder is returned."""
    tmp = tmp_path_factory.mktemp("wheel")
    junk = shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".venv", "out",
                                  ".device", ".whl")
    shutil.copytree(ROOT, tmp / "src", ignore=junk)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", tmp / "src"],
                   check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("divergence_unlearn-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", tmp / "site", wheel], check=True,
                   capture_output=True)
    return tmp / "site"


def _run_installed(site: Path, code: str, cwd: Path) -> str:
    """Run ``code`` with the wheel's folder first on the path (before this clone and its editable install)."""
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_installed_wheel_finds_the_pack_and_the_demo_weights(installed_wheel, tmp_path):
    _run_installed(installed_wheel, f"""
        from pathlib import Path
        import unlearn_core, unlearn_demo.headless as headless
        site = Path({str(installed_wheel)!r}).resolve()
        assert Path(headless.__file__).resolve().is_relative_to(site), headless.__file__
        assert headless.checkout_root() is None  # site-packages is no pack root
        pack = headless.link_pack(Path({str(tmp_path)!r}))
        assert "Divergence Unlearn: concept erasure" in (pack / "__init__.py").read_text()
        assert (pack / "nodes" / "__init__.py").is_file() and (pack / "nodes" / "io_fallback.py").is_file()
        assert (pack / "web" / "docs" / "DivergenceUnlearn.md").is_file()
        assert (pack / "workflows" / "demo_erase_circle.json").is_file()
        assert (pack / "workflows" / "api" / "demo_erase_circle.json").is_file()
        assert (pack / "unlearn_core").resolve() == Path(unlearn_core.__file__).resolve().parent
        assert Path(unlearn_core.__file__).resolve().is_relative_to(site)

        from unlearn_demo.model import WEIGHTS, DemoModel, load_classifier
        from unlearn_demo.pattern_model import PATTERN_WEIGHTS, PatternModel
        assert WEIGHTS.is_relative_to(site) and PATTERN_WEIGHTS.is_relative_to(site)
        DemoModel.load(), load_classifier(), PatternModel.load(), load_classifier(PATTERN_WEIGHTS)
    """, cwd=tmp_path)


def test_installed_wheel_tells_what_is_missing(installed_wheel, tmp_path):
    shutil.copytree(installed_wheel, tmp_path / "site", symlinks=True)
    shutil.rmtree(tmp_path / "site" / "unlearn_demo" / "node_pack" / "nodes")
    out = _run_installed(tmp_path / "site", """
        import unlearn_demo.headless as headless
        try:
            headless.pack_parts()
        except headless.PackNotFound as e:
            print(e)
    """, cwd=tmp_path)
    assert "missing nodes" in out and "pip install -e" in out


def test_comfyui_loads_the_pack_from_the_installed_wheel(installed_wheel, tmp_path):
    # The headless runner's host copy, made by the installed package: ComfyUI's own loader imports the pack.
    out = _run_installed(installed_wheel, f"""
        import asyncio, sys
        from pathlib import Path
        from unlearn_demo.headless import DEMO_NODES_DIR_NAME, PACK_DIR_NAME, prepare_host
        root = prepare_host(Path({str(tmp_path)!r}))
        sys.path.insert(0, str(root))
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import nodes
        for folder in (PACK_DIR_NAME, DEMO_NODES_DIR_NAME):
            loaded = nodes.load_custom_node(str(root / "custom_nodes" / folder))
            loaded = asyncio.run(loaded) if asyncio.iscoroutine(loaded) else loaded
            assert loaded is not False, folder
        print(sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith(("DivergenceUnlearn", "UnlearnDemo"))))
    """, cwd=tmp_path)
    assert "'DivergenceUnlearn'" in out and "'DivergenceUnlearnApplyErasure'" in out
    assert "'UnlearnDemoLoadFlowModel'" in out  # the demo's own node (--family flux) ships in the wheel too
