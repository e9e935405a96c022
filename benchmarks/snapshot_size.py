"""Snapshot size and restore cost: portable point export vs the engine folder written out as a tar.

Builds an embedded collection shaped like the demo's (N points x 17 named vectors of the tiny
model's width, real payload schema), then measures in one run: the fresh collection's disk usage,
the old engine-folder tar (its sparse files written out whole, as `tar` without sparse support
does), the portable snapshot, and the disk usage of a version restored from that snapshot.

    .venv/bin/python benchmarks/snapshot_size.py [--n 2400] [--dim 128]
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from harness import machine_line, timed

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.store import DEFAULT_VECTOR_NAMES, CollectionSpec, StorePoint, build_payload, point_id
from dermground.platform.store.edge_versions import EdgeCollections, disk_usage
from dermground.platform.store.snapshots import human_bytes, load_snapshot, open_snapshot, write_snapshot
from dermground.platform.store.versions import BUILDING, VersionMeta


def _points(n: int, dim: int, fingerprint: str) -> list[StorePoint]:
    rng = np.random.default_rng(0)
    points = []
    for i in range(n):
        record = {"isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 120:04d}", "split": ("train", "test")[i % 5 == 0],
                  "image_ref": f"hdf5:train-image.hdf5#ISIC_{i:07d}", "age_approx": float(20 + i % 60),
                  "sex": ("male", "female")[i % 2], "anatom_site_general": "posterior torso", "target": 0,
                  **{a.name: float(rng.uniform(a.low, a.high)) for a in ATTRIBUTES}}
        vectors = {name: rng.normal(size=dim).astype(np.float32) for name in DEFAULT_VECTOR_NAMES}
        points.append(StorePoint(point_id(record["isic_id"]), vectors, build_payload(record, fingerprint)))
    return points


def _restore(cols: EdgeCollections, archive: Path, staging: Path):  # noqa: ANN202 - (verified snapshot, version)
    """Verify the archive and load it into a new version (what `snapshot restore` does before switching)."""
    verified = open_snapshot(archive, staging)
    restored_version = cols.create_version("demo", VersionMeta(state=BUILDING))
    with cols.open_version("demo", restored_version) as store:
        load_snapshot(verified, store)
    return verified, restored_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2400, help="points (the demo ingests 2,400 images)")
    parser.add_argument("--dim", type=int, default=128, help="vector width (the tiny model's: 128)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="snapbench-") as tmp:
        root = Path(tmp)
        cols = EdgeCollections(root / "qdrant")
        version = cols.create_version("demo", VersionMeta(state=BUILDING))
        with cols.open_version("demo", version) as store:
            store.ensure_collection(CollectionSpec(dim=args.dim, fingerprint="fp-bench"))
            points = _points(args.n, args.dim, "fp-bench")
            for start in range(0, len(points), 500):
                store.upsert(points[start:start + 500])
        fresh = disk_usage(root / "qdrant" / f"demo__{version}")
        raw = args.n * len(DEFAULT_VECTOR_NAMES) * args.dim * 4

        engine_tar = root / "engine-folder.tar"  # what `snapshot create` wrote before
        with tarfile.open(engine_tar, "w") as tar:
            tar.add(root / "qdrant" / f"demo__{version}", arcname=".")
        with cols.open_version("demo", version) as store:
            snapshot_s, archive = timed(lambda: write_snapshot(store, root / "snapshots", "demo"))
        restore_s, (verified, restored_version) = timed(lambda: _restore(cols, archive, root / "staging"))
        verified.cleanup()
        restored = disk_usage(root / "qdrant" / f"demo__{restored_version}")
        snap = archive.stat().st_size
        print(machine_line())
        print(f"snapshot_size: {args.n} points x {len(DEFAULT_VECTOR_NAMES)} vectors x {args.dim}-d")
        print(f"  raw float32 vectors            {human_bytes(raw):>10}")
        print(f"  fresh collection on disk       {human_bytes(fresh):>10}")
        print(f"  engine-folder tar (before)     {human_bytes(engine_tar.stat().st_size):>10}  "
              f"{engine_tar.stat().st_size / fresh:6.1f}x the collection")
        print(f"  portable snapshot (now)        {human_bytes(snap):>10}  {snap / fresh:6.2f}x the collection, "
              f"{snap / raw:.2f}x the raw vectors  (written in {snapshot_s:.1f} s)")
        print(f"  restored version on disk       {human_bytes(restored):>10}  {restored / fresh:6.2f}x a fresh one  "
              f"(verified + loaded in {restore_s:.1f} s)")


if __name__ == "__main__":
    main()
