"""Portable snapshots of a collection version: its points exported, never the engine's files.

    <name>-<version>-<time>.tar
        manifest.json                  format, spec, point count, sha256 + rows of every file
        points/part-00000.parquet      id, payload (JSON), one float32 list column per named vector
        attachments/...                files the caller adds (the catalog rows: platform/collection_ops.py)

A snapshot takes about the size of its vectors and payloads (the embedded engine's files are
mostly sparse: written out whole they were 80x larger), reads the same on every backend, and is
verified in full (every file's checksum, vector names and sizes, point ids, payloads, the count)
before anything is written to a store. Restores go into a new version: store/versions.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dermground.platform.crash_points import maybe_crash
from dermground.platform.next_step import next_command
from dermground.platform.store.base import CollectionSpec, StoreError, StorePoint, VectorStore
from dermground.platform.store.schema import point_id

FORMAT = "dermground-snapshot"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
POINTS_PER_FILE = 2000
_REQUIRED_PAYLOAD = ("isic_id", "fingerprint")


class SnapshotError(StoreError):
    """A snapshot cannot be read, does not verify, or cannot be written; nothing was changed."""


@dataclass
class VerifiedSnapshot:
    """A snapshot unpacked into `folder` and verified in full."""

    archive: Path
    folder: Path
    manifest: dict[str, object]
    spec: CollectionSpec
    points: int
    point_files: list[Path]
    attachments: dict[str, Path] = field(default_factory=dict)
    lock: int | None = None  # the held lock that marks `folder` as in use (see _new_work_folder)

    def iter_batches(self) -> Iterator[list[StorePoint]]:
        """The snapshot's points, one file at a time."""
        for path in self.point_files:
            yield _read_points(path, self.spec)

    def cleanup(self) -> None:
        if self.lock is not None:
            _release_work_folder(self.folder, self.lock)
            self.lock = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _points_table(points: Sequence[StorePoint], spec: CollectionSpec) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "id": pa.array([p.id for p in points], pa.string()),
        "payload": pa.array([json.dumps(p.payload, allow_nan=False) for p in points], pa.string()),
    }
    for name in spec.vector_names:
        values = [np.asarray(p.vectors[name], dtype=np.float32) if name in (p.vectors or {}) else None
                  for p in points]
        columns[name] = pa.array(values, pa.list_(pa.float32()))
    return pa.table(columns)


def write_snapshot(store: VectorStore, dest_dir: Path, label: str, *, meta: dict[str, object] | None = None,
                   attachments: Sequence[tuple[str, Path]] = (),
                   progress: Callable[[int], None] | None = None) -> Path:
    """Export every point of `store` (and the attachment files) into a new tar in `dest_dir`.

    The tar appears whole or not at all (written as .partial in a work folder, renamed when
    complete); a write that fails (a full disk) leaves nothing behind and raises SnapshotError."""
    spec = store.require_spec()
    dest_dir = Path(dest_dir)
    target = dest_dir / f"{label}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.tar"
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        _clear_dead_work(dest_dir, ".snapshot-")
        return _write_tar(store, spec, dest_dir, target, meta, attachments, progress)
    except OSError as exc:
        raise SnapshotError(f"cannot write the snapshot in {dest_dir}: {exc}. No snapshot was written and nothing "
                            "is left behind; free space there (or fix its permissions) and run it again") from None


def _write_tar(store: VectorStore, spec: CollectionSpec, dest_dir: Path, target: Path,
               meta: dict[str, object] | None, attachments: Sequence[tuple[str, Path]],
               progress: Callable[[int], None] | None) -> Path:
    """write_snapshot's work: points, manifest and the tar in a work folder (removed however this
    ends, or by the next snapshot when the process is killed), the tar renamed out when complete."""
    work, lock = _new_work_folder(dest_dir, ".snapshot-")
    try:
        partial = work / f"{target.name}.partial"
        (work / "points").mkdir()
        files: list[dict[str, object]] = []
        batch: list[StorePoint] = []
        total = 0

        def flush() -> None:
            nonlocal batch, total
            if not batch:
                return
            path = work / "points" / f"part-{len(files):05d}.parquet"
            pq.write_table(_points_table(batch, spec), path)
            files.append({"name": f"points/{path.name}", "rows": len(batch), "sha256": _sha256(path)})
            total += len(batch)
            if progress:
                progress(total)
            batch = []

        for point in store.iter_points(page_size=500, with_payload=True, with_vectors=True):
            batch.append(point)
            if len(batch) == POINTS_PER_FILE:
                flush()
        flush()
        attached = [{"name": f"attachments/{arcname}", "sha256": _sha256(path)} for arcname, path in attachments]
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_at": datetime.now(UTC).isoformat(),
                    "collection": store.collection, "spec": spec.to_dict(), "points": total,
                    "point_files": files, "attachments": attached, "meta": meta or {}}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
        with tarfile.open(partial, "w") as tar:
            tar.add(work / MANIFEST, arcname=MANIFEST)
            for entry in files:
                tar.add(work / str(entry["name"]), arcname=str(entry["name"]))
            for (arcname, path), entry in zip(attachments, attached, strict=True):
                tar.add(path, arcname=str(entry["name"]))
        maybe_crash("snapshot_written")
        partial.replace(target)
    finally:
        _release_work_folder(work, lock)
    return target


def _refuse(archive: Path, why: str) -> SnapshotError:
    return SnapshotError(f"snapshot {archive} refused: {why}. Nothing was changed; the live collection is as it was.")


def _convert_engine_folder(archive: Path, folder: Path) -> None:
    """An older release's snapshot (the embedded engine's folder: collection.json + shard/): export
    its points into this format in place, so that they are verified like any other snapshot's."""
    from dermground.platform.store.edge import EdgeStore

    engine = folder / ".engine"
    engine.mkdir()
    for name in ("collection.json", "shard"):
        (folder / name).rename(engine / name)
    try:
        spec = CollectionSpec.from_dict(json.loads((engine / "collection.json").read_text()))
        with EdgeStore(engine, "snapshot") as store:
            if store.describe() is None:
                raise _refuse(archive, "its engine folder holds no collection")
            (folder / "points").mkdir()
            files: list[dict[str, object]] = []
            points = list(store.iter_points(page_size=500, with_payload=True, with_vectors=True))
            for start in range(0, len(points), POINTS_PER_FILE):
                batch = points[start:start + POINTS_PER_FILE]
                path = folder / "points" / f"part-{len(files):05d}.parquet"
                pq.write_table(_points_table(batch, spec), path)
                files.append({"name": f"points/{path.name}", "rows": len(batch), "sha256": _sha256(path)})
    except SnapshotError:
        raise
    except (StoreError, OSError, ValueError, KeyError, TypeError) as exc:
        raise _refuse(archive, f"its engine folder (an older release's snapshot) cannot be read: {exc}") from None
    finally:
        shutil.rmtree(engine, ignore_errors=True)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_at": None, "collection": None,
                "spec": spec.to_dict(), "points": len(points), "point_files": files, "attachments": [],
                "meta": {"source": "engine-folder snapshot of an older release"}}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _manifest(archive: Path, folder: Path) -> dict[str, object]:
    path = folder / MANIFEST
    if not path.is_file() and (folder / "collection.json").is_file() and (folder / "shard").is_dir():
        _convert_engine_folder(archive, folder)
    if not path.is_file():
        raise _refuse(archive, f"no {MANIFEST}: not a dermground snapshot")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _refuse(archive, f"invalid metadata: {MANIFEST} is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise _refuse(archive, f"invalid metadata: {MANIFEST} is not an object")
    if manifest.get("format") != FORMAT:
        raise _refuse(archive, f"invalid metadata: field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _refuse(archive, f"invalid metadata: field 'format_version' is {manifest.get('format_version')!r}; "
                               f"this release reads version {FORMAT_VERSION}")
    points = manifest.get("points")
    if not isinstance(points, int) or isinstance(points, bool) or points < 0:
        raise _refuse(archive, f"invalid metadata: field 'points' must be a count, got {points!r}")
    for key in ("point_files", "attachments"):
        entries = manifest.get(key)
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                    and isinstance(e.get("sha256"), str) for e in entries):
            raise _refuse(archive, f"invalid metadata: field {key!r} must list files with name and sha256")
    return manifest


def _spec(archive: Path, manifest: dict[str, object]) -> CollectionSpec:
    try:
        spec = CollectionSpec.from_dict(manifest["spec"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise _refuse(archive, f"invalid metadata: field 'spec' ({type(exc).__name__}: {exc})") from None
    if not spec.vector_names or len(set(spec.vector_names)) != len(spec.vector_names):
        raise _refuse(archive, f"invalid metadata: vector names {list(spec.vector_names)}")
    return spec


def _checked_file(archive: Path, folder: Path, entry: dict[str, object]) -> Path:
    name = str(entry["name"])
    path = (folder / name).resolve()
    if folder.resolve() not in path.parents or not path.is_file():
        raise _refuse(archive, f"file {name} listed in the manifest is missing from the archive")
    if _sha256(path) != entry["sha256"]:
        raise _refuse(archive, f"file {name} is damaged (its checksum differs from the manifest's)")
    return path


def _read_points(path: Path, spec: CollectionSpec) -> list[StorePoint]:
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    payloads = table.column("payload").to_pylist()
    vectors: dict[str, list[object]] = {n: table.column(n).to_pylist() for n in spec.vector_names}
    return [StorePoint(pid, {n: np.asarray(vectors[n][i], dtype=np.float32) for n in spec.vector_names
                             if vectors[n][i] is not None}, _payload(pid, payloads[i]))
            for i, pid in enumerate(ids)]


def _payload(pid: object, text: object) -> object:
    try:
        return json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the payload of point {pid!r} is not JSON ({exc})") from None


def _verify_points(archive: Path, path: Path, spec: CollectionSpec, expected_rows: object,
                   seen: set[str]) -> int:
    name = f"points/{path.name}"
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise _refuse(archive, f"{name} is not a readable Parquet file ({exc})") from None
    missing = [n for n in ("id", "payload", *spec.vector_names) if n not in schema.names]
    if missing:
        raise _refuse(archive, f"{name} lacks the column(s) {missing} (vector names must be {list(spec.vector_names)})")
    try:
        points = _read_points(path, spec)
    except (ValueError, TypeError, pa.ArrowException) as exc:  # columns of other types, text that is not JSON
        raise _refuse(archive, f"{name} cannot be read as points: {exc}") from None
    if len(points) != expected_rows:
        raise _refuse(archive, f"{name} holds {len(points)} points, the manifest says {expected_rows}")
    for point in points:
        who = f"{name}, point {point.id!r}"
        if not isinstance(point.payload, dict):
            raise _refuse(archive, f"{who}: the payload is not an object")
        for key in _REQUIRED_PAYLOAD:
            if not isinstance(point.payload.get(key), str):
                raise _refuse(archive, f"{who}: payload field {key!r} is missing")
        isic_id = str(point.payload["isic_id"])
        if point.id != point_id(isic_id):
            raise _refuse(archive, f"{who}: the id is not the point id of isic_id {isic_id!r}")
        if point.payload["fingerprint"] != spec.fingerprint:
            raise _refuse(archive, f"{who} ({isic_id}): payload fingerprint {point.payload['fingerprint']!r} is not "
                                   f"the snapshot's model {spec.fingerprint!r}")
        if point.id in seen:
            raise _refuse(archive, f"{who} ({isic_id}) appears twice")
        seen.add(point.id)
        if not point.vectors:
            raise _refuse(archive, f"{who} ({isic_id}) has no vectors")
        for vector_name, vector in point.vectors.items():
            if vector.shape != (spec.dim,):
                raise _refuse(archive, f"{who} ({isic_id}): vector {vector_name!r} has {vector.shape[0] if vector.ndim else 0} "
                                       f"dimensions, the snapshot's spec says {spec.dim}")
            if not np.all(np.isfinite(vector)):
                raise _refuse(archive, f"{who} ({isic_id}): vector {vector_name!r} has NaN/inf values")
    return len(points)


def _work_prefix(kind: str) -> str:
    # The host too: a home shared by several hosts must not have one clear another's folders.
    return f"{kind}{socket.gethostname()}-"


def _new_work_folder(parent: Path, kind: str) -> tuple[Path, int]:
    """A new work folder (`kind` .snapshot- or .restore-) and the descriptor of the lock held on its
    sibling `<folder>.lock` until _release_work_folder, or until this process dies however it dies
    (the kernel drops the lock: a pid could name another process, or another PID namespace's)."""
    fd, lock = tempfile.mkstemp(prefix=_work_prefix(kind), suffix=".lock", dir=parent)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()}\n".encode())  # not empty: locked by its owner, not just created
    folder = Path(lock).with_suffix("")
    folder.mkdir()
    return folder, fd


def _release_work_folder(folder: Path, lock: int) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    Path(f"{folder}.lock").unlink(missing_ok=True)
    os.close(lock)


def _clear_dead_work(parent: Path, kind: str) -> None:
    """Remove the work folders of this host whose process is gone (a kill leaves a full copy of a
    snapshot's points there); those whose lock is still held stay."""
    for lock in parent.glob(f"{_work_prefix(kind)}*.lock"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_size:  # empty: its process is between creating and locking it
                shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
                lock.unlink(missing_ok=True)
        except OSError:
            pass  # held: its process runs
        finally:
            os.close(fd)


def open_snapshot(archive: Path, staging_parent: Path) -> VerifiedSnapshot:
    """Unpack `archive` under `staging_parent` and verify all of it; SnapshotError says what is wrong.

    Checks: a tar that reads to its end, the manifest's format and fields, every listed file
    present with its checksum, vector names and dimensions, payloads (isic_id, fingerprint,
    id = uuid5 of isic_id, no duplicates) and the point count."""
    archive = Path(archive)
    if not archive.is_file():
        raise SnapshotError(f"no snapshot file {archive}; see `{next_command('snapshot list')}`")
    staging_parent.mkdir(parents=True, exist_ok=True)
    _clear_dead_work(staging_parent, ".restore-")
    folder, lock = _new_work_folder(staging_parent, ".restore-")
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(folder, filter="data")
        except tarfile.ReadError as exc:
            reason = str(exc).strip().splitlines()[-1].strip("-) ")  # tarfile lists every method it tried
            raise _refuse(archive, f"not a readable tar archive, or a truncated one ({reason})") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise _refuse(archive, f"the archive cannot be unpacked ({type(exc).__name__}: {exc})") from None
        manifest = _manifest(archive, folder)
        spec = _spec(archive, manifest)
        entries = manifest["point_files"]
        point_files = [_checked_file(archive, folder, entry) for entry in entries]  # type: ignore[union-attr]
        seen: set[str] = set()
        total = sum(_verify_points(archive, path, spec, entry.get("rows"), seen)  # type: ignore[union-attr]
                    for path, entry in zip(point_files, entries, strict=True))  # type: ignore[arg-type]
        if total != manifest["points"]:
            raise _refuse(archive, f"it holds {total} points, its manifest says {manifest['points']}")
        attachments = {str(e["name"]).removeprefix("attachments/"): _checked_file(archive, folder, e)
                       for e in manifest["attachments"]}  # type: ignore[union-attr]
        return VerifiedSnapshot(archive, folder, manifest, spec, total, point_files, attachments, lock)
    except BaseException:
        _release_work_folder(folder, lock)
        raise


def load_snapshot(snapshot: VerifiedSnapshot, store: VectorStore,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write a verified snapshot's points into an empty store version, then verify the store holds
    exactly them (count and ids). Returns the number of points."""
    store.ensure_collection(snapshot.spec)
    if store.count() != 0:
        raise SnapshotError(f"collection {store.collection!r} is not empty: a snapshot loads only into a new version")
    expected: set[str] = set()
    for batch in snapshot.iter_batches():
        store.upsert(batch)
        expected.update(p.id for p in batch)
        if progress:
            progress(len(expected))
    stored = set(store.all_ids())
    if stored != expected or store.count() != snapshot.points:
        raise SnapshotError(f"collection {store.collection!r} holds {len(stored)} points after loading the snapshot's "
                            f"{snapshot.points}: the new version is left unswitched for inspection")
    return snapshot.points


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = min(int(math.log(size, 1024)) if size > 0 else 0, len(units) - 1)
    return f"{size / 1024 ** power:.1f} {units[power]}" if power else f"{int(size)} B"


__all__ = ["FORMAT", "SnapshotError", "VerifiedSnapshot", "human_bytes", "load_snapshot", "open_snapshot",
           "write_snapshot"]
