"""A search that a `collections switch` lands in the middle of finishes on the version it started on
(store/live.py), so the vectors a hierarchical search caches go into the version it read."""

from __future__ import annotations

from pathlib import Path

from dermground.platform.embed import Embedder
from dermground.platform.embedder_provider import EmbedderProvider
from dermground.platform.search import search
from dermground.platform.search_request import SearchMode, SearchRequest
from dermground.platform.settings import Settings
from dermground.platform.store import point_id
from dermground.platform.store.edge_versions import EdgeCollections, copy_sparse
from dermground.platform.store.live import LiveStore
from dermground.platform.store.versions import BUILDING, READY, VersionMeta

AREA = "areaMM2"


def test_a_hierarchical_search_caches_into_the_version_it_read_when_a_switch_lands_meanwhile(
        search_collection, tiny_backbone, tmp_path: Path) -> None:
    store_dir = tmp_path / "qdrant"
    store_dir.mkdir()
    copy_sparse(search_collection["image_only_root"], store_dir / "lesions")  # v0: `image` vectors only
    cols = EdgeCollections(store_dir)
    rebuilt = cols.create_version("lesions", VersionMeta(source="test", state=BUILDING))
    cols.copy_points("lesions", "v0", rebuilt)  # stands for a re-embedded version (same dimension)
    cols.write_meta("lesions", rebuilt, VersionMeta(source="test", state=READY))

    def load_then_switch() -> Embedder:  # the model loads mid-request: the admin's switch lands then
        cols.switch("lesions", rebuilt)
        return Embedder(tiny_backbone)

    live = LiveStore(EdgeCollections(store_dir), "lesions", refresh_s=0.0)
    query_id = search_collection["records"][5].isic_id
    try:
        response = search(SearchRequest(SearchMode.hierarchical, attributes=(AREA,), isic_id=query_id, k=3, b=6,
                                         cache_vectors=True),
                          store=live, embedder=EmbedderProvider(load_then_switch), settings=Settings(home=tmp_path))
        assert response.model_ran and response.cached == 7  # the query and its 6 candidates
        assert live.count() == 40 and live.physical == f"lesions__{rebuilt}"  # later requests go to the new version
    finally:
        live.close()
    ids = [point_id(r.isic_id) for r in search_collection["records"]]
    with cols.open_version("lesions", "v0") as read:
        assert sum(f"q_{AREA}" in p.vectors for p in read.retrieve(ids, with_vectors=[f"q_{AREA}"])) == 7
    with cols.open_version("lesions", rebuilt) as untouched:  # not another version's vectors
        assert not any(f"q_{AREA}" in p.vectors for p in untouched.retrieve(ids, with_vectors=[f"q_{AREA}"]))
