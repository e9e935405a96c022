"""Vector store: one small interface, two backends (embedded engine default, Qdrant server).

    with open_store(settings, "lesions") as store:
        store.ensure_collection(CollectionSpec(dim=1536, fingerprint=fp))
        store.upsert([StorePoint(point_id(isic_id), vectors, build_payload(record, fp))])
"""

from __future__ import annotations

from dermground.platform.names import check_collection_name
from dermground.platform.settings import Settings
from dermground.platform.store.base import (
    CollectionMissingError,
    CollectionSpec,
    Hit,
    Range,
    SchemaMismatchError,
    SearchFilter,
    StoreError,
    StoreLockedError,
    StorePoint,
    StoreUnavailableError,
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
from dermground.platform.store.versions import (
    Collections,
    VersionError,
    VersionInfo,
    VersionMeta,
)


def open_store(settings: Settings, collection: str | None = None) -> VectorStore:
    """The store of a collection's live version: a Qdrant server when settings.qdrant_url is set
    (":memory:" for tests), else the embedded engine under settings.store_dir. A name that is an
    alias (store/versions.py) opens the version it points at now; use LiveStore to follow switches."""
    # The name becomes a folder (embedded) or a URL segment (server): never `../x` or `/abs`.
    name = check_collection_name(settings.collection if collection is None else collection)
    if settings.qdrant_url:
        from dermground.platform.store.server import ServerStore
        from dermground.platform.store.server_versions import ServerCollections

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        store = ServerStore(name, settings.qdrant_url, api_key=api_key, timeout_s=settings.qdrant_timeout_s,
                            shards=settings.qdrant_shards, replication=settings.qdrant_replication,
                            on_disk=settings.qdrant_on_disk, quantization=settings.qdrant_quantization,
                            max_request_mb=settings.qdrant_max_request_mb)
        # Resolved here, on the store's own client (":memory:" is one database per client).
        try:
            store.collection = ServerCollections(store._client, owns_client=False).resolve(name)
        except BaseException:
            store.close()  # the error's traceback keeps this frame: its client must not stay open
            raise
        return store
    from dermground.platform.store.edge import EdgeStore

    physical = _edge_collections(settings).resolve(name)
    return EdgeStore(settings.store_dir / physical, physical, hnsw_ef=settings.store_hnsw_ef,
                     index_min_points=settings.store_index_min_points)


def open_collections(settings: Settings) -> Collections:
    """The versions and aliases of the configured store (the same backend choice as open_store)."""
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        from dermground.platform.store.server_client import connect_server
        from dermground.platform.store.server_versions import ServerCollections

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        # A server's failures (down, slow, wrong key) are StoreErrors naming the URL and the setting.
        client = (QdrantClient(location=":memory:") if settings.qdrant_url == ":memory:" else
                  connect_server(settings.qdrant_url, api_key=api_key, timeout_s=settings.qdrant_timeout_s))
        return ServerCollections(client, shards=settings.qdrant_shards, replication=settings.qdrant_replication,
                                 on_disk=settings.qdrant_on_disk, quantization=settings.qdrant_quantization,
                                 max_request_mb=settings.qdrant_max_request_mb)
    return _edge_collections(settings)


def _edge_collections(settings: Settings) -> Collections:
    from dermground.platform.store.edge_versions import EdgeCollections

    # Every version opened through it searches with the configured HNSW settings.
    return EdgeCollections(settings.store_dir, hnsw_ef=settings.store_hnsw_ef,
                           index_min_points=settings.store_index_min_points)


def open_live_store(settings: Settings, collection: str | None = None) -> VectorStore:
    """A store that follows the collection's alias across switches (for the API)."""
    from dermground.platform.store.live import LiveStore

    return LiveStore(open_collections(settings), collection or settings.collection)


__all__ = [
    "CollectionSpec", "DEFAULT_VECTOR_NAMES", "Hit", "IMAGE_VECTOR", "PAYLOAD_INDEXES", "PayloadError",
    "Range", "SchemaMismatchError", "SearchFilter", "StoreError", "StoreLockedError", "StorePoint",
    "VectorStore", "build_payload", "open_store", "point_id",
    "Collections", "VersionError", "VersionInfo", "VersionMeta", "open_collections", "open_live_store",
    "CollectionMissingError", "StoreUnavailableError",
]
