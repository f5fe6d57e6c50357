"""One help page per node in web/docs/<node id>.md, served where the current frontend's node help looks.

The frontend fetches ``/extensions/<pack folder>/docs/<node id>.md`` (``NodeHelpService``), which the
server serves from the pack's ``WEB_DIRECTORY``; the 2024 host serves the same folder (no help panel).
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from comfy_host import PACK_DIR_NAME
from helpers import APP

DOCS = Path(__file__).resolve().parents[1] / "web" / "docs"


def test_every_node_has_a_page_naming_each_input_with_a_worked_example(pack_nodes):
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(pack_nodes)
    for node_id, cls in pack_nodes.items():
        page_text = (DOCS / f"{node_id}.md").read_text()
        spec = cls.INPUT_TYPES()
        for name in [*spec["required"], *spec.get("optional", {})]:
            assert f"`{name}`" in page_text, f"{node_id}.md does not describe the input {name}"
        example = page_text.split("## Worked example", 1)
        assert len(example) == 2 and re.search(r"\d+(\.\d+)? ?%", example[1]), f"{node_id}.md: no worked example"


@pytest.mark.slow
def test_server_serves_each_page_where_the_frontend_fetches_it(server, pack_nodes):
    for node_id in pack_nodes:
        with urllib.request.urlopen(f"{server.url}/extensions/{PACK_DIR_NAME}/docs/{node_id}.md", timeout=30) as r:
            assert r.read() == (DOCS / f"{node_id}.md").read_bytes()


@pytest.mark.slow
def test_node_library_help_shows_the_page(page):
    if not page.evaluate(f"() => !!{APP}.extensionManager"):
        pytest.skip("this frontend has no node help panel (2024 host)")
    page.evaluate(f"() => {APP}.extensionManager.command.execute('Workspace.ToggleSidebarTab.node-library')")
    page.get_by_placeholder(re.compile("search", re.I)).first.fill("Erasure Report")
    leaf = page.locator(".p-tree-node-leaf", has_text="Erasure Report").first
    leaf.hover()
    leaf.locator(".help-button").click()
    help_panel = page.locator(".node-help-content .markdown-content")
    help_panel.get_by_role("heading", name="Worked example").wait_for(timeout=30000)
    assert "Measures an erasure in prediction space" in help_panel.inner_text()
