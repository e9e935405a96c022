"""The documented path after training a new adapter: `ingest --adapter A2 --new-version`, then
`collections switch`, and the running API follows without a restart, image uploads included."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from dermground.platform.api import create_app
from dermground.platform.embed import Embedder
from dermground.platform.image_sources import load_image_bytes
from dermground.platform.model.loading import load_backbone
from dermground.platform.settings import Settings
from dermground.platform.store import (
    DEFAULT_VECTOR_NAMES,
    IMAGE_VECTOR,
    CollectionSpec,
    StorePoint,
    build_payload,
    point_id,
)
from dermground.platform.store.edge_versions import EdgeCollections, copy_sparse
from dermground.platform.store.versions import BUILDING, READY, VersionMeta

N_TUNED = 8


def test_an_upload_search_follows_a_switch_to_a_version_built_with_another_adapter(
        search_collection, tiny_model_dir, make_tiny_adapter, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "qdrant").mkdir(parents=True)
    copy_sparse(search_collection["store_root"], home / "qdrant" / "lesions")  # v0: the base model's vectors
    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter-2", seed=1)
    tuned = load_backbone(tiny_model_dir, adapter, device="cpu", dtype="float32")
    records = search_collection["records"][:N_TUNED]
    embeddings = Embedder(tuned).embed([r.load_image() for r in records])
    cols = EdgeCollections(home / "qdrant")
    version = cols.create_version("lesions", VersionMeta(source="test", adapter=str(adapter), state=BUILDING))
    with cols.open_version("lesions", version) as store:  # what `ingest --adapter adapter-2 --new-version` writes
        store.ensure_collection(CollectionSpec(dim=tuned.hidden_size, fingerprint=tuned.fingerprint,
                                               vector_names=DEFAULT_VECTOR_NAMES))
        points = []
        for i, r in enumerate(records):
            vectors = {IMAGE_VECTOR: embeddings.h_im[i]} | {f"q_{a}": m[i] for a, m in embeddings.h_im_a.items()}
            payload = build_payload({"isic_id": r.isic_id, "patient_id": r.patient_id, "split": r.split,
                                     "image_ref": r.image_ref, **r.attributes, **r.metadata}, tuned.fingerprint)
            points.append(StorePoint(point_id(r.isic_id), vectors, payload))
        store.upsert(points)
    cols.write_meta("lesions", version, VersionMeta(source="test", adapter=str(adapter), state=READY, points=N_TUNED))
    query = load_image_bytes(str(records[0].image_ref))

    def upload(client: TestClient):  # noqa: ANN202
        return client.post("/search/upload", files={"file": ("q.jpg", query, "image/jpeg")},
                           data={"request": '{"mode": "image", "k": 3}'})

    settings = Settings(home=home, model_dir=tiny_model_dir, collection="lesions")  # served with the base model
    with TestClient(create_app(settings)) as client:
        assert upload(client).status_code == 200
        cols.switch("lesions", version)
        found = upload(client)
        assert found.status_code == 200, found.text
        assert client.get("/health").json()["points"] == N_TUNED
        assert found.json()["hits"][0]["isic_id"] == records[0].isic_id  # the query embedded by the adapter's model
