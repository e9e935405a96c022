"""`dermground catalog compact`: merge a table's small Parquet files into one, safely while readers run.

Ingest writes one lesions file and one ledger file per partition of 256 lesions: 400,000 lesions
are ~1,600 files per table, and every query then opens them all. Compaction, per table:

1. merges the live files smaller than `small_bytes` (rows unchanged, in file order) into
   `_compacted/<stem>.parquet`, written under a temporary name, renamed into place, and read back
   (its row count must equal the inputs'); for the tables whose view keeps the latest row per key
   (lesions, ingest_runs) it merges every live file into `<stem>.current.parquet` (the latest rows)
   and `<stem>.older.parquet` (the rest), so the view only deduplicates keys written since;
2. swaps the table's manifest (one atomic rename): the merged file becomes live and the inputs
   superseded (platform/catalog_files.py);
3. deletes superseded files only after `keep_s` seconds (a query or connection that listed them
   before the swap can still read them), on a later run.

One compaction at a time per catalog (a lock file); writers are never blocked. A compaction killed
before its swap leaves merged files no view reads (their inputs are still live): the next one deletes them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dermground.platform.catalog import _LATEST_BY, _STAMP, TABLES, CatalogError, conform_to_schema
from dermground.platform.catalog_files import (
    COMPACTED_DIR,
    SOURCE_COLUMN,
    SOURCE_ROW_COLUMN,
    SOURCE_WRITTEN_COLUMN,
    Manifest,
    content_digest,
    file_identity,
    is_superseded,
    live_parts,
)
from dermground.platform.crash_points import maybe_crash
from dermground.platform.lock_file import LockBusy, hold_lock
from dermground.platform.next_step import next_command

LOCK_FILE = ".compact.lock"
SMALL_BYTES = 64 * 1024 * 1024  # files at least this large are already compact
KEEP_S = 3600.0  # how long superseded files stay for readers that listed them before a swap


@dataclass
class TableCompaction:
    table: str
    files_merged: int = 0
    files_written: int = 0
    rows: int = 0
    files_deleted: int = 0


@dataclass
class CompactSummary:
    tables: list[TableCompaction] = field(default_factory=list)

    def __str__(self) -> str:
        merged = [t for t in self.tables if t.files_merged]
        parts = [f"{t.table}: {t.files_merged} files -> {t.files_written} ({t.rows} rows)" for t in merged]
        deleted = sum(t.files_deleted for t in self.tables)
        return ("; ".join(parts) or "nothing to merge") + f"; {deleted} superseded files deleted"


class CompactionBusy(RuntimeError):
    """Another compaction of the same catalog is running."""


@contextmanager
def hold_compaction_lock(catalog_dir: Path) -> Iterator[None]:
    """Hold the catalog's compaction lock for the block (its record names this process);
    CompactionBusy naming the process that holds it, which may be an ingest compacting at its
    finish as well as an admin's `dermground catalog compact`."""
    path = Path(catalog_dir) / LOCK_FILE
    try:
        lock = hold_lock(path)
    except OSError as exc:  # a read-only catalog (a backup's mount, an analyst's copy)
        raise CatalogError(f"cannot take the compaction lock {path} ({exc.strerror}): compacting writes merged "
                           f"files into the catalog folder, so run `{next_command('catalog compact')}` where "
                           "the catalog is writable. Nothing was changed") from None
    except LockBusy as busy:
        holder = busy.holder
        raise CompactionBusy(
            f"the catalog at {catalog_dir} is being compacted by pid {holder.get('pid', '?')} "
            f"(`{holder.get('command', '?')}`, since {holder.get('since', '?')}): one compaction runs at a "
            f"time. Wait for it to finish, then run `{next_command('catalog compact')}` again if files are "
            "left to merge") from None
    try:
        yield
    finally:
        lock.release()


def compact(catalog_dir: Path, *, tables: list[str] | None = None, small_bytes: int = SMALL_BYTES,
            keep_s: float = KEEP_S, min_files: int = 2) -> CompactSummary:
    """Compact the catalog's tables (all by default); returns what was merged and deleted."""
    catalog_dir = Path(catalog_dir)
    names = tables or list(TABLES)
    unknown = set(names) - set(TABLES)
    if unknown:
        raise CatalogError(f"unknown catalog table(s) {sorted(unknown)}; known: {', '.join(TABLES)}")
    summary = CompactSummary()
    if not catalog_dir.is_dir():
        return summary
    with hold_compaction_lock(catalog_dir):
        for table in names:
            folder = catalog_dir / table
            if folder.is_dir():
                summary.tables.append(_compact_table(folder, table, small_bytes, keep_s, min_files))
    return summary


def compact_if_fragmented(catalog_dir: Path, min_recent_files: int) -> CompactSummary | None:
    """Compact the tables holding at least `min_recent_files` (> 0) files written since their last
    compaction: what ingest runs at its finish (settings.catalog_auto_compact_files), because an
    analyst's query opens every file (an uncompacted catalog at the paper's scale answered 2-3.4x
    slower, docs/BENCHMARKS.md). None when no table does, or another compaction is running."""
    catalog_dir = Path(catalog_dir)
    if min_recent_files < 1:
        return None
    fragmented = [table for table in TABLES if (catalog_dir / table).is_dir()
                  and len(live_parts(catalog_dir / table).recent) >= min_recent_files]
    if not fragmented:
        return None
    try:
        return compact(catalog_dir, tables=fragmented)
    except CompactionBusy:
        return None  # an admin's compaction is on it


def _compact_table(folder: Path, table: str, small_bytes: int, keep_s: float, min_files: int) -> TableCompaction:
    result = TableCompaction(table)
    result.files_deleted = _delete_expired(folder, keep_s) + _delete_unswapped(folder)
    _add_missing_digests(folder)
    parts = live_parts(folder)
    latest_by = _LATEST_BY.get(table)
    if latest_by:
        # Every live file: the current file must hold the latest row of every key.
        inputs = parts.all
        if not inputs or (parts.current is not None and not parts.recent):
            return result
    else:
        inputs = [p for p in parts.all if p.stat().st_size < small_bytes]
        if len(inputs) < min_files:
            return result
    identities = {p: file_identity(p) for p in inputs}  # before reading: a rewrite after this stays live
    schema = TABLES[table]
    try:
        # Each file in the table's current schema: columns added since it was written are NULL.
        read = {p: _with_source(p, schema) for p in inputs}
        merged = pa.concat_tables([rows for rows, _ in read.values()])
    except CatalogError as exc:
        raise CatalogError(f"{exc}; nothing was changed") from None
    out_dir = folder / COMPACTED_DIR
    out_dir.mkdir(exist_ok=True)
    stem = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    if latest_by:
        current, older = _split_latest(merged, latest_by, _STAMP[table])
        written = [_write_verified(current, out_dir / f"{stem}.current.parquet", table)]
        if older.num_rows:
            written.append(_write_verified(older, out_dir / f"{stem}.older.parquet", table))
    else:
        written = [_write_verified(merged, out_dir / f"{stem}.parquet", table)]
    now = time.time()
    manifest = Manifest.read(folder)
    merged_names = {p.relative_to(folder).as_posix() for p in inputs}
    new_names = [p.relative_to(folder).as_posix() for p in written]
    manifest.compacted = [c for c in manifest.compacted if c not in merged_names] + new_names
    if latest_by:
        manifest.current = new_names[0]
    for path, identity in identities.items():
        # [size, mtime_ns, superseded_at, digest of the bytes merged]: readers compare the first two
        # (the digest when only the mtime differs: a copied catalog), deletion reads the third
        manifest.superseded[path.relative_to(folder).as_posix()] = [*identity, int(now), read[path][1]]
    maybe_crash("compact_merged")  # test hook: a kill between the merged files and the swap
    manifest.write(folder)  # the one atomic step that makes the merged files live
    result.files_merged, result.files_written, result.rows = len(inputs), len(written), merged.num_rows
    return result


def _with_source(path: Path, schema: pa.Schema) -> tuple[pa.Table, str]:
    """A file's rows in the table's schema, with the file they were written in, their place in it
    and that write's mtime (SOURCE_COLUMN, SOURCE_ROW_COLUMN, SOURCE_WRITTEN_COLUMN: kept from a
    compacted file, else this file's); and the digest of the bytes read."""
    mtime_ns = path.stat().st_mtime_ns  # before reading: a rewrite after this is merged by a later run
    raw = path.read_bytes()
    data = pq.read_table(pa.BufferReader(raw))
    rows = conform_to_schema(data, schema, str(path))
    if SOURCE_COLUMN in data.column_names and SOURCE_ROW_COLUMN in data.column_names:
        source, place = data.column(SOURCE_COLUMN), data.column(SOURCE_ROW_COLUMN)
        # merged by a release before the column: older than any write merged since
        written = (data.column(SOURCE_WRITTEN_COLUMN) if SOURCE_WRITTEN_COLUMN in data.column_names
                   else pa.array([0] * data.num_rows, type=pa.int64()))
    else:
        source = pa.array([path.stem] * data.num_rows, type=pa.string())
        place = pa.array(range(data.num_rows), type=pa.int64())
        written = pa.array([mtime_ns] * data.num_rows, type=pa.int64())
    rows = (rows.append_column(SOURCE_COLUMN, source).append_column(SOURCE_ROW_COLUMN, place)
            .append_column(SOURCE_WRITTEN_COLUMN, written))
    return rows, content_digest(raw)


def _split_latest(merged: pa.Table, keys: tuple[str, ...], stamp: str) -> tuple[pa.Table, pa.Table]:
    """(the latest row per key, every other row), by the same rule as the table's view."""
    con = duckdb.connect(":memory:")
    try:
        con.register("merged", merged.append_column("__row", pa.array(range(merged.num_rows), pa.int64())))
        order = ", ".join(keys)
        flags = con.sql(f"SELECT __row FROM merged QUALIFY row_number() OVER (PARTITION BY {order} "
                        f"ORDER BY {stamp} DESC) = 1").to_arrow_table().column("__row")
    finally:
        con.close()
    latest = pc.is_in(pa.array(range(merged.num_rows), pa.int64()), value_set=flags)
    return merged.filter(latest), merged.filter(pc.invert(latest))


def _write_verified(data: pa.Table, target: Path, table: str) -> Path:
    """Write under a temporary name, fsync, rename into place, and check the row count read back."""
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp")
    pq.write_table(data, tmp, row_group_size=1_000_000)
    with open(tmp, "rb") as written:
        os.fsync(written.fileno())
    os.replace(tmp, target)
    if pq.ParquetFile(target).metadata.num_rows != data.num_rows:  # verify before anything is superseded
        target.unlink()
        raise CatalogError(f"{table}: the compacted file did not read back with {data.num_rows} rows; "
                           "nothing was changed")
    return target


def _add_missing_digests(folder: Path) -> None:
    """Give the superseded entries an earlier release wrote without a digest the digest of their
    file, while it is still the file merged: a copy of the catalog made later then recognises it
    by its bytes (platform/catalog_files.is_superseded)."""
    manifest = Manifest.read(folder)
    added = False
    for name, entry in manifest.superseded.items():
        if len(entry) != 3:
            continue
        try:
            raw = (folder / name).read_bytes()  # before the check: a rewrite since then fails it
            if is_superseded(folder / name, entry):
                entry.append(content_digest(raw))
                added = True
        except FileNotFoundError:
            pass
    if added:
        manifest.write(folder)


def _delete_unswapped(folder: Path) -> int:
    """Delete what a compaction killed before its manifest swap left in _compacted/ (called with the
    compaction lock held, so no compaction is writing there): merged files the manifest never named,
    whose rows are still live in the files they merged (the swap that would have superseded those
    never happened), and temporary files of a write cut short. Hidden from every view, they would
    hold their disk space for good."""
    out_dir = folder / COMPACTED_DIR
    if not out_dir.is_dir():
        return 0
    manifest = Manifest.read(folder)
    named = set(manifest.compacted) | set(manifest.superseded)
    deleted = 0
    for path in out_dir.iterdir():
        unswapped = path.suffix == ".parquet" and f"{COMPACTED_DIR}/{path.name}" not in named
        if path.is_file() and (unswapped or path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted


def _delete_expired(folder: Path, keep_s: float) -> int:
    """Delete files superseded more than keep_s ago: the file first, then its manifest entry."""
    manifest = Manifest.read(folder)
    now = time.time()
    expired = [name for name, entry in manifest.superseded.items() if len(entry) > 2 and now - entry[2] >= keep_s]
    deleted = 0
    for name in expired:
        path = folder / name
        try:
            if is_superseded(path, manifest.superseded[name]):
                path.unlink()
                deleted += 1
        except FileNotFoundError:
            pass
        del manifest.superseded[name]  # a file rewritten under this name since then is live and stays
    if expired:
        manifest.write(folder)
    return deleted
