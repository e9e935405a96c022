"""The web viewer over a long session, against a server with limits of its own (max_k 7, max_b 150):
the page follows the server's limits, offers every filter the API takes, lets go of the pictures it
no longer shows, and keeps its results when a click is throttled. One served copy of the test
collection and one browser page for the whole module; every wait is for the condition then asserted."""

from __future__ import annotations

import json
import time

import pytest

from dermground.platform.settings import Settings
from tests.test_viewer import KEY, browser_page, serve
from tests.test_viewer_hostile import _searched

pytestmark = pytest.mark.browser

MAX_K, MAX_B = 7, 150  # max_b below the page's default b (200)
ROUTE_DEADLINE_S = 60  # how long a request the test holds may take to reach the test's route
# Counts the blob URLs the page holds (made by URL.createObjectURL, let go by URL.revokeObjectURL)
# and the answers still on their way (a fetch whose body has not been read yet).
COUNT_BLOBS = """
(() => {
  const live = new Set();
  const create = URL.createObjectURL.bind(URL), revoke = URL.revokeObjectURL.bind(URL);
  URL.createObjectURL = (o) => { const u = create(o); live.add(u); return u; };
  URL.revokeObjectURL = (u) => { live.delete(u); revoke(u); };
  window.liveBlobUrls = () => live;
  let coming = 0;  // requests made whose answer has not been read yet
  const unread = new Set(), done = (r) => { if (unread.delete(r)) coming--; };
  const fetch_ = window.fetch.bind(window), blob = Response.prototype.blob, json = Response.prototype.json;
  window.fetch = (url, options) => {
    coming++;
    return fetch_(url, options).then((r) => { unread.add(r); return r; }, (e) => { coming--; throw e; });
  };
  Response.prototype.blob = function () { return blob.call(this).finally(() => done(this)); };
  Response.prototype.json = function () { return json.call(this).finally(() => done(this)); };
  window.answersComing = () => coming;
})();
"""


@pytest.fixture(scope="module")
def session_server(search_collection, tiny_backbone):
    with serve(Settings(home=search_collection["home"], api_read_key=KEY, max_k=MAX_K, max_b=MAX_B),
               tiny_backbone) as url:
        yield url


@pytest.fixture(scope="module")
def spage(session_server):
    with browser_page(session_server) as opened:
        opened.add_init_script(COUNT_BLOBS)
        yield opened


def _open(page, server: str) -> None:
    """The page freshly loaded with the key entered: attributes and examples shown."""
    page.goto(server + "/")
    page.fill("#apikey", KEY)
    page.dispatch_event("#apikey", "change")
    page.locator("#apikey").blur()  # the box's own change event (a key new to the page) comes now, not later
    page.wait_for_selector("#attrs input[data-attribute=areaMM2]")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('pick an example')")
    page.wait_for_selector('#examples[aria-busy="false"] img')  # no example load still on its way


def _until_routed(page, held: list) -> None:
    """Let the page run until its request reached the test's route (`held` has it); Playwright
    delivers routes while the page is being waited on."""
    deadline = time.monotonic() + ROUTE_DEADLINE_S
    while not held:
        assert time.monotonic() < deadline, "the page's request did not reach the test's route"
        page.wait_for_timeout(20)


def _thumbnails_settled(page) -> None:
    """Wait until no answer is on its way and every one on the page has its image or its '(no image)' alt."""
    page.wait_for_function("() => window.answersComing() === 0"
                           " && [...document.querySelectorAll('#examples img, #query img, #grid img')]"
                           ".every(i => (i.getAttribute('src') && i.complete) || i.alt.endsWith('(no image)'))")


def _blobs_shown_and_held(page) -> tuple[int, int, int]:
    """(pictures on the page, those shown from a blob URL still held, blob URLs the page holds)."""
    _thumbnails_settled(page)
    return page.evaluate("""() => {
        const imgs = [...document.querySelectorAll('#examples img, #query img, #grid img')];
        return [imgs.length, imgs.filter(i => window.liveBlobUrls().has(i.getAttribute('src'))).length,
                window.liveBlobUrls().size];
    }""")


def test_a_long_session_holds_only_the_pictures_it_shows(spage, session_server, search_collection) -> None:
    # Before: every examples load kept its thumbnails' blob URLs for good (48 held for 16 shown
    # after three loads), and a search let go of the examples' URLs while they were still shown.
    _open(spage, session_server)
    spage.select_option("#mode", "image")
    spage.select_option("#split", "")
    for _ in range(2):
        spage.click("#load-examples")
        spage.wait_for_function("() => document.querySelector('#status').textContent.startsWith('pick an example')")
    pictures, shown, held = _blobs_shown_and_held(spage)
    assert pictures == shown == held == spage.locator("#examples img").count() > 0
    for record in search_collection["records"][:3]:
        spage.fill("#isic", record.isic_id)
        spage.dispatch_event("#isic", "input")
        assert "results" in _searched(spage)
    pictures, shown, held = _blobs_shown_and_held(spage)
    assert pictures == shown == held == spage.locator("#examples img").count() + 1 + spage.locator("#grid img").count()


def test_the_k_and_b_boxes_follow_the_server_limits(spage, session_server, search_collection) -> None:
    # Before: the k box said max 100 whatever the server took (here 7: k 8 to 100 were refused),
    # and the b box's 200 went with every search, so a server with max_b 150 refused them all.
    _open(spage, session_server)
    spage.wait_for_function(f"() => $('k').max === '{MAX_K}' && $('b').max === '{MAX_B}'")
    assert spage.input_value("#b") == str(MAX_B)  # the default 200, brought within the limit
    spage.fill("#isic", search_collection["records"][0].isic_id)
    spage.dispatch_event("#isic", "input")
    spage.select_option("#mode", "image")
    spage.select_option("#split", "")
    spage.fill("#k", str(MAX_K))
    assert f"{MAX_K} results" in _searched(spage)
    spage.fill("#k", str(MAX_K + 1))
    assert spage.evaluate("() => $('k').validity.rangeOverflow")  # the box itself says it is over
    assert f"between 1 and {MAX_K}" in _searched(spage)


def test_the_tile_and_diagnosis_filters_reach_the_search(spage, session_server, search_collection) -> None:
    # Before: the API took tbp_tile_type and target but the page had no control for either.
    _open(spage, session_server)
    records = {r.isic_id: r for r in search_collection["records"]}
    spage.fill("#isic", search_collection["records"][0].isic_id)
    spage.dispatch_event("#isic", "input")
    spage.select_option("#mode", "image")
    spage.select_option("#split", "")
    spage.uncheck("#exclude")
    spage.fill("#k", str(MAX_K))
    for tile, target in (("3D: XP", "1"), ("3D: white", "0")):
        spage.select_option("#tile", tile)
        spage.select_option("#target", target)
        assert "results" in _searched(spage)
        shown = [records[spage.locator("#grid .hit").nth(i).get_attribute("data-isic")]
                 for i in range(spage.locator("#grid .hit").count())]
        assert shown, (tile, target)
        assert all(r.metadata["tbp_tile_type"] == tile and str(r.metadata["target"]) == target for r in shown)
    assert spage.get_by_label("Tile lighting").count() == 1 and spage.get_by_label("Diagnosis").count() == 1


def test_a_throttled_click_keeps_the_results_and_says_when_to_retry(spage, session_server, search_collection) -> None:
    # Before: the refused click took over from the search still running (whose answer was then
    # dropped), and the status said "retry after 3 s (retry in 3 s)".
    first, uploaded = search_collection["records"][0], search_collection["records"][5]
    _open(spage, session_server)
    spage.select_option("#mode", "image")
    spage.select_option("#split", "")
    spage.fill("#k", "5")
    spage.fill("#isic", first.isic_id)
    spage.dispatch_event("#isic", "input")
    assert "results" in _searched(spage)
    spage.set_input_files("#file", {"name": "upload.jpg", "mimeType": "image/jpeg", "buffer": uploaded.image_bytes()})
    throttled = {"detail": "this client already has 2 uploads in the model (the limit is 2): retry after 3 s",
                 "rule": "rate_limit"}  # the server's own 429 (platform/api/throttle.py)
    held: list = []
    spage.route("**/search/upload", lambda route: held.append(route) if not held else route.fulfill(
        status=429, content_type="application/json", headers={"Retry-After": "3"}, body=json.dumps(throttled)))
    try:
        spage.click("#go")  # this search runs (held here, as if the model were busy with it)
        _until_routed(spage, held)
        spage.click("#go")  # the next quick click is refused
        spage.wait_for_function("() => document.querySelector('#status').textContent.startsWith('429')")
        text = spage.inner_text("#status")
        assert "retry" in text and "3 s" in text and text.count("retry") == 1, text
        assert first.isic_id in spage.inner_text("#query") and spage.locator("#grid .hit").count() == 5
        held[0].continue_()  # the search still running answers: its results are shown
        spage.wait_for_function("() => document.querySelector('#query').textContent.includes('uploaded image')")
    finally:
        spage.unroute("**/search/upload")
    assert spage.locator("#grid .hit").count() == 5 and "results" in spage.inner_text("#status")


def test_a_page_opened_while_the_server_was_down_works_once_it_is_back(spage, session_server) -> None:
    # Before: the attributes (and k/b limits) were asked for once, at load; with the server down
    # then, the key or the examples button later loaded the examples and said "pick an example",
    # but the attribute list stayed empty and every search said "choose at least one attribute".
    down = ("**/health", "**/attributes", "**/examples*")
    for path in down:
        spage.route(path, lambda route: route.abort())
    try:
        spage.goto(session_server + "/")
        spage.wait_for_function("() => document.querySelector('#status').textContent.includes('did not answer')")
    finally:
        for path in down:
            spage.unroute(path)
    spage.fill("#apikey", KEY)
    spage.dispatch_event("#apikey", "change")  # the server is back: entering the key tries again
    spage.wait_for_selector("#attrs input[data-attribute=areaMM2]")
    spage.wait_for_function("() => document.querySelector('#status').textContent.startsWith('pick an example')")
    spage.wait_for_function(f"() => $('k').max === '{MAX_K}'")
    assert spage.locator("#attrs input").count() == 16
    assert spage.locator("#range-field option").count() == 2 + 16  # "none", age and each attribute once



def test_an_older_examples_answer_does_not_replace_a_newer_one(spage, session_server) -> None:
    # Before: a key typed wrong then corrected asked twice; the first (401) answering last put
    # "401 ... enter the read key" under a page that had the right key and its examples.
    _open(spage, session_server)
    held: list = []
    spage.route("**/examples*", lambda route: held.append(route) if not held else route.continue_())
    try:
        spage.fill("#apikey", "wrong")
        spage.dispatch_event("#apikey", "change")
        _until_routed(spage, held)
        spage.fill("#apikey", KEY)
        spage.dispatch_event("#apikey", "change")
        # the right key's examples (and their pictures) have answered: only the held request is left
        spage.wait_for_function("() => window.answersComing() === 1")
        shown = spage.inner_text("#status")
        assert shown.startswith("pick an example"), shown
        held[0].continue_()
        spage.wait_for_function("() => window.answersComing() === 0")  # the wrong key's 401 has been read
    finally:
        spage.unroute("**/examples*")
    assert spage.inner_text("#status") == shown
    assert spage.get_attribute("#status", "class") != "error"


def test_range_bounds_without_a_field_are_not_dropped_silently(spage, session_server, search_collection) -> None:
    # Before: min/max typed with the range field left at "none" were left out of the search, and
    # the unfiltered results came back as if the filter had been applied.
    _open(spage, session_server)
    spage.fill("#isic", search_collection["records"][0].isic_id)
    spage.dispatch_event("#isic", "input")
    spage.select_option("#mode", "image")
    spage.select_option("#range-field", "")
    spage.fill("#range-gte", "1000000")
    text = _searched(spage)
    assert "range filter" in text and "no field" in text, text
    assert spage.get_attribute("#status", "class") == "error" and spage.locator("#grid .hit").count() == 0


def test_the_picked_example_stays_marked_when_the_examples_reload(spage, session_server) -> None:
    # Before: entering the key again (or the examples button) redrew the list without the mark,
    # while the isic box and the next search still used the picked lesion.
    _open(spage, session_server)
    spage.wait_for_selector("#examples[aria-busy=false] img")
    picked = spage.locator("#examples img").nth(1).get_attribute("data-isic")
    spage.locator("#examples img").nth(1).click()
    spage.dispatch_event("#apikey", "change")  # the examples load again
    spage.wait_for_function("(id) => { const list = document.querySelector('#examples[aria-busy=false]');"
                            " const marked = list ? [...list.querySelectorAll('img.picked')] : [];"
                            " return marked.length === 1 && marked[0].dataset.isic === id; }", arg=picked)
    assert spage.input_value("#isic") == picked


def test_the_mark_leaves_the_example_when_another_query_is_chosen(spage, session_server, search_collection) -> None:
    # Before: typing another id, or choosing a file, left the example marked as the query.
    _open(spage, session_server)
    spage.wait_for_selector("#examples[aria-busy=false] img")
    listed = {spage.locator("#examples img").nth(i).get_attribute("data-isic")
              for i in range(spage.locator("#examples img").count())}
    spage.locator("#examples img").nth(1).click()
    spage.fill("#isic", next(r.isic_id for r in search_collection["records"] if r.isic_id not in listed))
    assert spage.locator("#examples img.picked").count() == 0
    spage.locator("#examples img").nth(1).click()
    spage.set_input_files("#file", {"name": "upload.jpg", "mimeType": "image/jpeg",
                                    "buffer": search_collection["records"][2].image_bytes()})
    assert spage.locator("#examples img.picked").count() == 0


def _answering(code: int, body: str):  # noqa: ANN202 - a route handler (one argument: Playwright passes the request to a second)
    return lambda route: route.fulfill(status=code, content_type="application/json", body=body)


def test_a_5xx_that_names_its_own_next_step_gets_no_generic_advice(spage, session_server, search_collection) -> None:
    # Before: a 503 whose detail said what to run (an empty collection: "run `dermground ingest ...`
    # first") had "(retry in a moment; if it persists, tell the administrator)" appended. A 500
    # without a next step of its own keeps that advice.
    _open(spage, session_server)
    spage.select_option("#mode", "image")
    spage.select_option("#split", "")
    spage.fill("#isic", search_collection["records"][0].isic_id)
    spage.dispatch_event("#isic", "input")
    answers = {503: "collection 'lesions' does not exist; run `dermground ingest --data DIR --collection lesions` first",
               500: "internal error (id 0123456789ab); the server log has the details"}
    shown = {}
    for code, detail in answers.items():
        spage.route("**/search", _answering(code, json.dumps({"detail": detail})))
        try:
            spage.click("#go")
            spage.wait_for_function(f"() => document.querySelector('#status').textContent.startsWith('{code}:')")
            shown[code] = spage.inner_text("#status")
        finally:
            spage.unroute("**/search")
    assert shown[503] == f"503: {answers[503]}", shown
    assert shown[500] == f"500: {answers[500]} (retry in a moment; if it persists, tell the administrator)", shown
