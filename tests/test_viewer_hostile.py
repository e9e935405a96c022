"""The web viewer against hostile and failing input: ids and metadata that carry HTML, refusals of
every kind, searches that overlap. One served copy of the test collection (with one lesion whose id
and patient carry markup) and one browser page for the whole module."""

from __future__ import annotations

import shutil

import pytest

from dermground.platform.settings import Settings
from tests.test_viewer import KEY, browser_page, serve

pytestmark = pytest.mark.browser

# A file name the reader accepts as an isic_id (no separator, not hidden) that is also markup.
MARKUP_ID = '<img src=x onerror="document.body.dataset.pwned=1">'
MARKUP_PATIENT = '<b onmouseover="document.body.dataset.pwned=2">P</b>'


@pytest.fixture(scope="module")
def hostile_home(search_collection, tmp_path_factory):
    """A copy of the test collection plus one lesion whose isic_id and patient_id are HTML."""
    from dermground.platform.store import StorePoint, point_id
    from dermground.platform.store.edge import EdgeStore

    home = tmp_path_factory.mktemp("viewer_hostile") / "home"
    shutil.copytree(search_collection["home"], home)
    source = search_collection["records"][0].isic_id
    with EdgeStore(home / "qdrant" / search_collection["collection"], search_collection["collection"]) as store:
        original = store.retrieve([point_id(source)], with_payload=True, with_vectors=True)[0]
        payload = {**original.payload, "isic_id": MARKUP_ID, "patient_id": MARKUP_PATIENT}
        store.upsert([StorePoint(point_id(MARKUP_ID), original.vectors, payload)])
    return home


@pytest.fixture(scope="module")
def hostile_server(hostile_home, tiny_backbone):
    with serve(Settings(home=hostile_home, api_read_key=KEY), tiny_backbone) as url:
        yield url


@pytest.fixture(scope="module")
def hpage(hostile_server):
    with browser_page(hostile_server) as opened:
        yield opened


def _open(page, server: str) -> None:
    page.goto(server + "/")
    page.fill("#apikey", KEY)
    page.dispatch_event("#apikey", "change")
    # Leave the box as a user does: when the key is new to the page, the box's own change event (and
    # its example load) comes now, not when a test later moves the focus (with held /examples routes).
    page.locator("#apikey").blur()
    page.wait_for_selector("#attrs input[data-attribute=areaMM2]")
    # The page load's and the key change's example loads have answered: none re-draws the list
    # (or writes the status) while the test acts.
    page.wait_for_selector('#examples[aria-busy="false"] img')


def _searched(page) -> str:
    """Click Search and wait until the status leaves 'searching…'; the status text."""
    page.click("#go")
    page.wait_for_function("() => !document.querySelector('#status').textContent.startsWith('searching')")
    return page.inner_text("#status")


def test_markup_in_an_id_or_a_patient_is_shown_as_text(hpage, hostile_server, search_collection) -> None:
    _open(hpage, hostile_server)
    hpage.select_option("#mode", "image")
    hpage.select_option("#split", "")
    hpage.uncheck("#exclude")
    # its twin (same vectors) finds the markup lesion first; then the markup lesion as the query
    for query, shown in ((search_collection["records"][0].isic_id, "#grid"), (MARKUP_ID, "#query")):
        hpage.fill("#isic", query)
        hpage.dispatch_event("#isic", "input")
        assert "results" in _searched(hpage)
        hpage.hover("#grid .hit >> nth=0")
        assert hpage.evaluate("() => document.body.dataset.pwned") is None
        # no element made from the text: only the query's and the hits' own images
        assert hpage.locator("#query img, #grid img").count() == 1 + hpage.locator("#grid .hit").count()
        assert MARKUP_ID in hpage.inner_text(shown)  # the id, shown as the characters it is
        if shown == "#grid":
            assert MARKUP_PATIENT in hpage.inner_text(shown)


def test_refusals_read_as_sentences_with_the_next_step(hpage, hostile_server, search_collection) -> None:
    _open(hpage, hostile_server)
    hpage.fill("#isic", search_collection["records"][0].isic_id)
    hpage.dispatch_event("#isic", "input")
    hpage.select_option("#mode", "image")
    hpage.fill("#k", "")  # k left empty: a validation failure, its detail a list
    status = _searched(hpage)
    assert status.startswith("422: k: ") and "[" not in status and "{" not in status, status
    assert hpage.get_attribute("#status", "class") == "error"
    hpage.fill("#k", "5")
    # no answer at all (the connection cut): a sentence, not the browser's bare "Failed to fetch"
    hpage.route("**/search", lambda route: route.abort())
    try:
        status = _searched(hpage)
    finally:
        hpage.unroute("**/search")
    assert "did not answer" in status and "dermground serve" in status, status
    hpage.fill("#apikey", "wrong")
    hpage.dispatch_event("#apikey", "change")
    status = _searched(hpage)
    assert status.startswith("401") and "API key box" in status, status


def test_an_older_search_answering_late_does_not_replace_newer_results(hpage, hostile_server, search_collection,
                                                                        tmp_path) -> None:
    _open(hpage, hostile_server)
    first, second = search_collection["records"][0], search_collection["records"][1]
    hpage.select_option("#mode", "image")
    hpage.select_option("#split", "")
    hpage.uncheck("#exclude")
    held = []  # the first search's request (picked by its body), answered only after the second search is shown
    hpage.route("**/search", lambda route: held.append(route) if first.isic_id in (route.request.post_data or "")
                else route.continue_())
    hpage.evaluate(_COUNT_ANSWERS_READ)
    try:
        for record in (first, second):
            hpage.fill("#isic", record.isic_id)
            hpage.dispatch_event("#isic", "input")
            hpage.click("#go")
        hpage.wait_for_function("() => document.querySelector('#status').textContent.includes('results')")
        assert second.isic_id in hpage.inner_text("#query")
        held[0].continue_()
        hpage.wait_for_function("() => window.answersRead['/search'] === 2")  # the late answer reached the page
    finally:
        hpage.unroute("**/search")
    assert second.isic_id in hpage.inner_text("#query") and first.isic_id not in hpage.inner_text("#query")
    assert "results" in hpage.inner_text("#status")


def test_examples_loading_late_do_not_replace_a_search_status(hpage, hostile_server, search_collection) -> None:
    # The key box's change reloads the examples; a search clicked before they answer owns the status.
    _open(hpage, hostile_server)
    held = []
    hpage.route("**/examples*", lambda route: held.append(route))
    try:
        hpage.fill("#apikey", KEY)
        hpage.dispatch_event("#apikey", "change")
        _until(hpage, lambda: held, "the key change did not ask for the examples")
        hpage.fill("#isic", search_collection["records"][0].isic_id)
        hpage.dispatch_event("#isic", "input")
        hpage.select_option("#mode", "image")
        hpage.fill("#k", "5")
        status = _searched(hpage)
        assert "results" in status, status
        held[0].continue_()
        # _open's list is still shown: wait for the held load's own answer (the newest load, it ends the busy state)
        hpage.wait_for_selector('#examples[aria-busy="false"] img')
    finally:
        hpage.unroute("**/examples*")
    assert hpage.inner_text("#status") == status


def _upload(page, record) -> None:
    """Choose `record`'s image in the page's file box, as a user picking upload.jpg from disk."""
    page.set_input_files("#file", {"name": "upload.jpg", "mimeType": "image/jpeg", "buffer": record.image_bytes()})


def test_typing_an_isic_id_after_an_upload_searches_that_lesion(hpage, hostile_server, search_collection) -> None:
    _open(hpage, hostile_server)
    _upload(hpage, search_collection["records"][3])
    typed = search_collection["records"][1].isic_id
    hpage.fill("#isic", typed)
    hpage.select_option("#mode", "image")
    assert "results" in _searched(hpage)
    assert typed in hpage.inner_text("#query") and "uploaded image" not in hpage.inner_text("#query")
    assert hpage.input_value("#file") == ""  # the page no longer offers the upload as the query


def test_an_empty_b_box_leaves_b_to_the_server(hpage, hostile_server, search_collection) -> None:
    # Before: the empty box was sent as b = 0 and every search, direct ones too, got a 422 about b.
    _open(hpage, hostile_server)
    hpage.fill("#isic", search_collection["records"][0].isic_id)
    hpage.fill("#b", "")
    for mode in ("image_text", "hierarchical"):
        hpage.select_option("#mode", mode)
        assert "results" in _searched(hpage), mode


def test_a_failed_prediction_of_the_upload_is_said_beside_the_results(hpage, hostile_server, search_collection) -> None:
    # Before: the results came, and the query's values showed "–" with no word of why.
    _open(hpage, hostile_server)
    _upload(hpage, search_collection["records"][2])
    hpage.select_option("#mode", "image_text")
    hpage.route("**/predict", lambda route: route.fulfill(  # the server's answer when its model work is full
        status=503, content_type="application/json", headers={"Retry-After": "5"},
        body='{"detail": "the model is busy", "rule": "model_busy"}'))
    try:
        text = _searched(hpage)
    finally:
        hpage.unroute("**/predict")
    assert "results" in text and hpage.locator("#grid .hit").count() > 0
    assert "the uploaded image's attribute values could not be predicted: 503" in text and "model is busy" in text


def test_hit_values_carry_their_units(hpage, hostile_server, search_collection) -> None:
    _open(hpage, hostile_server)
    records = {r.isic_id: r for r in search_collection["records"]}
    hpage.fill("#isic", search_collection["records"][0].isic_id)
    hpage.select_option("#mode", "image_text")
    hpage.check("#attrs input[data-attribute=norm_color]")  # areaMM2 (mm²) is checked already
    assert "results" in _searched(hpage)
    card = hpage.locator("#grid .hit").nth(0)
    hit = records.get(card.get_attribute("data-isic") or "") or records[search_collection["records"][0].isic_id]
    text = card.inner_text()
    assert f"areaMM2 {hit.attributes['areaMM2']:.1f} mm²" in text, text
    assert f"norm_color {hit.attributes['norm_color']:.2f} (0-10)" in text, text


def test_a_range_filter_reaches_the_search(hpage, hostile_server, search_collection) -> None:
    _open(hpage, hostile_server)
    records = {r.isic_id: r for r in search_collection["records"]}
    areas = sorted(r.attributes["areaMM2"] for r in search_collection["records"])
    low, high = areas[len(areas) // 4], areas[len(areas) // 2]  # a quarter of the lesions lie inside
    hpage.fill("#isic", search_collection["records"][0].isic_id)
    hpage.select_option("#mode", "image")
    hpage.select_option("#split", "")
    hpage.fill("#k", "20")
    hpage.uncheck("#exclude")
    hpage.select_option("#range-field", "areaMM2")
    hpage.fill("#range-gte", str(low))
    hpage.fill("#range-lte", str(high))
    assert "results" in _searched(hpage)
    shown = [hpage.locator("#grid .hit").nth(i).get_attribute("data-isic") for i in range(hpage.locator("#grid .hit").count())]
    inside = [i for i, r in records.items() if low <= r.attributes["areaMM2"] <= high]
    assert shown and all(low <= records[i].attributes["areaMM2"] <= high for i in shown if i in records)
    # the range, not k, bounds the list (the query itself is left out; the markup twin may join)
    assert len(inside) - 1 <= len(shown) <= len(inside) + 1 < 20


def test_the_page_works_from_the_keyboard_with_labelled_controls(hpage, hostile_server) -> None:
    _open(hpage, hostile_server)
    assert hpage.get_by_label("API key").count() == 1
    assert hpage.get_by_role("group", name="Attributes").count() == 1
    assert hpage.get_by_role("status").count() == 1  # messages are announced to screen readers
    hpage.click("#load-examples")
    # the list this click asked for is in (an earlier one could still replace it, and the focus with it)
    hpage.wait_for_selector("#examples[aria-busy=false] img")
    hpage.focus("#load-examples")
    hpage.keyboard.press("Tab")  # the first example is the next stop, and Enter picks it
    hpage.keyboard.press("Enter")
    first = hpage.locator("#examples img").nth(0)
    assert hpage.input_value("#isic") == first.get_attribute("data-isic")
    # the example's alt text comes with its thumbnail (fetched after the list): wait for it, with playwright's deadline
    hpage.wait_for_function("() => !!document.querySelector('#examples img').alt")
    assert first.get_attribute("alt")
    hpage.select_option("#mode", "image")
    held = []  # the thumbnails, held back: while they load no card may show a broken-image icon
    hpage.route("**/images/**", lambda route: held.append(route))
    try:
        hpage.focus("#go")
        hpage.keyboard.press("Enter")
        hpage.wait_for_selector("#grid .hit")
        assert hpage.evaluate("() => [...document.querySelectorAll('#grid img')].every(i => i.getAttribute('src') || !i.alt)")
    finally:
        for route in held:
            route.continue_()
        hpage.unroute("**/images/**")
    # every picture is named once it is there
    hpage.wait_for_function("() => [...document.querySelectorAll('#grid .hit img')].every(i => i.naturalWidth > 0)")
    assert all(hpage.locator("#grid .hit img").nth(i).get_attribute("alt")
               for i in range(hpage.locator("#grid .hit img").count()))


def test_entering_the_key_loads_the_examples(hpage, hostile_server) -> None:
    hpage.goto(hostile_server + "/")
    hpage.evaluate("() => localStorage.removeItem('dermground.key')")
    hpage.reload()
    hpage.wait_for_function("() => document.querySelector('#status').textContent.startsWith('401')")
    hpage.fill("#apikey", KEY)
    hpage.dispatch_event("#apikey", "change")
    hpage.wait_for_selector("#examples img")  # without another click
    assert hpage.get_attribute("#status", "class") != "error"
    assert "example" in hpage.inner_text("#status")


def _until(page, condition, what: str, deadline_s: float = 60.0) -> None:
    """Let playwright deliver its events (route handlers run then) until `condition()` holds."""
    import time

    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"{what} within {deadline_s:.0f} s"
        page.wait_for_timeout(20)


# How many answers of each path the page has read (its JSON parsed), as answersRead[path]. The code
# awaiting that JSON runs in the same microtask checkpoint, so a wait_for_function that sees the
# count (a later task) comes after the page has acted on the answer: an exact condition, not a pause.
_COUNT_ANSWERS_READ = """() => {
  window.answersRead = {};
  const json = Response.prototype.json;
  Response.prototype.json = async function () {
    try { return await json.call(this); } finally {
      const path = new URL(this.url).pathname;
      window.answersRead[path] = (window.answersRead[path] || 0) + 1;
    }
  };
}"""


def test_examples_asked_with_an_older_key_answering_late_do_not_replace_the_newer_keys_refusal(
        hpage, hostile_server) -> None:
    # Before: the page load's (or the old key's) examples answered after the wrong key's 401 and
    # wrote "pick an example or upload an image" over it (test_viewer.py::test_wrong_key_shows_the_error
    # read that under load). Every examples request is held here and answered in the late order.
    held = []
    hpage.route("**/examples*", lambda route: held.append(route))
    try:
        hpage.goto(hostile_server + "/")
        hpage.evaluate(_COUNT_ANSWERS_READ)
        hpage.fill("#apikey", KEY)
        hpage.dispatch_event("#apikey", "change")  # the page load's examples and these: both with the right key
        _until(hpage, lambda: len(held) == 2, "the page load and the key change did not both ask for the examples")
        hpage.fill("#apikey", "wrong")
        hpage.dispatch_event("#apikey", "change")
        _until(hpage, lambda: len(held) == 3, "the wrong key did not ask for the examples")
        held[2].continue_()
        hpage.wait_for_function("() => window.answersRead['/examples'] === 1")
        refused = hpage.inner_text("#status")
        assert refused.startswith("401") and "API key box" in refused, refused
        for route in held[:2]:
            route.continue_()
        hpage.wait_for_function("() => window.answersRead['/examples'] === 3")  # both late answers read
    finally:
        hpage.unroute("**/examples*")
    assert hpage.inner_text("#status") == refused
    assert hpage.locator("#examples img").count() == 0  # the old key's list is not offered under the new key
