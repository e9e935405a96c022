"""Odd requests at the API and the CLI: each one a 4xx (or a CLI error) naming the field, never a
500 or a traceback."""

from __future__ import annotations

import base64
import io
import shutil
import unicodedata
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from dermground.platform.api import create_app
from dermground.platform.cli import cli
from dermground.platform.settings import Settings

READ_JSON = {"X-API-Key": "read-requests", "Content-Type": "application/json"}


# A lesion stored under an id spelled decomposed (NFD, from a CSV written on macOS), which a user
# types composed (NFC): the same text on screen.
STORED_NFD, TYPED_NFC = unicodedata.normalize("NFD", "Läsion_7"), "Läsion_7"


@pytest.fixture(scope="module")
def served_home(search_collection, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the collection with one more lesion, STORED_NFD (a twin of the first record)."""
    from dermground.platform.settings import load_settings
    from dermground.platform.store import StorePoint, open_store, point_id

    home = tmp_path_factory.mktemp("served_home")
    shutil.copytree(search_collection["store_root"], home / "qdrant" / "lesions")
    with open_store(load_settings(home=home), "lesions") as store:
        source = store.retrieve([point_id(search_collection["records"][0].isic_id)], with_payload=True,
                                with_vectors=True)[0]
        store.upsert([StorePoint(point_id(STORED_NFD), source.vectors, {**source.payload, "isic_id": STORED_NFD})])
    return home


@pytest.fixture(scope="module")
def client(served_home, tiny_backbone):
    settings = Settings(home=served_home, api_read_key="read-requests", api_admin_key="admin-requests")
    with TestClient(create_app(settings, backbone=tiny_backbone), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize(("field", "filters"), [("sex", '"sex": ["\\ud800"]'),
                                                ("patient_id", '"patient_id": ["IP_1", "x\\udfff"]')])
def test_a_filter_value_that_is_not_unicode_text_is_a_422_naming_the_filter(
        client, search_collection, field: str, filters: str) -> None:
    """JSON may escape a lone surrogate (`"\\ud800"`), which no UTF-8 text holds: pydantic let it
    through in a filter's list, and the store's filter raised TypeError (UnicodeEncodeError), a 500."""
    query = search_collection["records"][0].isic_id
    response = client.post("/search", headers=READ_JSON,
                           content=f'{{"isic_id": "{query}", "filters": {{{filters}}}}}'.encode())
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"] and "Unicode" in response.json()["detail"]
    assert client.post("/search", headers=READ_JSON, json={"isic_id": query, "k": 2}).status_code == 200


@pytest.mark.parametrize(("args", "named"), [(["--filter", "sex=\udcff"], "sex"), ([], "isic_id")])
def test_a_cli_search_argument_that_is_not_utf8_is_an_error_naming_it(
        search_collection, fresh_cli_settings, args: list[str], named: str) -> None:
    """A shell argument holding bytes that are not UTF-8 reaches Python as a surrogate escape
    (`\\udcff`): `dermground search` ended in a UnicodeEncodeError/TypeError traceback."""
    query = search_collection["records"][0].isic_id if args else "ISIC_\udcff"
    result = CliRunner().invoke(cli, ["--home", str(search_collection["home"]), "search", "--id", query,
                                      "--mode", "image", "--exclude-patient", *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert named in result.output and "UTF-8" in result.output


def test_base64_wrapped_in_lines_as_the_base64_tool_writes_it_is_searched(client) -> None:
    """`base64 photo.jpg` and Python's base64.encodebytes wrap lines (MIME, RFC 2045), and browsers'
    atob() skips the line breaks: the API refused such an image as `image_base64 is not valid base64`.
    A character outside the alphabet is still refused, now naming it and where it is."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (150, 90, 60)).save(buffer, format="PNG")
    wrapped = base64.encodebytes(buffer.getvalue()).decode()
    assert "\n" in wrapped.strip()
    response = client.post("/search", headers=READ_JSON, json={"image_base64": wrapped, "k": 2})
    assert response.status_code == 200, response.text
    assert len(response.json()["hits"]) == 2
    url_safe = base64.urlsafe_b64encode(b"\xfb\xff" + buffer.getvalue()).decode()
    refused = client.post("/search", headers=READ_JSON, json={"image_base64": url_safe, "k": 2})
    assert refused.status_code == 422 and refused.json()["rule"] == "base64"
    assert "'-'" in refused.json()["detail"] and "position 0" in refused.json()["detail"]



def test_an_id_typed_in_the_other_unicode_normal_form_finds_the_stored_lesion(client) -> None:
    """An id stored decomposed (NFD) and typed composed (NFC): the API answered 404 'not in
    collection' for a lesion it lists among its hits. Now it finds the stored one, leaves it out of
    its own hits, and serves its image; an id stored in neither spelling is still a 404."""
    found = client.post("/search", headers=READ_JSON, json={"isic_id": TYPED_NFC, "k": 3})
    assert found.status_code == 200, found.text
    assert found.json()["query_isic_id"] == STORED_NFD
    assert STORED_NFD not in {hit["isic_id"] for hit in found.json()["hits"]}
    image = client.get(f"/images/{quote(TYPED_NFC, safe='')}", headers=READ_JSON)
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8", image.text
    assert client.post("/search", headers=READ_JSON, json={"isic_id": "Läsion_8"}).status_code == 404



def test_an_eval_out_folder_that_cannot_be_made_is_refused_before_any_work(search_collection, fresh_cli_settings,
                                                                           tmp_path) -> None:
    """`eval retrieval` / `eval predict --out` where the folder cannot be made (a file in its path,
    no permission): the whole evaluation ran (hours of searching or predicting on real data) and then
    ended in a NotADirectoryError / PermissionError traceback, its results lost. The folder is now
    made first, and failing that the command stops naming --out and why."""
    from dermground.eval.predictions import evaluate_predictions

    taken = tmp_path / "results.txt"
    taken.write_text("an analyst's notes\n")
    result = CliRunner().invoke(cli, ["--home", str(search_collection["home"]), "eval", "retrieval",
                                      "--collection", "lesions", "--methods", "random", "--k", "2",
                                      "--out", str(taken / "run1")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert str(taken / "run1") in result.output and "--out" in result.output
    with pytest.raises(ValueError, match="--out"):  # before reading the (missing) data and model
        evaluate_predictions(tmp_path / "no-data", tmp_path / "no-model", None, taken / "run1", progress=False)
    assert taken.read_text() == "an analyst's notes\n"
