"""The HTTP API over a small collection: auth, every endpoint, and the right 4xx for bad input."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dermground.platform.api import create_app
from dermground.platform.api.images import decode_upload
from dermground.platform.catalog import Catalog
from dermground.platform.settings import Settings

READ, ADMIN = "read-key-123", "admin-key-456"
R = {"X-API-Key": READ}
A = {"X-API-Key": ADMIN}
ANALYST = "analyst-key-789"
AN = {"X-API-Key": ANALYST}
MAX_UPLOAD = 300_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def settings(search_collection) -> Settings:
    return Settings(home=search_collection["home"], api_read_key=READ, api_admin_key=ADMIN, api_analyst_key=ANALYST,
                    max_upload_bytes=MAX_UPLOAD, max_image_pixels=MAX_PIXELS, max_k=50, max_b=100)


@pytest.fixture(scope="module")
def client(settings, search_collection, tiny_backbone):
    rows = [{"isic_id": r.isic_id, "patient_id": r.patient_id, "split": r.split, "collection": "lesions",
             **r.attributes} for r in search_collection["records"]]
    Catalog(settings.catalog_dir).append("lesions", rows, name="api-test")
    with TestClient(create_app(settings, backbone=tiny_backbone)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def jpeg(search_collection) -> bytes:
    return search_collection["records"][0].image_bytes()


@pytest.fixture(scope="module")
def ids(search_collection) -> list[str]:
    return [r.isic_id for r in search_collection["records"]]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 150, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def _no_traceback(response) -> None:
    text = response.text
    assert "Traceback" not in text and 'File "' not in text and ".py" not in text, text[:500]


def test_health_needs_no_key_and_reports_the_collection(client, ids) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["points"] == len(ids) and response.json()["auth"] == "keys"


def test_attributes_lists_the_16(client) -> None:
    body = client.get("/attributes").json()
    assert len(body) == 16 and body[0]["name"] == "areaMM2" and body[0]["vector_name"] == "q_areaMM2"


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_read_endpoints_need_the_key(client, ids, headers) -> None:
    for response in (client.post("/search", json={"isic_id": ids[0]}, headers=headers),
                     client.get(f"/images/{ids[0]}", headers=headers),
                     client.get("/examples", headers=headers)):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "X-API-Key"


def test_read_and_admin_keys_open_search(client, ids) -> None:
    for headers in (R, A):
        response = client.post("/search", json={"isic_id": ids[0], "k": 3}, headers=headers)
        assert response.status_code == 200 and len(response.json()["hits"]) == 3


def test_sql_needs_the_admin_key_and_runs_a_select(client, ids) -> None:
    assert client.post("/sql", json={"query": "SELECT 1"}).status_code == 401
    assert client.post("/sql", json={"query": "SELECT 1"}, headers=R).status_code == 401
    response = client.post("/sql", json={"query": "SELECT count(*) AS n FROM lesions"}, headers=A)
    assert response.status_code == 200
    assert response.json() == {"columns": ["n"], "rows": [[len(ids)]], "truncated": False}


@pytest.mark.parametrize("query", ["DELETE FROM lesions", "COPY (SELECT 1) TO 'x.csv'", "SELECT 1; SELECT 2",
                                   "CREATE TABLE t AS SELECT 1"])
def test_sql_that_writes_is_400(client, query) -> None:
    response = client.post("/sql", json={"query": query}, headers=A)
    assert response.status_code == 400, response.text
    _no_traceback(response)


def test_search_by_isic_id_returns_hits_with_values_and_no_server_paths(client, ids) -> None:
    body = client.post("/search", headers=R, json={
        "isic_id": ids[2], "mode": "image_text", "attributes": ["areaMM2"], "k": 5,
        "filters": {"split": "train", "ranges": {"age_approx": {"gte": 0}}}, "exclude_query_patient": True}).json()
    assert "hits" in body, body
    assert body["query_isic_id"] == ids[2] and body["query_attributes"]["areaMM2"] is not None
    assert not body["model_ran"] and body["hits"]
    for hit in body["hits"]:
        assert hit["payload"]["split"] == "train" and hit["payload"]["patient_id"] != body["query_patient_id"]
        assert "image_ref" not in hit["payload"] and hit["attributes"]["areaMM2"] is not None
        assert hit["thumbnail_url"] == f"/images/{hit['isic_id']}?size=thumb"


def test_search_by_base64_and_by_multipart_upload_agree(client, jpeg, ids) -> None:
    params = {"mode": "hierarchical", "attributes": ["areaMM2", "deltaL"], "k": 4, "b": 20}
    by_json = client.post("/search", headers=R, json={**params, "image_base64": base64.b64encode(jpeg).decode()})
    assert by_json.status_code == 200, by_json.text
    by_form = client.post("/search/upload", headers=R, files={"file": ("q.jpg", jpeg, "image/jpeg")},
                          data={"request": json.dumps(params)})
    assert by_form.status_code == 200, by_form.text
    assert [h["isic_id"] for h in by_json.json()["hits"]] == [h["isic_id"] for h in by_form.json()["hits"]]
    assert by_json.json()["hits"][0]["isic_id"] == ids[0]  # the query image is in the collection
    assert set(by_json.json()["hits"][0]["attribute_scores"]) == {"areaMM2", "deltaL"}


def test_examples_and_images(client, ids) -> None:
    examples = client.get("/examples?n=4", headers=R).json()
    assert len(examples) == 4 and all(e["isic_id"] in ids for e in examples)
    thumb = client.get(f"/images/{ids[0]}?size=thumb", headers=R)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 160
    full = client.get(f"/images/{ids[0]}?size=full", headers=R)
    assert Image.open(io.BytesIO(full.content)).size == (112, 112)
    assert client.get("/images/ISIC_9999999", headers=R).status_code == 404
    assert client.get("/images/..%2Fetc", headers=R).status_code in (404, 422)
    assert client.get(f"/images/{ids[0]}?size=huge", headers=R).status_code == 422


def test_predict_returns_16_answers(client, jpeg) -> None:
    response = client.post("/predict", headers=R, files={"file": ("q.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    answers = response.json()["answers"]
    assert len(answers) == 16 and {a["name"] for a in answers} >= {"areaMM2", "Bext"}
    assert all(isinstance(a["raw"], str) and (a["value"] is None) != a["ok"] for a in answers)
    # the default settings pool 4 sampled answers in each of 8 views: each answer says how many parsed
    assert all(0 <= a["samples"] <= 32 for a in answers)
    assert all((a["spread"] is None) == (a["value"] is None) for a in answers)


def test_a_request_the_gpu_cannot_hold_gets_503_with_retry_after(client, jpeg, tiny_backbone) -> None:
    import torch

    def out_of_memory(_module, _args) -> None:  # the card has no room left for this request
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    hook = tiny_backbone.core.model.visual.register_forward_pre_hook(out_of_memory)
    try:
        response = client.post("/predict", headers=R, files={"file": ("q.jpg", jpeg, "image/jpeg")})
    finally:
        hook.remove()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5" and "GPU memory" in response.json()["detail"]
    _no_traceback(response)
    assert client.post("/predict", headers=R, files={"file": ("q.jpg", jpeg, "image/jpeg")}).status_code == 200


def _bad_requests(jpeg: bytes, ids: list[str]):
    b64 = base64.b64encode(jpeg).decode()
    big = _png(1200, 1000)  # 1.2 M pixels: small file, over the pixel limit
    yield "corrupt image", 422, ("post", "/search", {"json": {"image_base64": base64.b64encode(b"\xff\xd8\xff" + b"x" * 500).decode()}})
    yield "corrupt upload", 422, ("post", "/search/upload", {"files": {"file": ("q.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")}})
    yield "huge image", 413, ("post", "/search", {"json": {"image_base64": base64.b64encode(big).decode()}})
    yield "huge upload", 413, ("post", "/predict", {"files": {"file": ("q.png", big, "image/png")}})
    yield "bad base64", 422, ("post", "/search", {"json": {"image_base64": "not base64 at all!!"}})
    yield "unknown attribute", 422, ("post", "/search", {"json": {"isic_id": ids[0], "mode": "image_text", "attributes": ["mole_size"]}})
    yield "unknown mode", 422, ("post", "/search", {"json": {"isic_id": ids[0], "mode": "telepathy"}})
    yield "k=10^9", 422, ("post", "/search", {"json": {"isic_id": ids[0], "k": 10**9}})
    yield "k over max_k", 422, ("post", "/search", {"json": {"isic_id": ids[0], "k": 51}})
    yield "negative b", 422, ("post", "/search", {"json": {"isic_id": ids[0], "mode": "prefetch", "attributes": ["A"], "b": -1}})
    yield "b over max_b", 422, ("post", "/search", {"json": {"isic_id": ids[0], "mode": "prefetch", "attributes": ["A"], "b": 101}})
    yield "both queries", 422, ("post", "/search", {"json": {"isic_id": ids[0], "image_base64": b64}})
    yield "no query", 422, ("post", "/search", {"json": {"k": 3}})
    yield "unknown field", 422, ("post", "/search", {"json": {"isic_id": ids[0], "url": "http://example.com/x.jpg"}})
    yield "bad isic_id", 422, ("post", "/search", {"json": {"isic_id": "../../etc/passwd"}})
    yield "unknown isic_id", 404, ("post", "/search", {"json": {"isic_id": "ISIC_9999999"}})
    yield "infinite range", 422, ("post", "/search", {"content": b'{"isic_id": "%s", "filters": {"ranges": {"A": {"gte": 1e999}}}}' % ids[0].encode(),
                                                       "headers": {"Content-Type": "application/json"}})
    yield "range whose bounds are swapped", 422, ("post", "/search", {"json": {"isic_id": ids[0], "filters": {"ranges": {"A": {"gte": 5, "lte": 1}}}}})
    yield "b below k", 422, ("post", "/search", {"json": {"isic_id": ids[0], "mode": "hierarchical", "attributes": ["A"], "k": 5, "b": 3}})
    yield "range on a keyword", 422, ("post", "/search", {"json": {"isic_id": ids[0], "filters": {"ranges": {"sex": {"gte": 1}}}}})
    yield "image mode with attributes", 422, ("post", "/search", {"json": {"isic_id": ids[0], "attributes": ["A"]}})
    yield "exclude patient of an upload", 422, ("post", "/search", {"json": {"image_base64": b64, "exclude_query_patient": True}})
    yield "bad multipart request json", 422, ("post", "/search/upload", {"files": {"file": ("q.jpg", jpeg, "image/jpeg")}, "data": {"request": "{nope"}})
    yield "invalid json", 422, ("post", "/search", {"content": b"{", "headers": {"Content-Type": "application/json"}})
    yield "body too large", 413, ("post", "/search", {"json": {"image_base64": "A" * (MAX_UPLOAD * 2)}})
    yield "chunked body too large", 413, ("post", "/search", {"content": iter([b"{" + b" " * 200_000] * 4),
                                                               "headers": {"Content-Type": "application/json"}})


@pytest.mark.parametrize("case", range(26))
def test_bad_input_gets_the_right_4xx_without_a_traceback(client, jpeg, ids, case) -> None:
    cases = list(_bad_requests(jpeg, ids))
    assert len(cases) == 26
    name, expected, (method, path, kwargs) = cases[case]
    headers = {**R, **kwargs.pop("headers", {})}
    response = client.request(method.upper(), path, headers=headers, **kwargs)
    assert response.status_code == expected, f"{name}: {response.status_code} {response.text[:300]}"
    assert "detail" in response.json()
    _no_traceback(response)


def test_upload_is_rebuilt_without_exif() -> None:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0112] = 6  # orientation: rotate 90
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (10, 20, 30)).save(buffer, format="JPEG", exif=exif)
    clean = decode_upload(buffer.getvalue(), max_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    assert clean.size == (20, 40), "EXIF orientation is applied before it is dropped"
    assert "exif" not in clean.info and not clean.getexif()


def test_open_mode_without_keys_and_sql_disabled_without_an_admin_key(tmp_path, tiny_backbone) -> None:
    with TestClient(create_app(Settings(home=tmp_path), backbone=tiny_backbone)) as client:
        health = client.get("/health").json()
        assert health["auth"] == "open (loopback only)" and health["points"] is None
        assert client.get("/examples").json() == []  # read endpoints are open, the collection is empty
        missing = client.post("/search", json={"isic_id": "ISIC_0000001"})
        assert missing.status_code == 503 and "dermground ingest" in missing.json()["detail"]
        response = client.post("/sql", json={"query": "SELECT 1"})
        assert response.status_code == 403 and "DERMGROUND_API_ADMIN_KEY" in response.json()["detail"]


def test_the_analyst_key_opens_sql_read_only_and_nothing_else(client, ids) -> None:
    response = client.post("/sql", json={"query": "SELECT count(*) AS n FROM lesions"}, headers=AN)
    assert response.status_code == 200 and response.json()["rows"] == [[len(ids)]]
    views = client.post("/sql", json={"query": "SELECT count(*) FROM attributes"}, headers=AN)
    assert views.json()["rows"] == [[16]]
    refused = client.post("/sql", json={"query": "DROP VIEW lesions"}, headers=AN)
    assert refused.status_code == 400 and "only SELECT" in refused.json()["detail"]
    for response in (client.post("/search", json={"isic_id": ids[0], "k": 3}, headers=AN),
                     client.get("/examples", headers=AN)):
        assert response.status_code == 401, response.text
