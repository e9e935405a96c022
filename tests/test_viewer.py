"""The web viewer in headless Chromium (Debian's /usr/bin/chromium; never a downloaded browser):
upload a query image, search, see the top-k with attribute values; a screenshot is saved."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dermground.platform.api import create_app
from dermground.platform.settings import Settings

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
KEY = "viewer-read-key"
START_DEADLINE_S = 120  # how long the API server may take to start listening


@contextmanager
def serve(settings: Settings, backbone) -> Iterator[str]:  # noqa: ANN001 - the tiny backbone
    """The API (and the viewer) on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium (`make browser` installs it)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    # Port 0: the server binds a free port itself (a port picked here and bound later may be taken
    # in between by another process: the other pytest worker, Ray, a browser).
    uv = uvicorn.Server(uvicorn.Config(create_app(settings, backbone=backbone), host="127.0.0.1", port=0,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_DEADLINE_S
    while not uv.started:
        if not thread.is_alive():
            pytest.fail("the API server did not start")
        if time.monotonic() > deadline:
            uv.should_exit = True
            pytest.fail(f"the API server did not start listening within {START_DEADLINE_S} s")
        time.sleep(0.05)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


@contextmanager
def browser_page(server: str) -> Iterator[Any]:
    """One headless Chromium page that may fetch only from `server` (page.outside_requests lists the rest)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        # Only our server: any other request (a URL the page should never fetch) fails the test.
        outside: list[str] = []
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server)
                      else (outside.append(route.request.url), route.abort()))
        page = context.new_page()
        page.outside_requests = outside  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(search_collection, tiny_backbone):
    with serve(Settings(home=search_collection["home"], api_read_key=KEY), tiny_backbone) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    with browser_page(server) as opened:
        yield opened


def test_upload_search_shows_the_top_k_with_values(page, server, search_collection, tmp_path) -> None:
    query = search_collection["records"][0]
    image_file = tmp_path / "query.jpg"
    image_file.write_bytes(query.image_bytes())

    page.goto(server + "/")
    page.fill("#apikey", KEY)
    page.dispatch_event("#apikey", "change")
    page.wait_for_selector("#attrs input[data-attribute=areaMM2]")
    page.click("#load-examples")
    page.wait_for_selector("#examples img")
    page.set_input_files("#file", str(image_file))
    page.select_option("#mode", "image_text")
    page.fill("#k", "5")
    page.select_option("#split", "")
    page.click("#go")
    page.wait_for_selector("#grid .hit >> nth=4")
    page.wait_for_function("() => [...document.querySelectorAll('#grid .hit img')].every(i => i.complete && i.naturalWidth > 0)")

    cards = page.locator("#grid .hit")
    assert cards.count() == 5
    assert cards.nth(0).get_attribute("data-isic") == query.isic_id  # the query itself is in the collection
    first = cards.nth(0).inner_text()
    assert "areaMM2" in first and "query" in first
    assert f"{query.attributes['areaMM2']:.1f}" in first  # the hit's own area value is shown
    assert "results" in page.inner_text("#status")
    assert page.outside_requests == []  # type: ignore[attr-defined]
    # an uploaded query has no stored values: the model's prediction is shown, with its spread
    # (the random tiny model may not produce a number, which the viewer says instead)
    shown = page.inner_text("#query")
    assert "uploaded image" in shown
    assert "no numeric answer from the model" in shown or re.search(r"± [0-9.]+ \(predicted\)", shown), shown

    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_pick_an_example_and_filter_by_split(page, server, search_collection) -> None:
    page.goto(server + "/")
    page.fill("#apikey", KEY)
    page.dispatch_event("#apikey", "change")
    page.wait_for_selector("#attrs input[data-attribute=areaMM2]")  # prefetch needs a checked attribute
    page.click("#load-examples")
    page.wait_for_selector("#examples[aria-busy=false] img")  # this click's list, not an earlier one
    picked = page.locator("#examples img").nth(2).get_attribute("data-isic")
    page.locator("#examples img").nth(2).click()
    assert page.input_value("#isic") == picked
    page.select_option("#mode", "prefetch")
    page.select_option("#split", "train")
    page.check("#exclude")
    page.click("#go")
    page.wait_for_selector("#grid .hit")
    records = {r.isic_id: r for r in search_collection["records"]}
    shown = [page.locator("#grid .hit").nth(i).get_attribute("data-isic") for i in range(page.locator("#grid .hit").count())]
    assert shown and picked not in shown
    assert all(records[i].split == "train" and records[i].patient_id != records[picked].patient_id for i in shown)
    assert page.inner_text("#query").count(picked) == 1


def test_wrong_key_shows_the_error(page, server) -> None:
    page.goto(server + "/")
    page.fill("#apikey", "wrong")
    page.dispatch_event("#apikey", "change")
    page.click("#load-examples")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('401')")
    assert "API key" in page.inner_text("#status")
