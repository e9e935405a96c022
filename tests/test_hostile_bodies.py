"""Hostile request bodies at the API: JSON that pydantic's lax mode would read as something else,
bodies that are not text, and bodies at the edge of the size limits. Each is answered with a 4xx
naming its rule and field, or served correctly; never a 500 or a silent reading."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dermground.platform.api import create_app
from dermground.platform.api.errors import ErrorBody
from dermground.platform.api.images import UploadTooLargeError, read_upload_bytes
from dermground.platform.settings import Settings

READ, ADMIN = "read-bodies", "admin-bodies"
MAX_UPLOAD = 3_000_000  # big enough that wrapping its base64 adds more than the body limit's 64 KiB for the fields
READ_JSON = {"X-API-Key": READ, "Content-Type": "application/json"}


def _png(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (150, 90, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(search_collection, tiny_backbone):
    settings = Settings(home=search_collection["home"], api_read_key=READ, api_admin_key=ADMIN,
                        max_upload_bytes=MAX_UPLOAD)
    with TestClient(create_app(settings, backbone=tiny_backbone), raise_server_exceptions=False) as test_client:
        yield test_client


def _refused(response, field: str) -> None:
    assert response.status_code == 422, response.text
    body = ErrorBody.model_validate(response.json())
    assert (body.rule, body.field) == ("validation", field), response.text
    assert "boolean" in body.detail[0].msg  # type: ignore[union-attr]


# (field as named, JSON body with a boolean, the same body with the number it was read as)
_SEARCH_BOOLEANS = [
    ("k", {"k": True}, {"k": 1}),
    ("b", {"mode": "hierarchical", "attributes": ["areaMM2"], "k": 1, "b": True},
     {"mode": "hierarchical", "attributes": ["areaMM2"], "k": 1, "b": 1}),
    ("filters.ranges.areaMM2.gte", {"filters": {"ranges": {"areaMM2": {"gte": False}}}},
     {"filters": {"ranges": {"areaMM2": {"gte": 0}}}}),
    ("filters.ranges.areaMM2.lte", {"filters": {"ranges": {"areaMM2": {"lte": True}}}},
     {"filters": {"ranges": {"areaMM2": {"lte": 1000}}}}),
    ("filters.target", {"filters": {"target": False}}, {"filters": {"target": 0}}),
]


@pytest.mark.parametrize(("field", "with_boolean", "with_number"), _SEARCH_BOOLEANS,
                         ids=[case[0] for case in _SEARCH_BOOLEANS])
def test_a_boolean_where_a_search_number_belongs_is_a_422_naming_the_field(
        client, search_collection, field: str, with_boolean: dict, with_number: dict) -> None:
    """pydantic's lax mode read `"k": true` as k=1 (and false as 0, for b, a range bound and the
    target code alike), so a client's mistake searched silently for something else."""
    query = {"isic_id": search_collection["records"][0].isic_id}
    _refused(client.post("/search", headers=READ_JSON, content=json.dumps({**query, **with_boolean})), field)
    assert client.post("/search", headers=READ_JSON, json={**query, **with_number}).status_code == 200


def test_a_boolean_in_the_upload_form_and_in_sql_is_a_422_naming_the_field(client) -> None:
    upload = client.post("/search/upload", headers={"X-API-Key": READ}, files={"file": ("q.png", _png())},
                         data={"request": json.dumps({"k": True})})
    _refused(upload, "request.k")
    sql = client.post("/sql", headers={"X-API-Key": ADMIN}, json={"query": "SELECT 1 AS one", "max_rows": True})
    _refused(sql, "max_rows")
    assert client.post("/sql", headers={"X-API-Key": ADMIN},
                       json={"query": "SELECT 1 AS one", "max_rows": 1}).json()["rows"] == [[1]]


@pytest.mark.parametrize(("content", "said"), [
    (b'{"isic_id": "\xff"}', "not UTF-8 text (byte 0xff at position 13)"),  # Latin-1 'ÿ', or a binary file
    (b'{"isic_id": "ISIC_1", "filters": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"isic_id": "ISIC_1", "k": 1' + b"0" * 5000 + b"}", "4300 digits"),
], ids=["not-utf8", "deep-nesting", "huge-number"])
def test_a_json_body_that_cannot_be_read_is_a_422_naming_the_body_like_any_other_non_json(
        client, content: bytes, said: str) -> None:
    """FastAPI answered these with a 400 "There was an error parsing the body": no rule, no field,
    no reason, where every other refusal (`{nope` included) names them."""
    response = client.post("/search", headers=READ_JSON, content=content)
    assert response.status_code == 422, response.text
    body = ErrorBody.model_validate(response.json())
    assert (body.rule, body.field) == ("validation", "body")
    assert said in body.detail[0].msg and "set_int_max_str_digits" not in response.text  # type: ignore[union-attr]


@pytest.mark.parametrize("path", ["/search/upload", "/predict"])
def test_a_multipart_body_that_cannot_be_split_is_a_400_naming_the_rule(client, path: str) -> None:
    for content_type, content in [("multipart/form-data", b"--x\r\n"),  # no boundary declared
                                  ("multipart/form-data; boundary=xyz", b"not a part at all")]:
        response = client.post(path, headers={"X-API-Key": READ, "Content-Type": content_type}, content=content)
        assert response.status_code == 400, response.text
        body = ErrorBody.model_validate(response.json())
        assert (body.rule, body.field) == ("multipart", "body")
        assert str(body.detail).startswith("the multipart body cannot be read: ")


def _wrapped(data: bytes, line: int, newline: str) -> str:
    text = base64.b64encode(data).decode()
    return newline.join(text[i:i + line] for i in range(0, len(text), line))


def test_an_image_just_under_the_limit_in_wrapped_base64_is_searched_and_a_larger_one_names_the_image_limit(
        client) -> None:
    """The body limit left 64 KiB beside the image's base64 for everything else, and wrapping that
    base64 in lines (`base64` and Python's encodebytes: 76 characters and \\n; PEM and openssl: 64
    and \\r\\n) adds 2-6%: an image just under the image limit was refused as `body_limit` before
    its size was looked at. It is searched now; a body over the limit says which image size fits."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()  # noise, stored uncompressed: 2,990,068 bytes
    Image.fromarray(rng.integers(0, 256, (998, 998, 3), dtype=np.uint8)).save(buffer, format="PNG", compress_level=0)
    photo = buffer.getvalue()
    assert MAX_UPLOAD - 20_000 < len(photo) <= MAX_UPLOAD
    for text in (base64.encodebytes(photo).decode(), _wrapped(photo, 64, "\r\n")):
        response = client.post("/search", headers=READ_JSON, content=json.dumps({"image_base64": text, "k": 2}))
        assert response.status_code == 200, response.text
        assert len(response.json()["hits"]) == 2
    over_image = client.post("/search", headers=READ_JSON,  # the body fits, the image does not: its own limit
                             content=json.dumps({"image_base64": _wrapped(photo + bytes(20_000), 76, "\n")}))
    assert over_image.status_code == 413, over_image.text
    assert (over_image.json()["rule"], over_image.json()["field"]) == ("byte_limit", "image_base64")
    over_body = client.post("/search", headers=READ_JSON,
                            content=json.dumps({"image_base64": base64.b64encode(photo * 2).decode()}))
    assert (over_body.status_code, over_body.json()["rule"]) == (413, "body_limit"), over_body.text
    assert f"one image of at most {MAX_UPLOAD} bytes" in over_body.json()["detail"]


@pytest.mark.parametrize("path", ["/search/upload", "/predict"])
def test_a_form_field_sent_twice_is_a_422_naming_it_not_one_of_them_picked(client, path: str) -> None:
    """Two images in `file` (a form that allows several, a script's loop): the endpoint answered for
    the last one and said nothing, so a client could not know which image its results were for. The
    same for two `request` parameter sets. Either is refused naming the field; one of each is served."""
    two_images = [("file", ("a.png", _png((64, 64)))), ("file", ("b.png", _png((80, 64))))]
    refused = client.post(path, headers={"X-API-Key": READ}, files=two_images)
    assert refused.status_code == 422, refused.text[:300]
    body = ErrorBody.model_validate(refused.json())
    assert (body.rule, body.field) == ("repeated_field", "file") and "2 " in str(body.detail)
    if path == "/search/upload":
        twice = client.post(path, headers={"X-API-Key": READ}, files=[("file", ("a.png", _png()))],
                            data={"request": [json.dumps({"k": 1}), json.dumps({"k": 3})]})
        assert (twice.status_code, twice.json()["field"]) == (422, "request"), twice.text[:300]
    served = client.post(path, headers={"X-API-Key": READ}, files=two_images[:1])
    assert served.status_code == 200, served.text


def test_a_refused_sql_query_names_the_rule_and_the_field(client) -> None:
    """POST /sql's refusals (the read-only guard, DuckDB's own error) were the one 400 with neither a
    rule nor a field: a client could not tell them from a malformed request."""
    for query in ("DROP TABLE lesions", "SELECT 1; SELECT 2", "SELECT no_such_column FROM lesions"):
        response = client.post("/sql", headers={"X-API-Key": ADMIN}, json={"query": query})
        assert response.status_code == 400, response.text
        body = ErrorBody.model_validate(response.json())
        assert (body.rule, body.field) == ("sql", "query") and body.detail, response.text


@pytest.mark.parametrize("path", ["/search/upload", "/predict"])
def test_an_upload_over_the_limit_is_refused_with_its_real_size_not_the_limit_plus_one(client, path: str) -> None:
    """The upload was read up to the limit plus one byte and that count was reported as its size:
    a file of MAX_UPLOAD + 1,000 bytes "had" MAX_UPLOAD + 1. The refusal names the file's size now."""
    oversized = _png() + bytes(MAX_UPLOAD + 1_000 - len(_png()))
    response = client.post(path, headers={"X-API-Key": READ}, files={"file": ("q.png", oversized, "image/png")})
    assert response.status_code == 413, response.text
    body = ErrorBody.model_validate(response.json())
    assert (body.rule, body.field) == ("byte_limit", "file"), response.text
    assert f"the image has {MAX_UPLOAD + 1_000} bytes, over the limit of {MAX_UPLOAD}" in str(body.detail), response.text


def test_an_upload_of_unknown_size_over_the_limit_is_said_to_be_more_than_the_limit() -> None:
    """Where the size is not known (no form part size), the count read is the limit plus one: the
    refusal says "more than" the limit, not that wrong number."""
    with pytest.raises(UploadTooLargeError) as refused:
        read_upload_bytes(io.BytesIO(bytes(5_002)), 4_096)
    assert (str(refused.value), refused.value.rule) == (
        "the image has more than 4096 bytes, over the limit of 4096", "byte_limit")
    assert read_upload_bytes(io.BytesIO(bytes(4_096)), 4_096) == bytes(4_096)


SQL_ANSWER_CAP = 4_096


@pytest.fixture(scope="module")
def capped_sql_client(tmp_path_factory, tiny_backbone):
    # A home of its own: the module's client holds the test collection's embedded store.
    settings = Settings(home=tmp_path_factory.mktemp("capped_sql"), api_read_key=READ, api_admin_key=ADMIN,
                        sql_max_answer_bytes=SQL_ANSWER_CAP)
    with TestClient(create_app(settings, backbone=tiny_backbone), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("query", [
    "SELECT repeat('x', 100000) AS text",  # one huge cell
    "SELECT range AS n, repeat('y', 100) AS text FROM range(1000000)",  # many rows, each small
    "SELECT INTERVAL 1 DAY AS i, repeat('z', 100000) AS text",  # the path that converts intervals
], ids=["one-cell", "many-rows", "interval"])
def test_a_sql_answer_over_the_byte_cap_is_a_400_naming_the_cap_and_the_way_out(capped_sql_client, query: str) -> None:
    """POST /sql capped rows, not bytes: SELECT repeat('x', 100000000) was a 100 MB answer with 200.
    An answer over DERMGROUND_SQL_MAX_ANSWER_BYTES is refused now, reading stopped at the row that
    passed it, and the refusal names the cap and the CLI export."""
    response = capped_sql_client.post("/sql", headers={"X-API-Key": ADMIN}, json={"query": query})
    assert response.status_code == 400, response.text[:300]
    body = ErrorBody.model_validate(response.json())
    assert (body.rule, body.field) == ("sql_answer_limit", "query"), response.text[:300]
    detail = str(body.detail)
    assert f"limit of {SQL_ANSWER_CAP} bytes" in detail and "--out" in detail and "LIMIT" in detail, detail
    passed_at = int(detail.split("passed at row ")[1].split(":")[0])
    assert passed_at <= SQL_ANSWER_CAP // 100, detail  # stopped near the cap, not after 10,000 rows


def test_a_sql_answer_under_the_byte_cap_is_served_whole(capped_sql_client) -> None:
    """The cap counts only rows that are sent: a LIMIT that fits is served, and the row read past
    max_rows (to learn that the answer is truncated) does not count towards it."""
    fits = capped_sql_client.post("/sql", headers={"X-API-Key": ADMIN},
                                  json={"query": "SELECT repeat('x', 3000) AS text"})
    assert fits.status_code == 200, fits.text[:300]
    assert fits.json()["rows"] == [["x" * 3000]]
    truncated = capped_sql_client.post("/sql", headers={"X-API-Key": ADMIN}, json={
        "query": "SELECT repeat('x', 3000) AS text FROM range(2)", "max_rows": 1})
    assert truncated.status_code == 200, truncated.text[:300]
    assert (truncated.json()["rows"], truncated.json()["truncated"]) == ([["x" * 3000]], True)
