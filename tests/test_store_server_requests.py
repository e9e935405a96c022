"""Writes to a Qdrant server fit its request-size limit (service.max_request_size_mb, 32 MiB by
default): one ingest partition of a real model's points is several times that as JSON.

The server here is tests/qdrant_front.py, started in the test on qdrant-client's local engine: it
refuses a body over its limit with Qdrant's own 400 "Payload error", as a Qdrant server does (a
stand-in for the external server, not a mock of our code).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from dermground.platform.settings import Settings
from dermground.platform.store import CollectionSpec, StoreError, StorePoint, open_store, point_id
from dermground.platform.store.schema import DEFAULT_VECTOR_NAMES
from dermground.platform.store.server import ServerStore
from tests.qdrant_front import QdrantFront, Request, qdrant_front

DIM, N = 32, 300
LIMIT_MB = 1
SPEC = CollectionSpec(dim=DIM, fingerprint="fp-requests")


@pytest.fixture
def qdrant() -> Iterator[QdrantFront]:
    """The stand-in server with Qdrant's own request-size limit at LIMIT_MB, holding the collection."""
    with qdrant_front() as front:
        ServerStore("lesions", client=front.engine).ensure_collection(SPEC)
        front.body_limit = LIMIT_MB * 2**20
        yield front


def _sizes(requests: list[Request]) -> list[int]:
    return [r.body_bytes for r in requests]


def _points() -> list[StorePoint]:
    rng = np.random.default_rng(3)
    return [StorePoint(point_id(f"ISIC_{i:07d}"),
                       {n: rng.normal(size=DIM).astype(np.float32) for n in DEFAULT_VECTOR_NAMES},
                       {"isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 7}", "split": "train"})
            for i in range(N)]


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)  # cosine collections store vectors normalised


def test_writes_are_split_below_the_servers_request_limit(qdrant: QdrantFront, tmp_path) -> None:
    points = _points()
    settings = Settings(home=tmp_path, qdrant_url=qdrant.url, qdrant_max_request_mb=LIMIT_MB)
    with open_store(settings, "lesions") as store:
        store.upsert(points)  # ~3 MiB of JSON in one call
        upserts = _sizes(qdrant.sent("PUT", "/points"))
        assert len(upserts) > 1 and max(upserts) <= LIMIT_MB * 2**20
        assert qdrant.engine.count("lesions").count == N
        stored = qdrant.engine.retrieve("lesions", ids=[points[-1].id], with_vectors=True)[0]
        np.testing.assert_allclose(stored.vector["image"], _unit(points[-1].vectors["image"]), rtol=1e-5)

        rng = np.random.default_rng(4)
        fresh = {p.id: {n: rng.normal(size=DIM).astype(np.float32) for n in DEFAULT_VECTOR_NAMES[1:]}
                 for p in points}
        store.update_vectors(fresh)  # a search's write-back of re-embedded candidates (b up to 2000)
        writes = _sizes(qdrant.sent("PUT", "/points/vectors"))
        assert len(writes) > 1 and max(writes) <= LIMIT_MB * 2**20
        last = points[-1].id
        stored = qdrant.engine.retrieve("lesions", ids=[last], with_vectors=True)[0]
        name = DEFAULT_VECTOR_NAMES[1]
        np.testing.assert_allclose(stored.vector[name], _unit(fresh[last][name]), rtol=1e-5)


def test_a_server_with_a_lower_limit_names_the_setting(qdrant: QdrantFront) -> None:
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
