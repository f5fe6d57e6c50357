"""The node-path GPU benchmark's CPU smoke run (tiny models), so that the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_node_gpu_tiny_cpu_run_writes_a_table_per_host(tmp_path):
    out = tmp_path / "node.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_node_gpu.py"), "--tiny", "--device", "cpu",
                    "--model", "sdxl", "--out", str(out)], check=True, timeout=3000, stdout=subprocess.DEVNULL)
    results = json.loads(out.with_suffix(".json").read_text())
    assert len(results) == (2 if os.environ.get("COMFYUI_PATH") else 1)  # the 2024 host, and $COMFYUI_PATH's
    for result in results:
        assert [r["run"] for r in result["rows"]] == ["SDXL 1024 px, batch 1, 20 steps", "SDXL, + checkpointing"]
        assert all(r["steps"] == 3 and r["s_per_step"] > 0 and r["node_s"] > 0 for r in result["rows"])
    assert "| SDXL, + checkpointing | 3 |" in out.read_text()
