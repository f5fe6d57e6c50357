"""Fixtures: a real ComfyUI (in-process and as a server), tiny models, a tiny diffusers pipeline, a headless
browser on the server's frontend. Shared helpers that are not fixtures are in helpers.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("helpers")  # its assertion helpers report like a test's own asserts

from comfy_host import ComfyServer, host_label, load_inprocess, prepare_host  # noqa: E402
from helpers import CHROMIUM, READY  # noqa: E402

torch.set_num_threads(2)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded


def pytest_report_header(config):
    return f"ComfyUI host: {host_label()}"


@pytest.fixture(scope="session")
def comfy_root(tmp_path_factory) -> Path:
    """A private copy of the host ComfyUI with this pack in custom_nodes."""
    return prepare_host(tmp_path_factory.mktemp("host"))


@pytest.fixture(scope="session")
def comfy(comfy_root):
    """ComfyUI's ``nodes`` module, imported in this process, with the pack loaded by ComfyUI's loader."""
    return load_inprocess(comfy_root)


@pytest.fixture(scope="session")
def pack_nodes(comfy):
    return {k: v for k, v in comfy.NODE_CLASS_MAPPINGS.items() if k.startswith("DivergenceUnlearn")}


@pytest.fixture(scope="session")
def tiny_checkpoint(comfy, comfy_root) -> Path:
    """A tiny SD15-detected checkpoint with a random CLIP-L, in the host's models/checkpoints."""
    from tiny_comfy import write_sd15_checkpoint

    return write_sd15_checkpoint(comfy_root / "models" / "checkpoints" / "tiny_sd15.safetensors")


@pytest.fixture(scope="session")
def sd15_clip(comfy, tiny_checkpoint):
    """The CLIP that ComfyUI's stock checkpoint loader builds from the tiny checkpoint."""
    import comfy.sd

    with torch.inference_mode():
        out = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint), output_vae=False, output_clip=True)
    return out[1]


@pytest.fixture()
def sd15_model(comfy):
    """A small SD1.5-family MODEL (ComfyUI's classes, 64 channels so that training is fast on a CPU)."""
    from tiny_comfy import build_patcher

    with torch.inference_mode():
        return build_patcher("SD15", seed=0, model_channels=64)


@pytest.fixture(scope="session")
def server(comfy_root, tiny_checkpoint, tmp_path_factory):
    """``main.py --cpu`` on loopback with the pack; always shut down."""
    srv = ComfyServer(comfy_root, tmp_path_factory.mktemp("server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def tiny_pipe(tmp_path_factory):
    from unlearn_demo.toy import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.fail("the frontend tests need Chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        # a first start opens the template browser over the canvas (the frontend's tutorial; hosts that have it
        # store it as done on the server): mark it done, as a returning user's settings do, whichever module runs first
        server.post("/settings/Comfy.TutorialCompleted", True)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url, wait_until="networkidle")
        page.wait_for_function(READY, timeout=60000)  # set up, every node type registered
        page.errors = errors
        yield page
        browser.close()
