"""Restores that cannot lose data: damaged snapshots are refused with the live collection intact,
a good one lands in a new version with its catalog rows (`check` clean), and a SIGKILL anywhere in
a restore or a switch leaves a live version."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dermground.ingest.partitions import ids_hash
from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.catalog import Catalog
from dermground.platform.cli import cli
from dermground.platform.crash_points import KILL_ENV
from dermground.platform.settings import load_settings
from dermground.platform.store import DEFAULT_VECTOR_NAMES, CollectionSpec, StorePoint, build_payload, open_store, point_id
from dermground.platform.store.edge_versions import EdgeCollections, copy_sparse, disk_usage
from tests.store_holder import held_by_another_process

N, DIM, FP, NAME = 12, 8, "fp-snap", "snap"
ISIC_IDS = [f"ISIC_{i:07d}" for i in range(N)]


# The CLI keeps the settings it loaded for the process: each test's --home must be read afresh.
pytestmark = pytest.mark.usefixtures("fresh_cli_settings")


def _cli(home: Path, *args: str):
    return CliRunner().invoke(cli, ["--home", str(home), *args])


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A home with collection `snap` (12 points, catalog rows and ledger: `check` clean) and its snapshot."""
    home = tmp_path_factory.mktemp("golden") / "home"
    settings = load_settings(home=home)
    rng = np.random.default_rng(0)
    records = [{"isic_id": i, "patient_id": f"IP_{n % 3}", "split": "train", "image_ref": f"/nowhere/{i}.jpg",
                **{a.name: float(a.low + 1) for a in ATTRIBUTES}} for n, i in enumerate(ISIC_IDS)]
    with open_store(settings, NAME) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint=FP))
        store.upsert([StorePoint(point_id(r["isic_id"]), {n: rng.normal(size=DIM).astype(np.float32)
                                                          for n in DEFAULT_VECTOR_NAMES}, build_payload(r, FP))
                      for r in records])
    catalog = Catalog(settings.catalog_dir)
    catalog.append("ingest_runs", [{"run_id": "r1", "collection": NAME, "fingerprint": FP, "status": "done"}])
    catalog.append("lesions", [{"isic_id": r["isic_id"], "patient_id": r["patient_id"], "split": "train",
                                "collection": NAME, "fingerprint": FP, "run_id": "r1"} for r in records],
                   name=f"{NAME}--p000000-x")
    catalog.append("ingest_partitions", [{"run_id": "r1", "collection": NAME, "partition_id": "p000000-x",
                                          "n_points": N, "ids_hash": ids_hash(ISIC_IDS)}], name=f"{NAME}--p000000-x")
    created = _cli(home, "snapshot", "create", "--collection", NAME)
    assert created.exit_code == 0, created.output
    (tar,) = (home / "snapshots" / NAME).glob("*.tar")
    return home, tar


@pytest.fixture
def home(golden: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    copy_sparse(golden[0], copy)
    return copy


def _live_points(home: Path) -> int:
    with open_store(load_settings(home=home), NAME) as store:
        assert store.query("image", np.ones(DIM, dtype=np.float32), 3)  # searchable
        return store.count()


def _rewrite(src: Path, dst: Path, change) -> Path:  # noqa: ANN001 - change(name, bytes) -> bytes | None
    with tarfile.open(src) as tar_in, tarfile.open(dst, "w") as tar_out:
        for member in tar_in.getmembers():
            data = tar_in.extractfile(member).read()
            data = change(member.name, data)
            if data is not None:
                member.size = len(data)
                tar_out.addfile(member, io.BytesIO(data))
    return dst


def _manifest_edit(edit):  # noqa: ANN001, ANN202
    def change(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        edit(manifest)
        return json.dumps(manifest).encode()
    return change


def _wrong_dimensions(src: Path, dst: Path) -> Path:
    replaced: dict[str, bytes] = {}

    def points(name: str, data: bytes) -> bytes | None:
        if not name.startswith("points/"):
            return data
        table = pq.read_table(io.BytesIO(data))
        short = pa.array([[0.5] * 4] * table.num_rows, pa.list_(pa.float32()))
        table = table.set_column(table.schema.get_field_index("image"), "image", short)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        replaced[name] = sink.getvalue()
        return replaced[name]

    tmp = _rewrite(src, dst.with_suffix(".tmp"), points)
    import hashlib

    def fix_sums(manifest: dict) -> None:
        for entry in manifest["point_files"]:
            entry["sha256"] = hashlib.sha256(replaced[entry["name"]]).hexdigest()
    return _rewrite(tmp, dst, _manifest_edit(fix_sums))


def _points_column(column: str, value: object, dtype: pa.DataType):  # noqa: ANN202 - a DAMAGES maker
    """A snapshot whose points files have `column` replaced, their checksums made to match (what
    another tool or a hand edit could write)."""
    def make(src: Path, dst: Path) -> Path:
        replaced: dict[str, bytes] = {}

        def points(name: str, data: bytes) -> bytes:
            if not name.startswith("points/"):
                return data
            table = pq.read_table(io.BytesIO(data))
            table = table.set_column(table.schema.get_field_index(column), column,
                                     pa.array([value] * table.num_rows, dtype))
            sink = io.BytesIO()
            pq.write_table(table, sink)
            replaced[name] = sink.getvalue()
            return replaced[name]

        import hashlib

        def fix_sums(manifest: dict) -> None:
            for entry in manifest["point_files"]:
                entry["sha256"] = hashlib.sha256(replaced[entry["name"]]).hexdigest()
        return _rewrite(_rewrite(src, dst.with_suffix(".tmp"), points), dst, _manifest_edit(fix_sums))
    return make


DAMAGES = {
    "payload_not_json": (_points_column("payload", "{not json", pa.string()), "the payload of point"),
    "vector_of_text": (_points_column("image", ["x"] * DIM, pa.list_(pa.string())), "cannot be read as points"),
    "invalid_metadata": (lambda s, d: _rewrite(s, d, lambda n, b: b"{not json" if n == "manifest.json" else b),
                         "invalid metadata"),
    "wrong_format": (lambda s, d: _rewrite(s, d, _manifest_edit(lambda m: m.update(format="other"))), "field 'format'"),
    "bad_spec": (lambda s, d: _rewrite(s, d, _manifest_edit(lambda m: m["spec"].update(dim=0))), "field 'spec'"),
    "empty_data": (lambda s, d: _rewrite(s, d, lambda n, b: None if n.startswith("points/") else b),
                   "missing from the archive"),
    "damaged_points": (lambda s, d: _rewrite(s, d, lambda n, b: b[:-40] + bytes(40) if n.startswith("points/") else b),
                       "checksum"),
    "wrong_dimensions": (_wrong_dimensions, "has 4 dimensions, the snapshot's spec says 8"),
    "truncated_archive": (lambda s, d: d.write_bytes(s.read_bytes()[: s.stat().st_size // 2]) and d,
                          "truncated"),
    "not_an_archive": (lambda s, d: d.write_text("these are not the points you are looking for\n") and d,
                       "not a readable tar archive"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_snapshot_is_refused_and_the_live_collection_keeps_every_point(
        golden: tuple[Path, Path], home: Path, tmp_path: Path, damage: str) -> None:
    make, message = DAMAGES[damage]
    bad = make(golden[1], tmp_path / f"{damage}.tar")
    result = _cli(home, "snapshot", "restore", str(bad), "--collection", NAME, "--yes")
    assert result.exit_code != 0
    assert "refused" in result.output and message in result.output, result.output
    assert "Nothing was changed" in result.output
    assert _live_points(home) == N
    assert EdgeCollections(home / "qdrant").versions(NAME) == ["v0"]  # not even a new version
    assert not any((home / "snapshots" / ".staging").iterdir())  # the unpacked files are gone


def test_a_good_restore_goes_into_a_new_version_with_its_catalog_rows(golden: tuple[Path, Path], home: Path) -> None:
    with open_store(load_settings(home=home), NAME) as store:
        store.delete([point_id(i) for i in ISIC_IDS[:5]])
    result = _cli(home, "snapshot", "restore", str(golden[1]), "--collection", NAME)  # confirms with a prompt
    assert result.exit_code == 1  # no input: aborted
    assert "holds 12 points of model fp-snap" in result.output and "replaces the live version v0" in result.output
    assert "7 points" in result.output
    assert _live_points(home) == 7
    result = _cli(home, "snapshot", "restore", str(golden[1]), "--collection", NAME, "--yes")
    assert result.exit_code == 0, result.output
    assert "12 points, 12 catalog rows, version v1 is live" in result.output
    assert _live_points(home) == N
    checked = _cli(home, "check", "--collection", NAME)
    assert checked.exit_code == 0, checked.output
    listed = _cli(home, "collections", "list", NAME, "--json")
    versions = {v["version"]: v for v in json.loads(listed.output)}
    assert versions["v1"]["live"] and versions["v1"]["points"] == N and versions["v0"]["points"] == 7
    assert versions["v1"]["source"].startswith("restore ") and versions["v1"]["state"] == "ready"
    refused = _cli(home, "collections", "drop", NAME, "v1", "--yes")
    assert refused.exit_code == 1 and "live version" in refused.output and "collections switch" in refused.output
    info = json.loads(_cli(home, "collections", "info", NAME).output)
    assert (info["version"], info["points"], info["fingerprint"]) == ("v1", N, FP)
    assert _cli(home, "collections", "drop", NAME, "v0", "--yes").exit_code == 0
    assert EdgeCollections(home / "qdrant").versions(NAME) == ["v1"] and _live_points(home) == N



def test_check_and_a_restore_still_agree_after_the_catalog_is_compacted(home: Path) -> None:
    """`catalog compact` merges the per-partition files (and, after its grace period, deletes them):
    `check` still finds each ledger partition's rows, and so does a snapshot taken after it (before,
    both reported every partition as "no lesions file" and asked for the ingest to be rerun)."""
    for _ in range(2):  # the second run deletes the files the first one merged
        compacted = _cli(home, "catalog", "compact", "--keep-minutes", "0")
        assert compacted.exit_code == 0, compacted.output
    assert not list((home / "catalog" / "lesions").glob("*.parquet"))
    checked = _cli(home, "check", "--collection", NAME)
    assert checked.exit_code == 0, checked.output
    created = _cli(home, "snapshot", "create", "--collection", NAME)
    assert created.exit_code == 0, created.output
    tar = max((home / "snapshots" / NAME).glob("*.tar"), key=lambda p: p.stat().st_mtime_ns)
    restored = _cli(home, "snapshot", "restore", str(tar), "--collection", NAME, "--yes")
    assert restored.exit_code == 0, restored.output
    assert "12 points, 12 catalog rows, version v1 is live" in restored.output
    checked = _cli(home, "check", "--collection", NAME)
    assert checked.exit_code == 0, checked.output


KILL_AT = ("restore_loaded", "alias_written")  # restore_catalogued: same window, one more kill


@pytest.mark.parametrize("point", KILL_AT)
def test_a_sigkill_during_a_restore_leaves_the_old_version_live(golden: tuple[Path, Path], home: Path,
                                                                 point: str) -> None:
    with open_store(load_settings(home=home), NAME) as store:
        store.delete([point_id(i) for i in ISIC_IDS[:5]])
    env = {**os.environ, KILL_ENV: point}
    run = subprocess.run([sys.executable, "-m", "dermground", "--home", str(home), "snapshot", "restore",
                          str(golden[1]), "--collection", NAME, "--yes"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == -9, run.stderr[-2000:]
    assert _live_points(home) == 7  # the alias was never replaced: the old version is live and whole
    listed = {v["version"]: v for v in json.loads(_cli(home, "collections", "list", NAME, "--json").output)}
    if point == "restore_loaded":  # killed while v1 was still building: the listing says so, and what to do
        assert listed["v1"]["state"] == "building" and not listed["v1"]["live"]
        assert "interrupted" in listed["v1"]["note"] and f"collections drop {NAME} v1" in listed["v1"]["note"]
        assert listed["v1"]["points"] == N  # reported, not deleted: dropping is the admin's call
        refused = _cli(home, "collections", "switch", NAME, "v1")
        assert refused.exit_code == 1 and "interrupted" in refused.output
    again = _cli(home, "snapshot", "restore", str(golden[1]), "--collection", NAME, "--yes")
    assert again.exit_code == 0, again.output  # the unfinished version is left aside, not in the way
    assert _live_points(home) == N
    if point == "restore_loaded":
        assert _cli(home, "collections", "drop", NAME, "v1", "--yes").exit_code == 0


def test_a_sigkill_during_a_switch_leaves_one_version_live(golden: tuple[Path, Path], home: Path) -> None:
    assert _cli(home, "snapshot", "restore", str(golden[1]), "--collection", NAME, "--yes").exit_code == 0
    env = {**os.environ, KILL_ENV: "alias_written"}
    run = subprocess.run([sys.executable, "-m", "dermground", "--home", str(home), "collections", "switch", NAME,
                          "v0"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == -9, run.stderr[-2000:]
    assert EdgeCollections(home / "qdrant").live_version(NAME) == "v1" and _live_points(home) == N
    switched = _cli(home, "collections", "switch", NAME, "v0")
    assert switched.exit_code == 0 and "was v1" in switched.output
    assert EdgeCollections(home / "qdrant").live_version(NAME) == "v0"


def test_snapshot_is_sized_by_its_data(golden: tuple[Path, Path]) -> None:
    home, tar = golden
    vectors = N * len(DEFAULT_VECTOR_NAMES) * DIM * 4
    assert tar.stat().st_size < vectors + 100_000  # points, payloads and catalog rows; no engine files
    assert tar.stat().st_size <= 2 * disk_usage(home / "qdrant" / NAME)  # the bound, with room to spare


def test_a_served_collection_can_be_snapshotted(home: Path, tmp_path: Path) -> None:
    from dermground.platform.store.snapshots import open_snapshot

    with held_by_another_process(home / "qdrant" / NAME, NAME):  # `serve` holds the live version
        created = _cli(home, "snapshot", "create", "--collection", NAME)
        assert created.exit_code == 0, created.output
    newest = max((home / "snapshots" / NAME).glob("*.tar"), key=lambda p: p.stat().st_mtime)
    snapshot = open_snapshot(newest, tmp_path / "staging")
    assert snapshot.points == N and len(snapshot.attachments) == 3  # lesions, ledger, runs
    snapshot.cleanup()
    assert EdgeCollections(home / "qdrant").versions(NAME) == ["v0"]  # the scratch copy is gone


def test_an_older_releases_engine_folder_snapshot_is_verified_and_restored(home: Path, tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.tar"
    with tarfile.open(legacy, "w") as tar:  # what `snapshot create` wrote before versions
        tar.add(home / "qdrant" / NAME / "collection.json", arcname="collection.json")
        tar.add(home / "qdrant" / NAME / "shard", arcname="shard")
    broken = tmp_path / "legacy-broken.tar"  # the case: an invalid collection.json
    with tarfile.open(broken, "w") as tar:
        info = tarfile.TarInfo("collection.json")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"{"))
        tar.add(home / "qdrant" / NAME / "shard", arcname="shard")
    with open_store(load_settings(home=home), NAME) as store:
        store.delete([point_id(i) for i in ISIC_IDS[:5]])
    refused = _cli(home, "snapshot", "restore", str(broken), "--collection", NAME, "--yes")
    assert refused.exit_code == 1 and "refused" in refused.output and "cannot be read" in refused.output
    assert _live_points(home) == 7 and EdgeCollections(home / "qdrant").versions(NAME) == ["v0"]
    result = _cli(home, "snapshot", "restore", str(legacy), "--collection", NAME, "--yes")
    assert result.exit_code == 0, result.output
    assert "holds 12 points of model fp-snap" in result.output and "version v1 is live" in result.output
    assert _live_points(home) == N


def test_a_restore_never_takes_the_number_of_a_dropped_version_whose_catalog_rows_stay(
        golden: tuple[Path, Path], home: Path) -> None:
    # Another collection's snapshot restored into `snap` by mistake, switched back and dropped:
    # its catalog rows stay under `snap__v1`, so the next restore must not become v1 again.
    other_ids = [f"ISIC_{i:07d}" for i in range(100, 104)]
    settings = load_settings(home=home)
    rng = np.random.default_rng(1)
    records = [{"isic_id": i, "patient_id": "IP_9", "split": "train", "image_ref": f"/nowhere/{i}.jpg",
                **{a.name: float(a.low + 1) for a in ATTRIBUTES}} for i in other_ids]
    with open_store(settings, "other") as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint=FP))
        store.upsert([StorePoint(point_id(r["isic_id"]), {n: rng.normal(size=DIM).astype(np.float32)
                                                          for n in DEFAULT_VECTOR_NAMES}, build_payload(r, FP))
                      for r in records])
    catalog = Catalog(settings.catalog_dir)
    catalog.append("ingest_runs", [{"run_id": "r2", "collection": "other", "fingerprint": FP, "status": "done"}])
    catalog.append("lesions", [{"isic_id": i, "patient_id": "IP_9", "split": "train", "collection": "other",
                                "fingerprint": FP, "run_id": "r2"} for i in other_ids], name="other--p000000-y")
    catalog.append("ingest_partitions", [{"run_id": "r2", "collection": "other", "partition_id": "p000000-y",
                                          "n_points": 4, "ids_hash": ids_hash(other_ids)}], name="other--p000000-y")
    assert _cli(home, "snapshot", "create", "--collection", "other").exit_code == 0
    (other_tar,) = (home / "snapshots" / "other").glob("*.tar")
    assert _cli(home, "snapshot", "restore", str(other_tar), "--collection", NAME, "--yes").exit_code == 0
    assert _cli(home, "collections", "switch", NAME, "v0").exit_code == 0
    assert _cli(home, "collections", "drop", NAME, "v1", "--yes").exit_code == 0

    result = _cli(home, "snapshot", "restore", str(golden[1]), "--collection", NAME, "--yes")
    assert result.exit_code == 0, result.output
    assert "version v2 is live" in result.output
    checked = _cli(home, "check", "--collection", NAME)
    assert checked.exit_code == 0, checked.output  # the dropped v1's rows are not counted as v2's

    # The same for an ingest into a new version, once the highest version with rows is dropped too.
    from dermground.ingest.targets import open_target

    assert _cli(home, "collections", "switch", NAME, "v0").exit_code == 0
    assert _cli(home, "collections", "drop", NAME, "v2", "--yes").exit_code == 0
    target = open_target(settings, NAME, catalog, source="data", adapter=None, new_version=True)
    try:
        assert target.version == "v3"
    finally:
        target.store.close()
        target.close()


def _file_size_limited(limit: int):  # noqa: ANN202 - a preexec_fn
    def limit_writes() -> None:  # what a full disk does to a write: it fails (EFBIG here, ENOSPC there)
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_writes


def test_a_snapshot_that_cannot_be_written_says_so_and_leaves_nothing_behind(golden: tuple[Path, Path],
                                                                             home: Path) -> None:
    folder = home / "snapshots" / NAME
    before = sorted(p.name for p in folder.iterdir())
    run = subprocess.run([sys.executable, "-m", "dermground", "--home", str(home), "snapshot", "create",
                          "--collection", NAME], capture_output=True, text=True, timeout=600,
                         preexec_fn=_file_size_limited(golden[1].stat().st_size // 2))
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "cannot write the snapshot" in run.stderr, run.stderr[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == before  # no partial tar, no work folder


def test_a_restore_that_fails_on_a_full_disk_names_the_version_it_leaves_and_the_next_step(
        golden: tuple[Path, Path], home: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "dermground", "--home", str(home), "snapshot", "restore",
                          str(golden[1]), "--collection", NAME, "--yes"], capture_output=True, text=True, timeout=600,
                         preexec_fn=_file_size_limited(golden[1].stat().st_size))  # unpacks; the engine's log cannot grow
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "The live version was not switched" in run.stderr, run.stderr[-2000:]
    assert f"`dermground --home {home} collections drop {NAME} v1`" in run.stderr, run.stderr[-2000:]
    assert _live_points(home) == N and EdgeCollections(home / "qdrant").live_version(NAME) == "v0"
    assert _cli(home, "collections", "drop", NAME, "v1", "--yes").exit_code == 0  # the step it names works
    assert _cli(home, "snapshot", "restore", str(golden[1]), "--collection", NAME, "--yes").exit_code == 0


def test_check_agrees_on_a_compacted_catalog_and_after_restoring_its_snapshot(golden: tuple[Path, Path],
                                                                               home: Path) -> None:
    # A compaction merges the per-partition lesions files; once the superseded ones are deleted,
    # the ledger's partitions have no file of their own (what an ingest's auto-compaction leads to).
    for _ in range(2):
        assert _cli(home, "catalog", "compact", "--keep-minutes", "0").exit_code == 0
    assert not (home / "catalog" / "lesions" / f"{NAME}--p000000-x.parquet").exists()
    checked = _cli(home, "check", "--collection", NAME)
    assert checked.exit_code == 0, checked.output

    assert _cli(home, "snapshot", "create", "--collection", NAME).exit_code == 0
    newest = max((home / "snapshots" / NAME).glob("*.tar"), key=lambda p: p.stat().st_mtime)
    assert _cli(home, "snapshot", "restore", str(newest), "--collection", NAME, "--yes").exit_code == 0
    checked = _cli(home, "check", "--collection", NAME)
    assert checked.exit_code == 0, checked.output

    # Still a finding: a committed partition whose rows are nowhere, and a point gone from the store.
    Catalog(load_settings(home=home).catalog_dir).append("ingest_partitions", [{
        "run_id": "r1", "collection": f"{NAME}__v1", "partition_id": "p000001-z", "n_points": 3,
        "ids_hash": ids_hash(["ISIC_9", "ISIC_8", "ISIC_7"])}], name=f"{NAME}__v1--p000001-z")
    with open_store(load_settings(home=home), NAME) as store:
        store.delete([point_id(ISIC_IDS[0])])
    checked = _cli(home, "check", "--collection", NAME)
    assert checked.exit_code == 1
    assert "p000001-z (no lesions file)" in checked.output and "missing from the store: 1" in checked.output


def test_the_unpacked_copy_of_a_killed_restore_is_cleared_by_the_next_restore(golden: tuple[Path, Path],
                                                                              home: Path) -> None:
    env = {**os.environ, KILL_ENV: "restore_loaded"}
    run = subprocess.run([sys.executable, "-m", "dermground", "--home", str(home), "snapshot", "restore",
                          str(golden[1]), "--collection", NAME, "--yes"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == -9, run.stderr[-2000:]
    staging = home / "snapshots" / ".staging"
    assert len([p for p in staging.iterdir() if p.is_dir()]) == 1  # the killed process could not remove it
    assert _cli(home, "collections", "drop", NAME, "v1", "--yes").exit_code == 0  # the stated next step
    assert _cli(home, "snapshot", "restore", str(golden[1]), "--collection", NAME, "--yes").exit_code == 0
    assert list(staging.iterdir()) == []  # a full copy of the snapshot no longer stays behind


def test_the_work_folder_of_a_killed_snapshot_create_is_cleared_by_the_next_one(golden: tuple[Path, Path],
                                                                                home: Path) -> None:
    folder = home / "snapshots" / NAME
    env = {**os.environ, KILL_ENV: "snapshot_written"}
    run = subprocess.run([sys.executable, "-m", "dermground", "--home", str(home), "snapshot", "create",
                          "--collection", NAME], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == -9, run.stderr[-2000:]
    assert [p.name for p in folder.glob("*.tar")] == [golden[1].name]  # no half-written snapshot is listed
    assert any(p.name.startswith(".") for p in folder.iterdir())  # the killed process could not clear its work
    assert _cli(home, "snapshot", "create", "--collection", NAME).exit_code == 0
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".partial")]
    assert len(list(folder.glob("*.tar"))) == 2


def test_a_served_collection_whose_copy_does_not_fit_on_disk_gets_a_clear_error(home: Path) -> None:
    with held_by_another_process(home / "qdrant" / NAME, NAME):  # `serve` holds the live version: create copies it
        run = subprocess.run([sys.executable, "-m", "dermground", "--home", str(home), "snapshot", "create",
                              "--collection", NAME], capture_output=True, text=True, timeout=600,
                             preexec_fn=_file_size_limited(1 << 20))  # the engine's log file is larger
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "free space" in run.stderr, run.stderr[-2000:]
    assert EdgeCollections(home / "qdrant").versions(NAME) == ["v0"]  # the scratch copy is gone


HOLDS_STAGING = """
import sys
from pathlib import Path
from dermground.platform.store.snapshots import _new_work_folder
folder, lock = _new_work_folder(Path(sys.argv[1]), ".restore-")
print(folder, flush=True)
sys.stdin.readline()
"""


def test_a_running_restores_unpacked_copy_is_left_alone_and_cleared_once_its_process_is_gone(
        golden: tuple[Path, Path], tmp_path: Path) -> None:
    from dermground.platform.store.snapshots import open_snapshot

    staging = tmp_path / "staging"
    staging.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDS_STAGING, str(staging)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        theirs = Path(holder.stdout.readline().strip())  # another restore, unpacking
        open_snapshot(golden[1], staging).cleanup()
        assert theirs.is_dir()  # its lock is held: not ours to clear
    finally:
        holder.kill()
        holder.wait(timeout=60)
    open_snapshot(golden[1], staging).cleanup()
    assert list(staging.iterdir()) == []  # its process is gone (killed): cleared
