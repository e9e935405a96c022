"""Vector store: one small interface, two backends (embedded engine default, Qdrant server).

    with open_store(settings, "lesions") as store:
        store.ensure_collection(CollectionSpec(dim=1536, fingerprint=fp))
        store.upsert([StorePoint(point_id(isic_id), vectors, build_payload(record, fp))])
"""

from __future__ import annotations

from dermground.platform.names import check_collection_name
from dermground.platform.settings import Settings
from dermground.platform.store.base import (
    CollectionSpec,
    Hit,
    Range,
    SchemaMismatchError,
    SearchFilter,
    StoreError,
    StoreLockedError,
    StorePoint,
    VectorStore,
)
from dermground.platform.store.schema import (
    DEFAULT_VECTOR_NAMES,
    IMAGE_VECTOR,
    PAYLOAD_INDEXES,
    PayloadError,
    build_payload,
    point_id,
)


def open_store(settings: Settings, collection: str | None = None) -> VectorStore:
    """The store for a collection: a Qdrant server when settings.qdrant_url is set (":memory:"
    for tests), else the embedded engine in settings.store_dir/<collection>. InvalidNameError
    (a ValueError) for a name that is not a collection name."""
    # The name becomes a folder (embedded) or a URL segment (server): never `../x` or `/abs`.
    name = check_collection_name(settings.collection if collection is None else collection)
    if settings.qdrant_url:
        from dermground.platform.store.server import ServerStore

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerStore(name, settings.qdrant_url, api_key=api_key, timeout_s=settings.qdrant_timeout_s,
                           shards=settings.qdrant_shards, replication=settings.qdrant_replication,
                           on_disk=settings.qdrant_on_disk, quantization=settings.qdrant_quantization)
    from dermground.platform.store.edge import EdgeStore

    return EdgeStore(settings.store_dir / name, name)


__all__ = [
    "CollectionSpec", "DEFAULT_VECTOR_NAMES", "Hit", "IMAGE_VECTOR", "PAYLOAD_INDEXES", "PayloadError",
    "Range", "SchemaMismatchError", "SearchFilter", "StoreError", "StoreLockedError", "StorePoint",
    "VectorStore", "build_payload", "open_store", "point_id",
]
