"""A Qdrant server collection whose payload indexes were not all created (the creating process
was killed between the request that creates the collection and those that index its payload):
`check` reports them, and the next ingest (ensure_collection) creates the missing ones.
The server is tests/qdrant_front.py, which keeps payload indexes as a Qdrant server does."""

from __future__ import annotations

from dermground.ingest.consistency import check_collection
from dermground.platform.settings import Settings
from dermground.platform.store import PAYLOAD_INDEXES, CollectionSpec, open_store
from tests.qdrant_front import qdrant_front

SPEC = CollectionSpec(dim=8, fingerprint="fp-indexes")


def test_indexes_a_killed_create_left_out_are_reported_and_created_by_the_next_ingest(tmp_path) -> None:
    with qdrant_front() as front:
        settings = Settings(home=tmp_path, qdrant_url=front.url)
        with open_store(settings, "lesions") as store:
            store.ensure_collection(SPEC)
        assert set(front.indexes["lesions"]) == set(PAYLOAD_INDEXES)
        # What a kill right after the creating request leaves: the collection, some indexes or none.
        front.indexes["lesions"] = {"isic_id": "keyword"}

        report = check_collection(settings, "lesions")
        assert not report.ok
        [finding] = [f for f in report.findings if "payload indexes missing" in f]
        assert f"on {len(PAYLOAD_INDEXES) - 1} field(s)" in finding
        assert "`dermground ingest --data DIR --collection lesions`" in finding, finding  # it said `dermground ingest`

        with open_store(settings, "lesions") as store:
            store.ensure_collection(SPEC)  # what the next ingest does first
            assert store.missing_payload_indexes() == []
        assert front.indexes["lesions"] == {**PAYLOAD_INDEXES, "isic_id": "keyword"}
        created = front.sent("PUT", "/index")
        assert len(created) == 2 * len(PAYLOAD_INDEXES) - 1, "only the missing indexes are created again"
        assert check_collection(settings, "lesions").ok
