"""An ingest killed while it filled a copy of the served version (the embedded store, `serve` holding
the live one) is resumed in that copy by its rerun, instead of leaving it behind and copying and
embedding everything again in yet another version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from dermground.ingest.targets import open_target
from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.catalog import Catalog
from dermground.platform.settings import load_settings
from dermground.platform.store import DEFAULT_VECTOR_NAMES, CollectionSpec, StorePoint, build_payload, open_store, point_id
from dermground.platform.store.versions import BUILDING, process_stamp
from tests.store_holder import held_by_another_process

DIM, FP, NAME = 8, "fp-resume", "lesions"
SPEC = CollectionSpec(dim=DIM, fingerprint=FP)

# The killed ingest: it copies the held live version into a new one, commits one image there, dies.
_KILLED_INGEST = """
import os, signal, sys
import numpy as np
from dermground.ingest.targets import open_target
from dermground.platform.catalog import Catalog
from dermground.platform.settings import load_settings
from dermground.platform.store import DEFAULT_VECTOR_NAMES, CollectionSpec, StorePoint, build_payload, point_id
from dermground.platform.attributes import ATTRIBUTES
settings = load_settings(home=sys.argv[1])
target = open_target(settings, "lesions", Catalog(settings.catalog_dir), source=sys.argv[2], adapter=None,
                     spec=CollectionSpec(dim=8, fingerprint="fp-resume"))
record = {"isic_id": "ISIC_9000001", "patient_id": "IP_9", "split": "train", "image_ref": "/new/1.jpg",
          **{a.name: float(a.low + 1) for a in ATTRIBUTES}}
target.store.ensure_collection(CollectionSpec(dim=8, fingerprint="fp-resume"))
target.store.upsert([StorePoint(point_id("ISIC_9000001"), {n: np.ones(8, dtype=np.float32) for n in DEFAULT_VECTOR_NAMES},
                                build_payload(record, "fp-resume"))])
print(target.version, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _served_collection(home: Path) -> None:
    rng = np.random.default_rng(0)
    with open_store(load_settings(home=home), NAME) as store:
        store.ensure_collection(SPEC)
        records = [{"isic_id": f"ISIC_{i:07d}", "patient_id": "IP_1", "split": "train", "image_ref": f"/old/{i}.jpg",
                    **{a.name: float(a.low + 1) for a in ATTRIBUTES}} for i in range(5)]
        store.upsert([StorePoint(point_id(r["isic_id"]), {n: rng.normal(size=DIM).astype(np.float32)
                                                          for n in DEFAULT_VECTOR_NAMES}, build_payload(r, FP))
                      for r in records])


def test_a_rerun_resumes_the_copy_its_killed_run_was_filling(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _served_collection(home)
    settings = load_settings(home=home)
    with held_by_another_process(home / "qdrant" / NAME, NAME):  # `serve` holds the live version v0
        killed = subprocess.run([sys.executable, "-c", _KILLED_INGEST, str(home), "/data/new"], capture_output=True,
                                text=True, env=os.environ.copy(), timeout=300)
        assert killed.returncode == -signal.SIGKILL and killed.stdout.strip() == "v1", killed.stderr[-2000:]

        messages: list[str] = []
        target = open_target(settings, NAME, Catalog(settings.catalog_dir), source="/data/new", adapter=None,
                             spec=SPEC, notify=messages.append)
        try:
            assert target.version == "v1", messages  # not a second copy v2
            assert target.switch_after and target.seeded_from == "v0"
            assert any("Resuming version v1" in m for m in messages), messages
            assert target.store.count() == 6  # the 5 copied points and the killed run's commit
            meta = target.collections.read_meta(NAME, "v1")
            assert meta.state == BUILDING and meta.builder is not None
            assert meta.builder["pid"] == process_stamp()["pid"]  # `collections list` shows it in progress again
            assert target.collections.versions(NAME) == ["v0", "v1"]
        finally:
            target.store.close()
            target.close()

        # Another data folder is another ingest: it gets its own copy.
        other = open_target(settings, NAME, Catalog(settings.catalog_dir), source="/data/other", adapter=None, spec=SPEC)
        try:
            assert other.version == "v2"
        finally:
            other.store.close()
            other.close()


def test_a_copy_whose_ingest_was_killed_while_copying_is_reported_with_drop_and_rerun(tmp_path: Path) -> None:
    import socket

    from dermground.platform.store import open_collections
    from dermground.platform.store.versions import VersionMeta

    home = tmp_path / "home"
    _served_collection(home)
    with open_collections(load_settings(home=home)) as cols:
        # What open_target records before it copies v0 (ingest/targets.py), its copy never finished.
        copy = cols.create_version(NAME, VersionMeta(source="v0 + ingest /data/new", state=BUILDING))
        cols.write_meta(NAME, copy, VersionMeta(source="v0 + ingest /data/new", state=BUILDING, builder={
            "pid": _exited_pid(), "host": socket.gethostname(), "command": "dermground ingest --data /data/new"}))
        (note,) = [i.note for i in cols.list(NAME) if i.version == copy]
    assert note is not None and "interrupted" in note, note
    # It said "resume it with `dermground ingest ... --version v1`": into part of v0's points without
    # their catalog rows, which would stay as phantom points.
    assert f"--version {copy}" not in note, note
    assert f"collections drop {NAME} {copy}" in note and f"rerun the same `dermground ingest --data /data/new --collection {NAME}`" in note, note


def _exited_pid() -> int:
    """The pid of a process that has exited (the killed ingest, as far as a listing can tell)."""
    child = subprocess.Popen(["true"])  # noqa: S607
    child.wait()
    return child.pid


def test_a_rerun_resumes_the_killed_copy_also_once_serve_has_let_go_of_the_live_version(tmp_path: Path) -> None:
    import socket

    from dermground.platform.store import open_collections
    from dermground.platform.store.versions import VersionMeta

    home = tmp_path / "home"
    _served_collection(home)
    settings = load_settings(home=home)
    with open_collections(settings) as cols:
        # What an ingest killed while `serve` held v0 leaves: v1, a complete copy of v0 it was filling.
        copy = cols.create_version(NAME, VersionMeta(source="v0 + ingest /data/new", state=BUILDING))
        copied = cols.copy_points(NAME, "v0", copy)
        cols.write_meta(NAME, copy, VersionMeta(source="v0 + ingest /data/new", state=BUILDING, seed_copied=copied,
                                                builder={"pid": _exited_pid(), "host": socket.gethostname()}))
    # `serve` was restarted (or stopped) meanwhile: nobody holds v0 when the ingest is run again.
    messages: list[str] = []
    target = open_target(settings, NAME, Catalog(settings.catalog_dir), source="/data/new", adapter=None, spec=SPEC,
                         notify=messages.append)
    try:
        # It wrote v0 in place, leaving v1 behind still saying "rerun the same ingest: it resumes here".
        assert (target.version, target.switch_after, target.seeded_from) == (copy, True, "v0"), messages
        assert any(f"Resuming version {copy}" in m for m in messages), messages
    finally:
        target.store.close()
        target.close()
