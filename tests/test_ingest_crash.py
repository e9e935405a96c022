"""SIGKILL the ingest CLI at chosen points, resume, and get exactly the right collection.

The killed run is a real `dermground ingest` subprocess (joined to the test session's Ray so it
does not start its own); the crash windows between the three commit steps of a partition are hit
deterministically through the writer's DERMGROUND_TEST_CRASH_AT hook, and one run is killed from
outside at whatever it is doing once its first partition is committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dermground.ingest.consistency import check_collection
from dermground.ingest.pipeline import ingest_dataset
from dermground.ingest.synth import generate_dataset
from dermground.ingest.writer import CRASH_ENV
from dermground.platform.catalog import Catalog
from dermground.platform.settings import load_settings
from dermground.platform.store import open_store

N_IMAGES = 32
PARTITION = 8
FIRST_COMMIT_DEADLINE_S = 300  # how long the killed run may take to commit its first partition
# The run killed from outside uses small partitions: its later commits then take ~10x longer than
# the kill needs to land, so it dies with some partitions still uncommitted (with 4 partitions of 8
# a fast run committed all of them between the first ledger file and the kill).
OUTSIDE_KILL_PARTITION = 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crash_data") / "data"
    generate_dataset(out, patients=8, images=N_IMAGES, seed=11, size=112, progress=False, workers=1)
    return out


def _start_cli(home: Path, data: Path, model_dir: Path, ray_address: str, crash_at: str | None,
               partition: int = PARTITION) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "DERMGROUND_HOME": str(home)}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    command = [sys.executable, "-m", "dermground", "ingest", "--data", str(data), "--collection", "lesions",
               "--model", str(model_dir), "--split", "all", "--partition-size", str(partition),
               "--batch-size", "4", "--ray-address", ray_address]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _resume_and_verify(data: Path, home: Path, model_dir: Path, committed_before: int,
                       partition: int = PARTITION) -> None:
    settings = load_settings(home=home)
    summary = ingest_dataset(data, "lesions", settings, model_dir=model_dir, split="all",
                             partition_size=partition, batch_size=4, progress=False)
    assert len(summary.died_runs) == 1  # the killed run: marked at this start, not left `running`
    statuses = [r["status"] for r in Catalog(settings.catalog_dir).query("SELECT status FROM ingest_runs")]
    assert sorted(statuses) == ["died", "done"]
    assert summary.skipped == committed_before * partition
    assert summary.ingested + summary.skipped == N_IMAGES
    report = check_collection(settings, "lesions")
    assert report.ok, report.findings  # no missing, phantom or doubled id; every point has all 17 vectors
    assert report.store_points == report.catalog_rows == report.ledger_points == N_IMAGES
    assert report.ledger_partitions == N_IMAGES // partition
    with open_store(settings, "lesions") as store:
        assert store.count() == N_IMAGES


def _ledger_files(home: Path) -> list[Path]:
    return sorted((home / "catalog" / "ingest_partitions").glob("*.parquet"))


@pytest.mark.slow
@pytest.mark.parametrize(("crash_at", "finding"), [
    ("after_upsert:2", "in the store but not in the catalog (phantom points): 8"),
    ("after_catalog:2", "catalog rows of no committed partition (an interrupted ingest: rerun it): 8"),
])
def test_a_kill_between_commit_steps_resumes_to_exactly_the_right_collection(
        dataset, tiny_model_dir, ray_session, tmp_path, crash_at, finding):
    home = tmp_path / "home"
    address = ray_session.get_runtime_context().gcs_address
    process = _start_cli(home, dataset, tiny_model_dir, address, crash_at)
    try:
        output = process.communicate(timeout=FIRST_COMMIT_DEADLINE_S)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the ingest did not reach its crash point {crash_at} within {FIRST_COMMIT_DEADLINE_S} s: "
                    f"{process.communicate()[0].decode(errors='replace')[-2000:]}")
    assert process.returncode == -signal.SIGKILL, output
    assert len(_ledger_files(home)) == 1  # partition 1 committed, partition 2 half-way
    before = check_collection(load_settings(home=home), "lesions")
    assert any(f.startswith(finding) for f in before.findings), before.findings
    _resume_and_verify(dataset, home, tiny_model_dir, committed_before=1)


@pytest.mark.slow
def test_a_kill_from_outside_after_the_first_commit_resumes_to_exactly_the_right_collection(
        dataset, tiny_model_dir, ray_session, tmp_path):
    home = tmp_path / "home"
    address = ray_session.get_runtime_context().gcs_address
    process = _start_cli(home, dataset, tiny_model_dir, address, None, partition=OUTSIDE_KILL_PARTITION)
    deadline = time.monotonic() + FIRST_COMMIT_DEADLINE_S
    while not _ledger_files(home) and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            output = process.communicate()[0].decode(errors="replace")
            pytest.fail(f"the ingest CLI committed no partition within {FIRST_COMMIT_DEADLINE_S} s:\n{output}")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode(errors="replace")
    assert process.returncode == -signal.SIGKILL, output
    committed = len(_ledger_files(home))
    assert 1 <= committed < N_IMAGES // OUTSIDE_KILL_PARTITION
    _resume_and_verify(dataset, home, tiny_model_dir, committed_before=committed, partition=OUTSIDE_KILL_PARTITION)
