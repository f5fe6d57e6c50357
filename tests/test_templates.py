"""The UI workflows in ComfyUI's template browser, each with its thumbnail; the API twins stay out of it.

The current ComfyUI lists ``<pack>/workflows/*.json`` at ``GET /workflow_templates`` and serves that
folder under ``/api/workflow_templates/<pack>/``; its frontend shows ``<name>.jpg`` as the card's
thumbnail. It does not look into ``workflows/api/``. The 2024 host has no template browser.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from PIL import Image

from comfy_host import PACK_DIR_NAME
from helpers import APP
from workflow_format import API_WORKFLOWS, WORKFLOWS

UI_NAMES = sorted(f.stem for f in WORKFLOWS.glob("*.json"))


def fetch(server, path: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(server.url + path, timeout=30) as r:
        return r.read(), r.headers.get("Content-Type", "")


def test_every_ui_workflow_has_a_square_jpeg_thumbnail_and_an_api_twin():
    assert len(UI_NAMES) >= 5
    assert sorted(f.stem for f in WORKFLOWS.glob("*.jpg")) == UI_NAMES
    assert sorted(f.stem for f in API_WORKFLOWS.glob("*.json")) == UI_NAMES
    for name in UI_NAMES:
        with Image.open(WORKFLOWS / f"{name}.jpg") as im:
            assert im.format == "JPEG" and im.width == im.height >= 128, name


@pytest.fixture(scope="module")
def templates(server) -> dict:
    try:
        return server.get("/workflow_templates")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            pytest.skip("this host has no template browser (ComfyUI before 2024-12)")
        raise


@pytest.mark.slow
def test_server_lists_exactly_the_ui_workflows(templates):
    assert sorted(templates[PACK_DIR_NAME]) == UI_NAMES


@pytest.mark.slow
def test_server_serves_each_workflow_and_its_thumbnail(server, templates):
    for name in templates[PACK_DIR_NAME]:
        body, _ = fetch(server, f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.json")
        assert json.loads(body) == json.loads((WORKFLOWS / f"{name}.json").read_text())
        body, kind = fetch(server, f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.jpg")
        assert kind == "image/jpeg" and body == (WORKFLOWS / f"{name}.jpg").read_bytes()


THUMBNAIL_WIDTH = "(card) => { const img = card.querySelector('img'); return img && img.complete && img.naturalWidth; }"


@pytest.mark.slow
def test_template_browser_shows_each_workflow_with_its_thumbnail_and_opens_it(templates, page):
    fetched: list[str] = []  # the frontend fetches each thumbnail and shows it from a blob: URL
    page.on("response", lambda r: fetched.append(r.url.split("?")[0]) if r.ok else None)
    page.evaluate(f"() => {APP}.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.get_by_test_id("template-workflows-content")
    dialog.get_by_text(PACK_DIR_NAME, exact=True).first.click()
    for name in UI_NAMES:
        card = dialog.get_by_test_id(f"template-workflow-{name}")
        card.scroll_into_view_if_needed(timeout=30000)
        with Image.open(WORKFLOWS / f"{name}.jpg") as im:
            width = im.width
        page.wait_for_function(f"(card) => ({THUMBNAIL_WIDTH})(card) === {width}", arg=card.element_handle(),
                               timeout=30000)
        assert f"{page.url.rstrip('/')}/api/workflow_templates/{PACK_DIR_NAME}/{name}.jpg" in fetched, name
    dialog.get_by_test_id("template-workflow-erase_then_generate").click()
    expected = sorted(n["type"] for n in json.loads((WORKFLOWS / "erase_then_generate.json").read_text())["nodes"])
    page.wait_for_function(f"(n) => {APP}.graph.nodes.length === n", arg=len(expected), timeout=30000)
    assert sorted(page.evaluate(f"() => {APP}.graph.nodes.map((n) => n.type)")) == expected
