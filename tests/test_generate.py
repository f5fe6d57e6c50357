"""The `generate` CLI: a before/after PNG grid from a pipeline folder and an erasure; the pipeline is left as it was."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CONCEPTS, QUICK
from unlearn_core.adapters.diffusers_sd import DiffusersDenoiser, before_after_images
from unlearn_core.cli import main
from unlearn_core.erasure import Erasure
from unlearn_core.plot import HEADER_HEIGHT, LABEL_WIDTH
from unlearn_core.trainer import EraseConfig, erase

SIDE = 16
IMAGES = dict(steps=1, resolution=SIDE)


@pytest.fixture(scope="module")
def erasure(tiny_pipe):
    return erase(DiffusersDenoiser.from_pipeline(tiny_pipe), CONCEPTS, EraseConfig(steps=3, learning_rate=1e-2, **QUICK))


def test_images_change_with_the_erasure_and_the_pipeline_is_restored(tiny_pipe, erasure):
    before = {n: p.clone() for n, p in tiny_pipe.unet.named_parameters()}
    pairs = before_after_images(tiny_pipe, erasure, ["a red circle", "a blue square"], **IMAGES)
    assert all(torch.equal(before[n], p) for n, p in tiny_pipe.unet.named_parameters()), "pipeline modified"
    assert [a.size for pair in pairs for a in pair] == [(SIDE, SIDE)] * 4
    assert all(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    same = before_after_images(tiny_pipe, erasure, ["a red circle"], strength=0.0, **IMAGES)
    assert np.array_equal(np.asarray(same[0][0]), np.asarray(same[0][1]))


def test_cli_writes_a_labelled_grid(tiny_pipe, erasure, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    erasure.save(tmp_path / "e.safetensors")
    out = subprocess.run([sys.executable, "-m", "unlearn_core", "generate", "--pipeline", str(tmp_path / "pipe"),
                          "--erasure", str(tmp_path / "e.safetensors"), "--prompts", "a red circle; a blue square",
                          "--steps", "1", "--resolution", str(SIDE), "--out", str(tmp_path / "grid.png")],
                         check=True, capture_output=True, text=True)
    assert "grid of 2 prompts written to" in out.stdout
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (HEADER_HEIGHT + 2 * SIDE, LABEL_WIDTH + 2 * SIDE, 3)
    cells = grid[HEADER_HEIGHT:, LABEL_WIDTH:]
    assert not np.array_equal(cells[:, :SIDE], cells[:, SIDE:]), "the after column equals the before column"


def test_cli_refuses_a_comfyui_erasure(tiny_pipe, erasure, tmp_path, capsys):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    comfy = Erasure(full=dict(erasure.full), shapes=erasure.shapes, metadata=replace(erasure.metadata, key_format="ldm"))
    comfy.save(tmp_path / "comfy.safetensors")
    code = main(["generate", "--pipeline", str(tmp_path / "pipe"), "--erasure", str(tmp_path / "comfy.safetensors"),
                 "--prompts", "a red circle", "--out", str(tmp_path / "grid.png"), "--device", "cpu"])
    assert code == 2 and "came from ComfyUI" in capsys.readouterr().err
    assert not (tmp_path / "grid.png").exists()
