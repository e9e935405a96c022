"""The idempotent partition writer: store upsert, then catalog rows, then the ledger row.

A partition counts only when its ledger file exists, and that file is written last. Every step
can be repeated: point ids are uuid5 of isic_id (a re-upsert replaces the point) and the
catalog files of a partition have deterministic names (a rewrite replaces its own file), so a
run killed anywhere resumes to exactly the same collection and catalog.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dermground.ingest.partitions import Partition, ids_hash
from dermground.platform.catalog import TABLES, Catalog
from dermground.platform.records import LesionRecord
from dermground.platform.store import StorePoint, VectorStore, build_payload, point_id

# Test hook for crash windows: "<point>:<n>" SIGKILLs this process at <point> of the n-th partition
# it writes (1-based). Points: after_upsert, after_catalog, after_ledger.
CRASH_ENV = "DERMGROUND_TEST_CRASH_AT"
CRASH_POINTS = ("after_upsert", "after_catalog", "after_ledger")
_LESION_COLUMNS = tuple(TABLES["lesions"].names)


@dataclass(frozen=True)
class Rejection:
    """A row that will not be ingested: quarantined with the field at fault and why."""

    isic_id: str
    field: str
    reason: str


@dataclass(frozen=True)
class ReadyRecord:
    """A record whose payload is built and whose image goes to the embedding actors."""

    record: LesionRecord
    payload: dict[str, object]


@dataclass(frozen=True)
class PartitionResult:
    n_points: int
    n_quarantined: int


def record_payload(record: LesionRecord, fingerprint: str) -> dict[str, object]:
    """The point payload of a reader record (raises PayloadError naming the field)."""
    source: dict[str, object] = {"isic_id": record.isic_id, "patient_id": record.patient_id,
                                 "split": record.split, "image_ref": record.image_ref,
                                 **record.metadata, **record.attributes}
    return build_payload(source, fingerprint)


def catalog_file_name(collection: str, partition_id: str) -> str:
    """The deterministic file stem of a partition's catalog files (lesions, quarantine, ledger)."""
    return f"{collection}--{partition_id}"


class PartitionWriter:
    """Commits embedded partitions into one collection (store + catalog + ledger), from the driver."""

    def __init__(self, store: VectorStore, catalog: Catalog, collection: str, fingerprint: str, run_id: str) -> None:
        self.store = store
        self.catalog = catalog
        self.collection = collection
        self.fingerprint = fingerprint
        self.run_id = run_id
        self._written = 0
        self._crash_at = _parse_crash_hook(os.environ.get(CRASH_ENV, ""))

    def write(self, partition: Partition, ready: Sequence[ReadyRecord], rejections: Sequence[Rejection],
              vectors: Mapping[str, np.ndarray], errors: Mapping[str, str], vector_names: Sequence[str],
              ) -> PartitionResult:
        """Commit one partition. `vectors[isic_id]` is [len(vector_names), d]; `errors[isic_id]`
        (non-empty) rejects that record's image. Returns what was stored and quarantined."""
        self._written += 1
        quarantined = list(rejections)
        points: list[StorePoint] = []
        rows: list[dict[str, object]] = []
        for item in ready:
            isic_id = item.record.isic_id
            error = errors.get(isic_id, "no embedding came back for this record")
            if error:
                quarantined.append(Rejection(isic_id, "image", error))
                continue
            stacked = vectors[isic_id]
            points.append(StorePoint(point_id(isic_id), {n: stacked[k] for k, n in enumerate(vector_names)},
                                     item.payload))
            row = {c: item.payload[c] for c in _LESION_COLUMNS if c in item.payload}
            rows.append({**row, "collection": self.collection, "run_id": self.run_id})
        name = catalog_file_name(self.collection, partition.partition_id)
        if points:
            self.store.upsert(points, wait=True)  # all named vectors of a point in one call
        self._maybe_crash("after_upsert")
        if rows:
            self.catalog.append("lesions", rows, name=name)
        if quarantined:
            self.catalog.append("quarantine", [
                {"collection": self.collection, "run_id": self.run_id, "isic_id": r.isic_id, "field": r.field,
                 "reason": r.reason} for r in quarantined], name=name)
        self._maybe_crash("after_catalog")
        ingested_ids = [str(r["isic_id"]) for r in rows]
        self.catalog.append("ingest_partitions", [{
            "run_id": self.run_id, "collection": self.collection, "partition_id": partition.partition_id,
            "n_points": len(rows), "ids_hash": ids_hash(ingested_ids)}], name=name)
        self._maybe_crash("after_ledger")
        return PartitionResult(len(rows), len(quarantined))

    def _maybe_crash(self, point: str) -> None:
        if self._crash_at == (point, self._written):
            os.kill(os.getpid(), signal.SIGKILL)


def _parse_crash_hook(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    point, _, nth = value.partition(":")
    if point not in CRASH_POINTS or not nth.isdigit():
        raise ValueError(f"{CRASH_ENV}={value!r}: expected <point>:<n> with point one of {CRASH_POINTS}")
    return point, int(nth)


def committed_partitions(catalog: Catalog, collection: str, fingerprint: str) -> dict[str, int]:
    """The ledger of a collection for one model: partition_id -> number of points it committed.

    Only runs with the same model fingerprint count: a collection dropped and re-created for
    another model must re-embed everything, whatever an older run's ledger says.
    """
    rows = catalog.query("SELECT p.partition_id, max(p.n_points) AS n FROM ingest_partitions p "
                         "JOIN ingest_runs_history r ON p.run_id = r.run_id "
                         "WHERE p.collection = ? AND r.fingerprint = ? GROUP BY p.partition_id",
                         [collection, fingerprint])
    return {str(r["partition_id"]): int(r["n"]) for r in rows}
