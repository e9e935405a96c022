"""`check_collection`: prove that a collection in the vector store and the catalog agree.

Findings (any one means the two disagree and `dermground check` exits non-zero):
- catalog ids missing from the store, store points absent from the catalog (phantoms);
- a point whose id is not uuid5 of its isic_id, two points with one isic_id, duplicate catalog
  rows;
- a point missing a named vector or a payload key, or stamped with another model's fingerprint;
- payload indexes the schema names that the collection lacks (a server collection whose creation
  was killed before them);
- a ledger partition whose catalog file is missing or holds other ids than its latest commit recorded
  (rows a compaction merged are traced to their partition's file; rows merged without that record,
  by a compaction of an older release, are counted together, by number),
  catalog rows no committed partition accounts for (an interrupted run: rerun the ingest).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from dermground.ingest.partitions import ids_hash
from dermground.ingest.writer import catalog_file_name
from dermground.platform.catalog import Catalog
from dermground.platform.catalog_files import foreign_files, live_files, rows_by_source
from dermground.platform.ingest_activity import active_ingests
from dermground.platform.next_step import next_command
from dermground.platform.settings import Settings
from dermground.platform.store import StoreLockedError, VectorStore, open_collections, open_store, point_id
from dermground.platform.store.brief_hold import held_briefly
from dermground.platform.store.versions import BUILDING, Collections, VersionMeta, split_physical
from dermground.platform.store.schema import PAYLOAD_KEYS

_MAX_LISTED = 5  # ids named per finding; the count says how many there are


@dataclass
class CheckReport:
    """Counts on both sides and every disagreement found."""

    collection: str
    store_points: int = 0
    catalog_rows: int = 0
    ledger_partitions: int = 0
    ledger_points: int = 0
    findings: list[str] = field(default_factory=list)
    store_missing: bool = False  # the store has no such collection

    @property
    def unknown_collection(self) -> bool:
        """Neither the store nor the catalog knows the collection: a wrong name, not a disagreement."""
        return (self.store_missing and self.catalog_rows == 0 and self.ledger_partitions == 0
                and len(self.findings) == 1)

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, what: str, ids: list[str] | set[str]) -> None:
        if ids:
            listed = sorted(ids)
            more = f" (+{len(listed) - _MAX_LISTED} more)" if len(listed) > _MAX_LISTED else ""
            self.findings.append(f"{what}: {len(listed)}: {', '.join(listed[:_MAX_LISTED])}{more}")


def check_collection(settings: Settings, collection: str) -> CheckReport:
    """Compare the store's collection with the catalog's lesions rows and ingest ledger."""
    report = CheckReport(collection)
    catalog = Catalog(settings.catalog_dir)
    with held_briefly("check"), open_collections(settings) as collections:
        collection = collections.resolve(collection)  # the live version: the catalog names it so
        _refuse_while_ingesting(settings, catalog, collection)
        try:
            with open_store(settings, collection) as store:
                store_ids = _check_store(store, collection, report)
        except StoreLockedError:
            if settings.qdrant_url:
                raise
            store_ids = _check_copy(collections, collection, report)
    rows = catalog.query("SELECT isic_id FROM lesions WHERE collection = ?", [collection])
    catalog_ids = [str(r["isic_id"]) for r in rows]
    report.catalog_rows = len(catalog_ids)
    report.add("duplicate isic_ids in the catalog's lesions view", _repeated(catalog_ids))
    catalog_set = set(catalog_ids)
    report.add("in the catalog but missing from the store", catalog_set - store_ids)
    report.add("in the store but not in the catalog (phantom points)", store_ids - catalog_set)
    for table in ("lesions", "ingest_partitions"):
        report.add(f"files in catalog/{table} that are not catalog files (left out of every view: move them out "
                   "of the catalog folder)", {f"{path.name} ({why})" for path, why in foreign_files(catalog.dir / table)})
    ledger_ids = _check_ledger(catalog, collection, report)
    report.add("catalog rows of no committed partition (an interrupted ingest: rerun it)", catalog_set - ledger_ids)
    report.add("committed by the ledger but missing from the store", ledger_ids - store_ids)
    if report.store_points != report.catalog_rows:
        report.findings.append(f"counts differ: store {report.store_points} points, catalog {report.catalog_rows} rows")
    _refuse_while_ingesting(settings, catalog, collection)  # one that began meanwhile: its rows may be half there
    return report


def _refuse_while_ingesting(settings: Settings, catalog: Catalog, physical: str) -> None:
    """StoreLockedError naming the ingest that writes the version now: its partition in progress
    (points stored, catalog rows and ledger not yet) would read as findings of an interrupted run."""
    writers = active_ingests(catalog, settings.home, physical)
    if writers:
        name, version = split_physical(physical)
        raise StoreLockedError(
            f"version {version} of {name!r} is being written by {'; '.join(w.describe() for w in writers)}: a "
            f"check now would report the partition it is writing as findings. Run "
            f"`{next_command(f'check --collection {name}')}` again once that ingest has finished (it says "
            "\"ingested N, ...\").")


def _check_copy(collections: Collections, physical: str, report: CheckReport) -> set[str]:
    """The embedded engine has one opener: check a copy of a version another process holds (`serve`;
    sparse files stay sparse, as `snapshot create` does), then drop the copy."""
    name, version = split_physical(physical)
    scratch = collections.create_version(name, VersionMeta(source=f"check of {version}", state=BUILDING))
    try:
        collections.copy_points(name, version, scratch)
        with collections.open_version(name, scratch) as store:
            return _check_store(store, physical, report)
    finally:
        collections.drop(name, scratch)


def _check_store(store: VectorStore, collection: str, report: CheckReport) -> set[str]:
    isic_ids: list[str] = []
    bad_id: list[str] = []
    missing_vectors: dict[str, list[str]] = {}
    missing_keys: dict[str, list[str]] = {}
    other_model: list[str] = []
    spec = store.describe()
    if spec is None:
        report.store_missing = True
        report.findings.append(f"collection {collection!r} does not exist in the store")
        return set()
    report.store_points = store.count()
    unindexed = store.missing_payload_indexes()
    if unindexed:
        report.findings.append(
            f"payload indexes missing on {len(unindexed)} field(s): {', '.join(unindexed[:_MAX_LISTED])}"
            f"{' ...' if len(unindexed) > _MAX_LISTED else ''} (its creation was interrupted; filtered searches "
            f"scan every point): run `{next_command(f'ingest --data DIR --collection {split_physical(collection)[0]}')}` "
            "again, which creates them")
    # No vectors here: the store names the points missing one (read every vector of 400k points of the
    # 2B model and the answers of a Qdrant server add up to tens of GB of JSON).
    for point in store.iter_points(page_size=1000, with_payload=True):
        payload = point.payload or {}
        isic_id = str(payload.get("isic_id", f"<no isic_id: point {point.id}>"))
        isic_ids.append(isic_id)
        if "isic_id" not in payload or point.id != point_id(isic_id):
            bad_id.append(isic_id)
        for key in PAYLOAD_KEYS:
            if key not in payload:
                missing_keys.setdefault(key, []).append(isic_id)
        if payload.get("fingerprint") != spec.fingerprint:
            other_model.append(isic_id)
    for name in spec.vector_names:
        for point in store.points_missing_vector(name):
            missing_vectors.setdefault(name, []).append(
                str((point.payload or {}).get("isic_id", f"<no isic_id: point {point.id}>")))
    if len(isic_ids) != report.store_points:
        report.findings.append(f"the store counts {report.store_points} points but scrolls {len(isic_ids)}")
    report.add("points whose id is not uuid5 of their isic_id", bad_id)
    report.add("isic_ids held by more than one point", _repeated(isic_ids))
    for name, ids in sorted(missing_vectors.items()):
        report.add(f"points missing the named vector {name!r}", ids)
    for key, ids in sorted(missing_keys.items()):
        report.add(f"points missing the payload key {key!r}", ids)
    report.add(f"points not stamped with the collection's model fingerprint {spec.fingerprint}", other_model)
    return set(isic_ids)


def _check_ledger(catalog: Catalog, collection: str, report: CheckReport) -> set[str]:
    """Every committed partition's lesions file must exist and hold the ids the ledger hashed."""
    # A partition's latest commit: one is committed again when a record it quarantined was fixed
    # (ingest/pipeline.py), and after a compaction the earlier ledger row stays beside the new one.
    rows = catalog.query("SELECT partition_id, n_points, ids_hash FROM ingest_partitions WHERE collection = ? "
                         "QUALIFY row_number() OVER (PARTITION BY partition_id ORDER BY committed_at DESC) = 1",
                         [collection])
    report.ledger_partitions = len(rows)
    ids: set[str] = set()
    broken: list[str] = []
    unfiled: list[dict] = []
    # Each partition's rows by the file the writer named after it, also once a compaction merged it.
    folder = catalog.dir / "lesions"
    written = rows_by_source(folder, ["isic_id"], prefix=catalog_file_name(collection, "")) if folder.is_dir() else {}
    for row in rows:
        report.ledger_points += int(row["n_points"])
        part = written.get(catalog_file_name(collection, str(row["partition_id"])))
        if part is None:
            if row["n_points"]:
                unfiled.append(row)
            continue
        part_ids = [str(x) for x in part.column("isic_id").to_pylist()]
        if len(part_ids) != row["n_points"] or ids_hash(part_ids) != row["ids_hash"]:
            broken.append(f"{row['partition_id']} (lesions file differs from the ledger)")
        ids.update(part_ids)
    if unfiled:
        # A compaction merges partitions' files (and a restore or a seeded version carries merged
        # ones under another name): their rows count together, by number, not partition by partition.
        merged = _rows_outside_partition_files(catalog, collection) - ids
        if len(merged) == sum(int(r["n_points"]) for r in unfiled):
            ids.update(merged)
        else:
            broken.extend(f"{r['partition_id']} (no lesions file)" for r in unfiled)
    report.add("ledger partitions without their catalog rows", broken)
    return ids


def _rows_outside_partition_files(catalog: Catalog, collection: str) -> set[str]:
    """isic_ids of the collection's lesions rows in live files other than its partitions' own
    (`<collection>--<partition_id>`): compacted files, and rows carried as `<collection>--_<file>`."""
    folder = catalog.dir / "lesions"
    own = f"{collection}--"
    found: set[str] = set()
    for path in live_files(folder) if folder.is_dir() else []:
        if path.parent == folder and path.stem.startswith(own) and not path.stem[len(own):].startswith("_"):
            continue  # a partition's own file: checked against its ledger row by name
        table = pq.read_table(path, columns=["isic_id", "collection"])
        found.update(str(i) for i, c in zip(table.column("isic_id").to_pylist(),
                                            table.column("collection").to_pylist(), strict=True) if c == collection)
    return found


def _repeated(values: list[str]) -> set[str]:
    return {value for value, n in Counter(values).items() if n > 1}
