"""End to end against a real ComfyUI server on loopback: /object_info, the shipped workflows, interrupt."""

from __future__ import annotations

import json
import time

import pytest

from comfy_host import report_numbers
from helpers import ERASE_THEN_GENERATE, WORKFLOW_DIR, adapt_for_tiny, wait_for_log_line
from unlearn_demo.assemble import write_checkpoint
from unlearn_demo.headless import LogTail
from workflow_format import input_spec, newer_host_nodes_missing

pytestmark = pytest.mark.slow

WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def saved_erasure(server) -> str:
    """A file saved by Save Erasure in a real run (relative to the loras folder)."""
    prompt = adapt_for_tiny(json.loads(ERASE_THEN_GENERATE.read_text()))
    entry = server.run(prompt, timeout=600)
    return next(o["text"][0] for o in entry["outputs"].values() if "text" in o)


def test_object_info_lists_the_nodes_with_inputs(server):
    info = server.get("/object_info")
    node = info["DivergenceUnlearn"]
    assert node["display_name"] == "Divergence Unlearn (α)" and node["category"] == "unlearning"
    required = node["input"]["required"]
    assert {"model", "clip", "concepts", "divergence", "alpha", "steps"} <= set(required)
    choices = input_spec(required["divergence"])[0]  # V1 and V3 nodes write combos differently
    assert "hellinger" in choices and "variational_jensen_shannon" in choices
    assert node["output"] == ["MODEL", "ERASURE", "IMAGE"]
    for name in ("DivergenceUnlearnLoadConceptSet", "DivergenceUnlearnApplyErasure",
                 "DivergenceUnlearnSaveErasure", "DivergenceUnlearnErasureReport"):
        assert name in info
    assert info["DivergenceUnlearnSaveErasure"]["output_node"] is True


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_shipped_api_workflow_runs_headless(server, workflow, saved_erasure, comfy_root):
    prompt = json.loads(workflow.read_text())
    missing = newer_host_nodes_missing(prompt, server.get("/object_info"))
    if missing:
        pytest.skip(f"this ComfyUI (the bundled March 2024 one) has no {', '.join(missing)}")
    if any(node["class_type"] == "UNETLoader" for node in prompt.values()):
        write_checkpoint(comfy_root / "models" / "checkpoints")  # the flow demo's CLIP and VAE
    prompt = adapt_for_tiny(prompt, saved_erasure)
    started = time.monotonic()
    entry = server.run(prompt, timeout=600)
    outputs = entry["outputs"]
    print(f"{workflow.name}: {time.monotonic() - started:.1f} s")
    texts = [t for o in outputs.values() for t in o.get("text", [])]
    images = [img for o in outputs.values() for img in o.get("images", []) if img["type"] == "output"]  # not previews
    if any(n["class_type"] == "DivergenceUnlearnSaveErasure" for n in prompt.values()):
        assert any(t.endswith(".safetensors") for t in texts), texts
    if any(n["class_type"] == "DivergenceUnlearnErasureReport" for n in prompt.values()):
        assert any("moved" in t for t in texts), texts
    if any(n["class_type"] == "DivergenceUnlearnRobustnessProbe" for n in prompt.values()):
        assert any("restored" in t for t in texts), texts
    if any(n["class_type"] == "SaveImage" for n in prompt.values()):
        assert images and all((server.output_dir / i["subfolder"] / i["filename"]).is_file() for i in images)


def test_interrupt_during_training_ends_the_prompt_as_interrupted(server):
    prompt = adapt_for_tiny(json.loads(ERASE_THEN_GENERATE.read_text()))
    unlearn = next(n for n in prompt.values() if n["class_type"] == "DivergenceUnlearn")
    unlearn["inputs"]["steps"] = 100000
    unlearn["inputs"]["seed"] = 12345  # not cached from the other test
    log = LogTail(server.log_path)
    log.new_lines()  # what the server logged before this prompt
    prompt_id = server.queue(prompt)
    wait_for_log_line(server, log, "[Divergence Unlearn] step 1/100000 ", timeout=120)  # inside the training loop
    server.post("/interrupt", {})
    entry = server.wait(prompt_id, timeout=120)
    messages = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in messages, messages
    assert entry["status"]["status_str"] != "success"


def test_requeuing_an_unchanged_graph_does_not_retrain(server):
    prompt = adapt_for_tiny(json.loads(ERASE_THEN_GENERATE.read_text()))
    server.run(prompt, timeout=600)
    entry = server.run(prompt, timeout=600)
    cached = [set(m[1].get("nodes", [])) for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    unlearn_id = next(k for k, n in prompt.items() if n["class_type"] == "DivergenceUnlearn")
    assert cached and unlearn_id in cached[0], entry["status"]["messages"]


def test_erasure_moves_target_onto_anchor_within_preservation_bound(server):
    """The multi-concept workflow with one pair and one keep prompt, trained long enough to measure.

    Measured (2 CPU cores): moved 55.3%, keep drift 0.3%, 12 s on a quiet machine."""
    prompt = adapt_for_tiny(json.loads((WORKFLOW_DIR / "multi_concept_preservation.json").read_text()))
    concepts = next(n for n in prompt.values() if n["class_type"] == "DivergenceUnlearnLoadConceptSet")
    concepts["inputs"]["text"] = "a red circle -> a red shape\nkeep: a blue square\n"
    unlearn = next(n for n in prompt.values() if n["class_type"] == "DivergenceUnlearn")
    unlearn["inputs"].update(steps=60, learning_rate=3e-5, batch_size=2, anchor_samples=4, sample_steps=4)
    report = next(n for n in prompt.values() if n["class_type"] == "DivergenceUnlearnErasureReport")
    report["inputs"]["probes"] = 4
    entry = server.run(prompt, timeout=900)
    text = next(t for o in entry["outputs"].values() for t in o.get("text", []) if "moved" in t)
    numbers = report_numbers(text)
    print(text)
    assert numbers["moved"] >= 35 and numbers["drift"] <= 5, text


def test_training_reports_progress_per_step_over_the_websocket(server):
    import asyncio

    import aiohttp

    prompt = adapt_for_tiny(json.loads(ERASE_THEN_GENERATE.read_text()))
    unlearn_id = next(k for k, n in prompt.items() if n["class_type"] == "DivergenceUnlearn")
    prompt[unlearn_id]["inputs"].update(steps=5, seed=777)  # not cached from the other tests

    async def collect() -> list[dict]:
        messages = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url}/ws?clientId={server.client_id}") as ws:
                prompt_id = server.queue(prompt)
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(msg.data)
                    messages.append(data)
                    if data["type"] == "executing" and data["data"].get("node") is None \
                            and data["data"].get("prompt_id") == prompt_id:
                        return messages
        return messages

    messages = asyncio.run(asyncio.wait_for(collect(), timeout=300))
    progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"].get("max") == 5]
    assert [p["value"] for p in progress][-5:] == [1, 2, 3, 4, 5], progress
