"""The running API follows `collections switch` without a restart or a failed request, and lists
the versions at GET /collections (read key)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from dermground.platform.api import create_app
from dermground.platform.settings import Settings
from dermground.platform.store import point_id
from dermground.platform.store.edge import EdgeStore
from dermground.platform.store.edge_versions import EdgeCollections, copy_sparse
from dermground.platform.store.versions import READY, VersionMeta

READ = "read-key-live"
REMOVED = 5


@pytest.fixture(scope="module")
def golden_home(search_collection, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v0: the 40-point search collection; v1: the same minus 5 points, built and ready."""
    home = tmp_path_factory.mktemp("api_versions") / "home"
    (home / "qdrant").mkdir(parents=True)
    copy_sparse(search_collection["store_root"], home / "qdrant" / "lesions")
    cols = EdgeCollections(home / "qdrant")
    version = cols.create_version("lesions", VersionMeta(source="test", adapter="adapter-2"))
    cols.copy_points("lesions", "v0", version)
    with EdgeStore(home / "qdrant" / "lesions__v1", "lesions__v1") as store:
        store.delete([point_id(r.isic_id) for r in search_collection["records"][:REMOVED]])
    cols.write_meta("lesions", version, VersionMeta(source="test", adapter="adapter-2", state=READY, points=35))
    return home


@pytest.fixture
def home(golden_home: Path, tmp_path: Path) -> Path:
    """A copy of golden_home for one test (built once: a 17-vector version costs seconds on a busy machine)."""
    copy_sparse(golden_home, tmp_path / "home")
    return tmp_path / "home"


def _serve(app) -> tuple[uvicorn.Server, threading.Thread, str]:  # noqa: ANN001
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def test_searches_across_a_switch_all_succeed_and_the_api_follows(home: Path, search_collection) -> None:
    settings = Settings(home=home, api_read_key=READ, collection="lesions")
    server, thread, url = _serve(create_app(settings))
    headers = {"X-API-Key": READ}
    ids = [r.isic_id for r in search_collection["records"][REMOVED:]]  # in both versions
    cols = EdgeCollections(home / "qdrant")
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            assert client.get("/health").json()["points"] == 40
            listed = client.get("/collections").json()
            assert [(v["version"], v["live"], v["points"]) for v in listed] == [("v0", True, 40), ("v1", False, 35)]
            assert listed[1]["adapter"] == "adapter-2" and listed[1]["fingerprint"] == search_collection["fingerprint"]
            assert client.get("/collections", headers={"X-API-Key": "wrong"}).status_code == 401

            def one(i: int) -> int:
                if i == 60:
                    cols.switch("lesions", "v1")
                return client.post("/search", json={"isic_id": ids[i % len(ids)], "k": 5}).status_code

            with ThreadPoolExecutor(max_workers=8) as pool:
                statuses = list(pool.map(one, range(200)))
            assert statuses.count(200) == 200, sorted(set(statuses))
            assert client.get("/health").json()["points"] == 40 - REMOVED  # followed without a restart
            live = {v["version"]: v["live"] for v in client.get("/collections").json()}
            assert live == {"v0": False, "v1": True}
        cols.drop("lesions", "v0")  # the API let go of the old version once its requests returned
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def test_a_store_handed_to_the_app_is_listed_with_its_own_count(home: Path, search_collection) -> None:
    """A store given to create_app (not a LiveStore) is the one open version: counted through it."""
    from fastapi.testclient import TestClient

    settings = Settings(home=home, api_read_key=READ, collection="lesions")
    with EdgeStore(home / "qdrant" / "lesions__v1", "lesions__v1") as store:
        store.delete([point_id(search_collection["records"][REMOVED].isic_id)])  # 34 now; its record says 35
        with TestClient(create_app(settings, store=store)) as client:
            listed = client.get("/collections", headers={"X-API-Key": READ})
    assert listed.status_code == 200, listed.text
    assert {v["version"]: v["points"] for v in listed.json()}["v1"] == 34


def test_a_server_backed_api_answers_across_a_switch_and_drop_and_says_when_nothing_is_live(tmp_path: Path) -> None:
    # Qdrant server backend (qdrant-client local mode): `collections switch` then an immediate
    # `collections drop` of the old version, before the API's next alias check, fails no request;
    # a collection with no version left is a 503 that says what to do, never a 500.
    from fastapi.testclient import TestClient
    from qdrant_client import QdrantClient

    from dermground.platform.store.live import LiveStore
    from dermground.platform.store.server_versions import ServerCollections
    from tests.test_collection_versions import build_version

    qdrant = QdrantClient(location=":memory:")
    admin = ServerCollections(qdrant, owns_client=False)
    build_version(admin, "lesions", 5, seed=1)
    build_version(admin, "lesions", 7, seed=2)
    admin.switch("lesions", "v1")
    live = LiveStore(ServerCollections(qdrant, owns_client=False), "lesions", refresh_s=3600.0)  # no check due
    settings = Settings(home=tmp_path, api_read_key=READ, collection="lesions")
    query = {"isic_id": "ISIC_0000001", "k": 3}
    try:
        with TestClient(create_app(settings, store=live), headers={"X-API-Key": READ}) as api:
            assert api.post("/search", json=query).status_code == 200
            admin.switch("lesions", "v2")
            admin.drop("lesions", "v1")
            searched = api.post("/search", json=query)
            assert searched.status_code == 200, searched.text
            assert len(searched.json()["hits"]) == 3
            examples = api.get("/examples", params={"n": 20})
            assert examples.status_code == 200 and len(examples.json()) == 7  # v2's points
            qdrant.delete_collection("lesions__v2")  # deleted with Qdrant's own tools: nothing is live
            gone = api.get("/examples")
            assert gone.status_code == 503, gone.text
            assert "no live version" in gone.json()["detail"] and "collections switch lesions" in gone.json()["detail"]
            assert api.post("/search", json=query).status_code == 503
    finally:
        live.close()
