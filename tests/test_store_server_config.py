"""Server-side Qdrant settings reach the collection: shards, replication, on-disk, quantization."""

from __future__ import annotations

import numpy as np
import pytest

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.settings import Settings, load_settings
from dermground.platform.store import (
    CollectionSpec,
    StoreError,
    StorePoint,
    VersionMeta,
    build_payload,
    open_collections,
    open_store,
    point_id,
)
from dermground.platform.store.versions import BUILDING
from tests.qdrant_front import qdrant_front

DIM = 16


def _points(n: int) -> tuple[list[StorePoint], np.ndarray]:
    rng = np.random.default_rng(5)
    images = rng.normal(size=(n, DIM)).astype(np.float32)
    points = []
    for i in range(n):
        record = {"isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 4}", "split": "train",
                  "image_ref": f"/x/{i}.jpg", **{a.name: float(a.low) for a in ATTRIBUTES}}
        vectors = {"image": images[i], **{a.vector_name: rng.normal(size=DIM).astype(np.float32) for a in ATTRIBUTES}}
        points.append(StorePoint(point_id(record["isic_id"]), vectors, build_payload(record, "fp-cfg")))
    return points, images


@pytest.mark.parametrize("quantization", ["scalar", "binary"])
def test_settings_shape_the_created_collection(monkeypatch: pytest.MonkeyPatch, tmp_path, quantization: str) -> None:
    for name, value in {"QDRANT_URL": ":memory:", "QDRANT_SHARDS": "3", "QDRANT_REPLICATION": "2",
                        "QDRANT_ON_DISK": "true", "QDRANT_QUANTIZATION": quantization}.items():
        monkeypatch.setenv(f"DERMGROUND_{name}", value)
    store = open_store(load_settings(home=tmp_path), "cfg")
    # qdrant-client's local mode accepts but does not keep cluster settings (shards, replication):
    # record what a real server would receive, then let the real call go through.
    sent: dict[str, object] = {}
    real_create = store._client.create_collection  # noqa: SLF001

    def recording_create(*args: object, **kwargs: object) -> object:
        sent.update(kwargs)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(store._client, "create_collection", recording_create)  # noqa: SLF001
    store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-cfg"))
    assert sent["shard_number"] == 3 and sent["replication_factor"] == 2
    vectors = sent["vectors_config"]
    assert vectors["image"].on_disk is True and vectors["image"].hnsw_config is None
    assert vectors["q_areaMM2"].hnsw_config.m == 0, "only `image` gets an HNSW graph"
    config = sent["quantization_config"]
    assert (config.scalar if quantization == "scalar" else config.binary) is not None
    stored = store._client.get_collection("cfg").config.params  # noqa: SLF001
    assert stored.vectors["image"].on_disk is True

    # Quantized search still returns the exact nearest neighbour (rescored with full vectors).
    points, images = _points(50)
    store.upsert(points)
    hits = store.query("image", images[7], k=1)
    assert hits[0].isic_id == "ISIC_0000007"
    store.close()


@pytest.mark.parametrize(("built", "reader"), [("binary", "none"), ("scalar", "binary"), ("none", "scalar")])
def test_search_follows_the_collections_quantization_not_the_readers_settings(tmp_path, built: str, reader: str) -> None:
    """A collection built quantized is searched with rescoring by a process whose settings say
    otherwise (the API of another deployment, a CLI with other defaults), and one built without
    quantization gets no quantization parameters: what the collection records decides."""
    points, images = _points(20)
    with qdrant_front() as front:
        with open_store(Settings(home=tmp_path, qdrant_url=front.url, qdrant_quantization=built), "q") as builder:
            builder.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-cfg"))
            builder.upsert(points)
        with open_store(Settings(home=tmp_path, qdrant_url=front.url, qdrant_quantization=reader), "q") as store:
            assert store.query("image", images[3], k=1)[0].isic_id == "ISIC_0000003"
            store.prefetch_rescore("image", images[3], 10, "q_areaMM2", points[3].vectors["q_areaMM2"], 1)
        query, prefetched = (r.body for r in front.sent("POST", "/points/query"))
    expected = {"rescore": True, "oversampling": 2.0} if built != "none" else None
    assert (query.get("params") or {}).get("quantization") == expected
    assert (prefetched["prefetch"].get("params") or {}).get("quantization") == expected
    assert (prefetched.get("params") or {}).get("quantization") == expected


def test_a_server_that_drops_collection_metadata_is_refused_before_anything_is_written(tmp_path) -> None:
    """A Qdrant server older than 1.16 accepts the creating request without its metadata: an ingest
    used to write the whole collection, then fail to switch to it ('still building') and leave it
    unreadable. The create is refused at once, and the empty collection is not left behind."""
    with qdrant_front() as front:
        front.keeps_metadata = False
        with open_collections(Settings(home=tmp_path, qdrant_url=front.url)) as cols:
            version = cols.create_version("lesions", VersionMeta(state=BUILDING))
            with cols.open_version("lesions", version) as store, pytest.raises(StoreError) as refused:
                store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp-cfg"))
        assert "older than 1.16" in str(refused.value) and "Upgrade the server" in str(refused.value)
        assert front.engine.get_collections().collections == []
        assert not front.sent("PUT", "/points"), "nothing was written"
