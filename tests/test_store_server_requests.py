"""Writes to a Qdrant server fit its request-size limit (service.max_request_size_mb, 32 MiB by
default): one ingest partition of a real model's points is several times that as JSON.

The server here is a small HTTP front, started in the test, on qdrant-client's local engine: it
answers the few REST calls a write makes and refuses a body over its limit with Qdrant's own
400 "Payload error", as a Qdrant server does (a stand-in for the external server, not a mock of our code).
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from dermground.platform.settings import Settings
from dermground.platform.store import CollectionSpec, StoreError, StorePoint, open_store, point_id
from dermground.platform.store.schema import DEFAULT_VECTOR_NAMES
from dermground.platform.store.server import ServerStore
from tests.qdrant_front import qdrant_front, served

DIM, N = 32, 300
LIMIT_MB = 1
SPEC = CollectionSpec(dim=DIM, fingerprint="fp-requests")


class _LimitedQdrant(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(("127.0.0.1", 0), _Front)
        self.engine = QdrantClient(location=":memory:")
        self.limit_bytes = limit_bytes
        self.bodies: list[int] = []  # sizes of the write bodies accepted
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Front(http.server.BaseHTTPRequestHandler):
    server: _LimitedQdrant

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps({**body, "time": 0.0}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _ok(self, result: object) -> None:
        self._send(200, {"result": result, "status": "ok"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        engine, path = self.server.engine, self.path.split("?")[0]
        if path == "/aliases":
            self._ok(engine.get_aliases().model_dump(mode="json"))
        elif match := re.fullmatch(r"/collections/([^/]+)/exists", path):
            self._ok({"exists": engine.collection_exists(match[1])})
        elif match := re.fullmatch(r"/collections/([^/]+)", path):
            self._ok(engine.get_collection(match[1]).model_dump(mode="json", exclude_none=True))
        else:
            self._send(404, {"status": {"error": f"Not found: {path}"}})

    def _write(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        if length > self.server.limit_bytes:  # Qdrant's answer, word for word
            self._send(400, {"status": {"error": f"Payload error: JSON payload ({length} bytes) is larger than "
                                                 f"allowed (limit: {self.server.limit_bytes} bytes)."}})
            return
        engine, path = self.server.engine, self.path.split("?")[0]
        name = path.split("/")[2]
        with self.server.lock:
            self.server.bodies.append(length)
            if path.endswith("/points/vectors"):
                engine.update_vectors(name, points=models.UpdateVectors.model_validate_json(body).points)
            elif self.command == "PUT":
                engine.upsert(name, points=models.PointsList.model_validate_json(body).points)
            else:  # POST /points: retrieve
                asked = models.PointRequest.model_validate_json(body)
                records = engine.retrieve(name, ids=asked.ids, with_payload=asked.with_payload,
                                          with_vectors=asked.with_vector)
                self._ok([r.model_dump(mode="json") for r in records])
                return
        self._ok({"operation_id": 0, "status": "completed"})

    do_PUT = do_POST = _write

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def qdrant() -> Iterator[_LimitedQdrant]:
    server = _LimitedQdrant(LIMIT_MB * 2**20)
    ServerStore("lesions", client=server.engine).ensure_collection(SPEC)
    with served(server):
        yield server


def _points() -> list[StorePoint]:
    rng = np.random.default_rng(3)
    return [StorePoint(point_id(f"ISIC_{i:07d}"),
                       {n: rng.normal(size=DIM).astype(np.float32) for n in DEFAULT_VECTOR_NAMES},
                       {"isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 7}", "split": "train"})
            for i in range(N)]


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)  # cosine collections store vectors normalised


def test_writes_are_split_below_the_servers_request_limit(qdrant: _LimitedQdrant, tmp_path) -> None:
    points = _points()
    settings = Settings(home=tmp_path, qdrant_url=qdrant.url, qdrant_max_request_mb=LIMIT_MB)
    with open_store(settings, "lesions") as store:
        store.upsert(points)  # ~3 MiB of JSON in one call
        assert len(qdrant.bodies) > 1 and max(qdrant.bodies) <= qdrant.limit_bytes
        assert qdrant.engine.count("lesions").count == N
        stored = qdrant.engine.retrieve("lesions", ids=[points[-1].id], with_vectors=True)[0]
        np.testing.assert_allclose(stored.vector["image"], _unit(points[-1].vectors["image"]), rtol=1e-5)

        qdrant.bodies.clear()
        rng = np.random.default_rng(4)
        fresh = {p.id: {n: rng.normal(size=DIM).astype(np.float32) for n in DEFAULT_VECTOR_NAMES[1:]}
                 for p in points}
        store.update_vectors(fresh)  # a search's write-back of re-embedded candidates (b up to 2000)
        writes = qdrant.bodies[1:]  # the first request reads which ids exist
        assert len(writes) > 1 and max(writes) <= qdrant.limit_bytes
        last = points[-1].id
        stored = qdrant.engine.retrieve("lesions", ids=[last], with_vectors=True)[0]
        name = DEFAULT_VECTOR_NAMES[1]
        np.testing.assert_allclose(stored.vector[name], _unit(fresh[last][name]), rtol=1e-5)


def test_a_server_with_a_lower_limit_names_the_setting(qdrant: _LimitedQdrant) -> None:
    with ServerStore("lesions", qdrant.url, timeout_s=30) as store, pytest.raises(StoreError) as raised:
        store.upsert(_points() * 12)  # ~37 MiB as JSON: over the server's 1 MiB, under the 32 MiB assumed
    assert "DERMGROUND_QDRANT_MAX_REQUEST_MB" in str(raised.value) and qdrant.url in str(raised.value)
    assert qdrant.engine.count("lesions").count == 0


def test_reads_of_large_vectors_are_split_into_pages_below_the_request_limit(tmp_path) -> None:
    """snapshot create and check read every point with its vectors (iter_points): at a real model's
    dimension a page sized by points alone is hundreds of MB of JSON; it is sized by bytes."""
    spec = CollectionSpec(dim=1536, fingerprint="fp-wide")  # Qwen2-VL-2B's hidden size, 17 vectors
    rng = np.random.default_rng(5)
    points = [StorePoint(point_id(f"ISIC_{i:07d}"), {n: rng.normal(size=1536).astype(np.float32)
                                                     for n in DEFAULT_VECTOR_NAMES},
                         {"isic_id": f"ISIC_{i:07d}", "split": "train"}) for i in range(8)]
    with qdrant_front() as front:
        settings = Settings(home=tmp_path, qdrant_url=front.url, qdrant_max_request_mb=2)
        with open_store(settings, "wide") as store:
            store.ensure_collection(spec)
            store.upsert(points)
            read = list(store.iter_points(page_size=500, with_payload=True, with_vectors=True))
        pages = front.sent("POST", "/points/scroll")
    assert sorted(p.id for p in read) == sorted(p.id for p in points)
    first = next(p for p in points if p.id == read[0].id)
    np.testing.assert_allclose(read[0].vectors["q_areaMM2"], _unit(first.vectors["q_areaMM2"]), rtol=1e-5)
    assert len(pages) > 2 and max(p.answer_bytes for p in pages) <= 2 * 2**20


def test_a_proxys_body_limit_names_the_setting(tmp_path) -> None:
    """Qdrant behind a reverse proxy (TLS, docs/DEPLOY.md): nginx refuses bodies over its
    client_max_body_size (1 MB by default) with a 413 HTML page before Qdrant sees them."""
    with qdrant_front() as front:
        with ServerStore("lesions", front.url, timeout_s=30) as store:
            store.ensure_collection(SPEC)
            front.proxy_body_limit = 2**20
            with pytest.raises(StoreError) as raised:
                store.upsert(_points())  # ~3 MiB of JSON: one request under the 32 MiB assumed
        assert front.engine.count("lesions").count == 0
    message = str(raised.value)
    assert "DERMGROUND_QDRANT_MAX_REQUEST_MB" in message and "413" in message and front.url in message, message
