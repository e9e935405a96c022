"""`dermground check` on the Qdrant server backend: it finds a point missing a named vector without
reading the vectors of every point (at 400k points of the 2B model that is tens of GB of JSON).
The server is tests/qdrant_front.py, which records every request and the size of its answer."""

from __future__ import annotations

import numpy as np

from dermground.ingest.consistency import check_collection
from dermground.platform.settings import Settings
from dermground.platform.store import CollectionSpec, StorePoint, open_store, point_id

SPEC = CollectionSpec(dim=64, fingerprint="fp-check", vector_names=("image", "q_deltaB", "q_areaMM2"))
N = 40


def test_check_finds_a_point_missing_a_vector_without_reading_any_vector(tmp_path) -> None:
    from tests.qdrant_front import qdrant_front

    rng = np.random.default_rng(3)
    with qdrant_front() as front:
        settings = Settings(home=tmp_path, qdrant_url=front.url)
        with open_store(settings, "lesions") as store:
            store.ensure_collection(SPEC)
            points = [StorePoint(point_id(f"ISIC_{i:07d}"),
                                 {name: rng.standard_normal(SPEC.dim).astype(np.float32) for name in SPEC.vector_names},
                                 {"isic_id": f"ISIC_{i:07d}", "fingerprint": SPEC.fingerprint}) for i in range(N)]
            del points[7].vectors["q_deltaB"]  # a whole-point upsert without one vector stores none
            store.upsert(points)
        del front.requests[:]

        report = check_collection(settings, "lesions")
        assert "points missing the named vector 'q_deltaB': 1: ISIC_0000007" in report.findings
        assert not any("named vector 'image'" in f or "named vector 'q_areaMM2'" in f for f in report.findings)
        reads = front.sent("POST", "/points/scroll") + front.sent("POST", "/points")
        assert reads, "check reads the points"
        asked_vectors = [r.body.get("with_vector") for r in reads if r.body.get("with_vector")]
        assert asked_vectors == [], f"check asked for vectors: {asked_vectors}"
        # Every point's payload once, no vector: 40 points x 64 floats x 3 names would be ~170 KB.
        assert sum(r.answer_bytes for r in reads) < 20_000
