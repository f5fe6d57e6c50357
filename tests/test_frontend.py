"""The UI workflows open in ComfyUI's real frontend (headless Chromium) and queue their API twins.

Needs Debian's ``chromium`` and the ``playwright`` package (its driver only; the browser is the system
one). The frontend converts each loaded graph with its own ``graphToPrompt``; the result must equal
the API-format file shipped beside it.
"""

from __future__ import annotations

import json

import pytest

from helpers import APP
from workflow_format import API_WORKFLOWS, WORKFLOWS, newer_host_nodes_missing

pytestmark = pytest.mark.slow
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
LOAD_AND_CONVERT = f"""async (workflow) => {{
    const app = {APP};
    await app.loadGraphData(workflow);
    const prompt = await app.graphToPrompt();
    return prompt.output;
}}"""


@pytest.mark.parametrize("ui_file", UI_FILES, ids=[f.stem for f in UI_FILES])
def test_ui_workflow_opens_in_the_frontend_and_queues_its_api_twin(server, page, ui_file):
    api = json.loads((API_WORKFLOWS / ui_file.name).read_text())
    missing = newer_host_nodes_missing(api, server.get("/object_info"))
    if missing:
        pytest.skip(f"this ComfyUI (the bundled March 2024 one) has no {', '.join(missing)}")
    output = page.evaluate(LOAD_AND_CONVERT, json.loads(ui_file.read_text()))
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}  # noqa: E731
    assert strip(output) == strip(api)
    assert not [e for e in page.errors if "DivergenceUnlearn" in e], page.errors
