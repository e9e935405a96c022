"""Which Parquet files of a catalog table are live: the table folder's files minus those a
compaction superseded, plus the compacted files (platform/catalog_compact.py).

Each table folder may hold `_manifest.json`, replaced atomically by a compaction:

    {"compacted": ["_compacted/<stem>.parquet", ...],
     "current": "_compacted/<stem>.current.parquet" or null,
     "superseded": {"<file>.parquet": [size, mtime_ns, superseded_at, content_digest], ...}}

For the tables whose view keeps the latest row per key (lesions, ingest_runs), a compaction
writes the latest rows into one `current` file and the rest into another compacted file; the
view then only has to deduplicate keys that appear again in files written since.

A reader reads the manifest first, then lists the folder. A compaction writes its merged file
into `_compacted/` (outside the folder's `*.parquet` listing), then swaps the manifest, and only
later deletes what it superseded; so a reader sees either every small file or the merged file,
never both and never neither. A superseded entry names the file's size, mtime and content digest:
a file that a writer later rewrites under the same name (an idempotent retry) is a new file and
stays live, and the same file copied elsewhere with new mtimes (`cp -r`, tar, a restored backup)
is still recognised by its digest (read only when the size matches and the mtime does not).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dermground.platform.next_step import next_command

MANIFEST = "_manifest.json"
COMPACTED_DIR = "_compacted"
# In a compacted file: the stem of the file each row was written in. A writer's file name carries
# what the rows do not (the ingest partition: `<collection>--<partition_id>`), so `dermground check`
# and collection copies find a partition's rows by it once the file itself is merged and gone.
SOURCE_COLUMN = "_source_file"
SOURCE_ROW_COLUMN = "_source_row"  # the row's place in that file (the ledger hashes a partition's ids in order)
# The mtime_ns of that file when it was merged: a file written again under its name after a
# compaction (a partition committed again) is a newer write, whose rows replace the earlier ones.
SOURCE_WRITTEN_COLUMN = "_source_written"


@dataclass
class Manifest:
    """A table folder's compaction state (empty when it was never compacted)."""

    compacted: list[str] = field(default_factory=list)
    superseded: dict[str, list[int | str]] = field(default_factory=dict)
    current: str | None = None  # among `compacted`: the latest row per key at the compaction

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        return cls(list(data.get("compacted", [])), {k: list(v) for k, v in data.get("superseded", {}).items()},
                   data.get("current"))

    def write(self, folder: Path) -> None:
        """Replace the manifest atomically (temporary file, fsync, rename)."""
        tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump({"compacted": self.compacted, "current": self.current, "superseded": self.superseded}, out,
                      indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, folder / MANIFEST)


def file_identity(path: Path) -> list[int]:
    """What a superseded entry remembers of a file: [size, mtime_ns]."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def content_digest(data: bytes) -> str:
    """The digest a superseded entry keeps of the bytes a compaction merged."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def is_superseded(path: Path, entry: Sequence[int | str]) -> bool:
    """Whether `path` is the file a superseded entry names: the same size and mtime, or, for a
    copy with new mtimes, the same size and content (for an entry written before the digest, the
    same write stamps as the merged rows). FileNotFoundError when it is gone."""
    identity = file_identity(path)
    if identity == list(entry[:2]):
        return True
    if identity[0] != entry[0]:
        return False
    if len(entry) < 4:  # an entry written before the digest: the merged rows' stamps tell
        return _rows_were_merged(path, entry)
    # Readers list the files before every query: a copy's files are hashed once per process.
    key = (str(path), *identity)
    digest = _COPY_DIGESTS.get(key)
    if digest is None:
        digest = content_digest(path.read_bytes())
        if len(_COPY_DIGESTS) >= 100_000:
            _COPY_DIGESTS.clear()
        _COPY_DIGESTS[key] = digest
    return digest == entry[3]


_COPY_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> content digest


def _rows_were_merged(path: Path, entry: Sequence[int | str]) -> bool:
    """For a superseded entry without a digest (a compaction by an earlier release) and a file of
    its size but another mtime (a copy of the catalog): whether the live compacted files hold this
    file's rows, told by their write stamps (written_at, committed_at, at). Every write stamps its
    rows with its own time, so a file written again under the name since is not taken for the one
    merged. Rows merged with their file's name (SOURCE_COLUMN) are compared with that file's rows
    only, and with the write the entry names (SOURCE_WRITTEN_COLUMN) where it is recorded."""
    from dermground.platform.catalog import _STAMP  # catalog imports this module

    key = (str(path), *file_identity(path))
    known = _COPY_MERGED.get(key)
    if known is not None:
        return known
    stamp = _STAMP.get(path.parent.name)
    try:
        mine = Counter(_stamps(pq.read_table(path, columns=[stamp]), stamp)) if stamp else Counter()
    except (pa.ArrowException, OSError):  # not a catalog file: not what a compaction merged
        mine = Counter()
    traced: list[int] = []
    untraced: list[int] = []
    for name in Manifest.read(path.parent).compacted if mine else []:
        rows = _merged_stamps(path.parent / name, stamp)
        untraced.extend(_stamps(rows, stamp))
        if SOURCE_COLUMN not in rows.column_names:
            continue
        rows = rows.filter(pc.equal(rows.column(SOURCE_COLUMN), path.stem))
        if SOURCE_WRITTEN_COLUMN in rows.column_names:
            rows = rows.filter(pc.equal(rows.column(SOURCE_WRITTEN_COLUMN), int(entry[1])))
        traced.extend(_stamps(rows, stamp))
    # Rows merged under this file's name, else (merged without names, or merged again under an
    # earlier compacted file's name) among all merged rows.
    found = bool(mine) and mine <= Counter(traced or untraced)
    _COPY_MERGED[key] = found
    return found


def _stamps(rows: pa.Table, stamp: str) -> list[int]:
    return rows.column(stamp).cast(pa.int64()).to_pylist()


def _merged_stamps(path: Path, stamp: str) -> pa.Table:
    """A compacted file's write stamps and row origins, read once per process (the files are immutable)."""
    key = (str(path), *file_identity(path))
    rows = _MERGED_STAMPS.get(key)
    if rows is None:
        names = pq.ParquetFile(path).schema_arrow.names
        rows = pq.read_table(path, columns=[c for c in (stamp, SOURCE_COLUMN, SOURCE_WRITTEN_COLUMN) if c in names])
        if len(_MERGED_STAMPS) >= 64:
            _MERGED_STAMPS.clear()
        _MERGED_STAMPS[key] = rows
    return rows


_COPY_MERGED: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) -> its rows were merged
_MERGED_STAMPS: dict[tuple[str, int, int], pa.Table] = {}  # (compacted path, size, mtime_ns) -> stamps


@dataclass(frozen=True)
class LiveParts:
    """A table's live files: the compacted current file (latest row per key), the other compacted
    files, and the files written since the last compaction."""

    current: Path | None
    older: list[Path]
    recent: list[Path]

    @property
    def all(self) -> list[Path]:
        return ([self.current] if self.current else []) + self.older + self.recent


class MissingCatalogFile(FileNotFoundError):
    """A compacted file the table's manifest names is gone: the rows merged into it cannot be read."""


def live_parts(folder: Path) -> LiveParts:
    """The live files of a table folder, by part (see LiveParts). MissingCatalogFile when a
    compacted file the manifest names is missing (a compaction never deletes a live one)."""
    manifest = Manifest.read(folder)  # first the manifest, then the listing: see the module docstring
    missing = [name for name in manifest.compacted if not (folder / name).is_file()]
    if missing:
        shown = ", ".join(f"{folder.name}/{name}" for name in missing)
        raise MissingCatalogFile(
            f"the catalog at {folder.parent} is missing {shown}, a compacted file that {folder.name}/{MANIFEST} "
            f"names: the rows merged into it cannot be read, and no view of the catalog opens without it. "
            f"Restore the catalog folder from a backup that holds its {COMPACTED_DIR}/ folders (a copy of a "
            f"catalog must take them along), then run `{next_command('check')}`")
    recent = _listed(folder, manifest)
    current = folder / manifest.current if manifest.current else None
    older = [folder / name for name in manifest.compacted if name != manifest.current]
    return LiveParts(current, older, recent)


def live_files(folder: Path) -> list[Path]:
    """The Parquet files a view of this table reads now (empty when there are none)."""
    return live_parts(folder).all


def _listed(folder: Path, manifest: Manifest) -> list[Path]:
    files = []
    for path in sorted(folder.glob("*.parquet")):
        gone = manifest.superseded.get(path.name)
        try:
            if gone is not None and is_superseded(path, gone):
                continue
            if not_a_catalog_file(path) is not None:
                continue
        except FileNotFoundError:  # deleted after its grace period, between listing and stat
            continue
        files.append(path)
    return files


class ForeignCatalogFile(UserWarning):
    """A file in a table folder that no catalog writer wrote: the views, `check` and compaction leave it out."""


def not_a_catalog_file(path: Path) -> str | None:
    """Why `path`, a `*.parquet` file in a table folder, holds no rows of that table (None when it
    does): not Parquet, or without a column named as the table's write stamp (written_at,
    committed_at, at), which every catalog writer has filled since the first release. Someone's own file dropped there would
    otherwise count as rows of NULLs in every view (a file that is no Parquet failed them all), and
    a compaction would merge it and delete it. Warns (ForeignCatalogFile) once per file and process."""
    from dermground.platform.catalog import _STAMP  # catalog imports this module

    key = (str(path), *file_identity(path))
    if key in _FOREIGN:
        return _FOREIGN[key]
    stamp = _STAMP.get(path.parent.name)
    footer = _parquet_footer(path) if not path.is_dir() else None
    reason: str | None = None
    if path.is_dir():
        reason = "a folder (a data set another tool wrote?), not a Parquet file"
    elif footer is None:
        reason = "not a Parquet file: no PAR1 marks at its start and end"
    elif stamp is not None and _thrift_string(stamp) not in footer:
        reason = f"no {stamp} column, so no {path.parent.name} rows written by dermground"
    if reason is not None:
        # Named after the catalog, not after this line: the CLI prints it as it is.
        warnings.warn_explicit(f"{path} is not a catalog file ({reason}): every view, `dermground check` and "
                               "`catalog compact` leave it out; move it out of the catalog folder",
                               ForeignCatalogFile, filename="dermground catalog", lineno=0)
    if len(_FOREIGN) >= 100_000:
        _FOREIGN.clear()
    _FOREIGN[key] = reason
    return reason


_FOREIGN: dict[tuple[str, int, int], str | None] = {}  # (path, size, mtime_ns) -> why it is no catalog file


def _parquet_footer(path: Path) -> bytes | None:
    """A Parquet file's footer (its schema, Thrift-encoded), None when the file is no Parquet. Read
    by hand: pyarrow's reader costs about 1 ms a file, and each `dermground sql` lists every file of
    a catalog (thousands before a compaction) once."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < 12:
            return None
        head = file.read(4)
        file.seek(size - 8)
        tail = file.read(8)
        length = int.from_bytes(tail[:4], "little")
        if head != b"PAR1" or tail[4:] != b"PAR1" or length > size - 12:
            return None
        file.seek(size - 8 - length)
        return file.read(length)


def _thrift_string(text: str) -> bytes:
    """`text` as the footer stores a column name (Thrift compact protocol: varint length, UTF-8):
    every file holding the column holds these bytes."""
    data = text.encode()
    length, prefix = len(data), bytearray()
    while length > 0x7F:
        prefix.append(length & 0x7F | 0x80)
        length >>= 7
    prefix.append(length)
    return bytes(prefix) + data


def foreign_files(folder: Path) -> list[tuple[Path, str]]:
    """The `*.parquet` files of a table folder that are no catalog files, with the reason."""
    found = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            reason = not_a_catalog_file(path)
        except FileNotFoundError:
            continue
        if reason is not None:
            found.append((path, reason))
    return found


def rows_by_source(folder: Path, columns: Sequence[str] | None = None, prefix: str = "") -> dict[str, pa.Table]:
    """A table's live rows (`columns` of them, or all), by the stem of the file they were written
    in, for the stems that start with `prefix`, in the order they were written: a live file's own
    rows, else the rows a compaction merged from that file (SOURCE_COLUMN; rows merged before it
    existed go under the merged file's stem). Of a file written more than once under its name, only
    the last write's rows count, as when the file itself is read: a live file wins over merged
    rows, and of rows merged from several writes (compacted, written again, compacted again) the
    latest write's (SOURCE_WRITTEN_COLUMN; merged before it existed counts as older)."""
    from dermground.platform.catalog import _STAMP  # catalog imports this module

    wanted = list(columns) if columns is not None else None
    stamp = _STAMP.get(folder.name)
    found: dict[str, list[pa.Table]] = {}
    parts = live_parts(folder)
    for path in ([parts.current] if parts.current else []) + parts.older:
        names = pq.ParquetFile(path).schema_arrow.names
        if SOURCE_COLUMN not in names:
            if path.stem.startswith(prefix):
                found.setdefault(path.stem, []).append(pq.read_table(path, columns=wanted))
            continue
        written = [SOURCE_WRITTEN_COLUMN] if SOURCE_WRITTEN_COLUMN in names else []
        # The write stamp tells writes apart where the merge did not record them (_latest_write).
        stamped = [stamp] if stamp in names and wanted is not None and stamp not in wanted else []
        data = pq.read_table(path, columns=None if wanted is None else [*wanted, SOURCE_COLUMN, SOURCE_ROW_COLUMN,
                                                                          *written, *stamped])
        if not written:
            data = data.append_column(SOURCE_WRITTEN_COLUMN, pa.array([0] * data.num_rows, pa.int64()))
        sources = data.column(SOURCE_COLUMN)
        for stem in pc.unique(sources).to_pylist():
            if stem is not None and stem.startswith(prefix):
                found.setdefault(stem, []).append(data.filter(pc.equal(sources, stem)))
    merged = {stem: _in_written_order(pa.concat_tables(tables), stamp,
                                      drop=[stamp] if wanted is not None and stamp not in wanted else [])
              for stem, tables in found.items()}
    for path in parts.recent:
        if path.stem.startswith(prefix):
            merged[path.stem] = pq.read_table(path, columns=wanted)
    return merged


def _in_written_order(rows: pa.Table, stamp: str | None, drop: Sequence[str] = ()) -> pa.Table:
    """Merged rows of one source file, of its latest write only, back in that file's order and
    without the source columns (nor the columns in `drop`)."""
    if SOURCE_ROW_COLUMN not in rows.column_names:
        return rows.drop_columns([c for c in drop if c in rows.column_names])
    written = rows.column(SOURCE_WRITTEN_COLUMN)
    rows = rows.filter(pc.equal(written, pc.max(written)))
    if pc.max(written).as_py() == 0 and stamp is not None and stamp in rows.column_names:
        rows = _latest_write(rows, stamp)
    return rows.sort_by(SOURCE_ROW_COLUMN).drop_columns([SOURCE_COLUMN, SOURCE_ROW_COLUMN, SOURCE_WRITTEN_COLUMN,
                                                         *(c for c in drop if c in rows.column_names)])


def _latest_write(rows: pa.Table, stamp: str) -> pa.Table:
    """Of one file's rows merged without the write they came from (SOURCE_WRITTEN_COLUMN: every
    compaction by a release before it), those of its latest write. A file written again under its
    name (a partition committed again) and merged again shows as repeated places in the file; each
    write stamps all its rows with its own time, so the latest write is the rows of the latest
    stamp, when those fill the places 0..n-1 once each. Anything else is kept as it is."""
    places = rows.column(SOURCE_ROW_COLUMN)
    if pc.count_distinct(places).as_py() == rows.num_rows:
        return rows  # one write
    latest = rows.filter(pc.equal(rows.column(stamp), pc.max(rows.column(stamp))))
    own = sorted(latest.column(SOURCE_ROW_COLUMN).to_pylist())
    return latest if own == list(range(len(own))) else rows
