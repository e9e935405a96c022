"""A home whose embedded store holds n ready one-point versions of `lesions`, v1 live: the smallest
set-up for the tests of version admin (drop, switch, their races and kills)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.settings import load_settings
from dermground.platform.store import CollectionSpec, StorePoint, build_payload, open_collections, point_id
from dermground.platform.store.versions import BUILDING, READY, VersionMeta


def home_with_versions(home: Path, n: int) -> None:
    """Versions v1..vn of `lesions` in `home`, each ready with one point; v1 is live."""
    spec = CollectionSpec(dim=4, fingerprint="fp", vector_names=("image",))
    record = {"isic_id": "ISIC_0000001", "patient_id": "IP_1", "split": "train", "image_ref": "/x.jpg",
              **{a.name: float(a.low + 1) for a in ATTRIBUTES}}
    with open_collections(load_settings(home=home)) as cols:
        for _ in range(n):
            version = cols.create_version("lesions", VersionMeta(state=BUILDING))
            with cols.open_version("lesions", version) as store:
                store.ensure_collection(spec)
                store.upsert([StorePoint(point_id("ISIC_0000001"), {"image": np.ones(4, dtype=np.float32)},
                                         build_payload(record, "fp"))])
            cols.write_meta("lesions", version, VersionMeta(state=READY, points=1))
        cols.switch("lesions", "v1")
