"""The local Ray session warms its first workers: they import the embedding stack before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dermground.platform.ray_runtime import WORKER_PRELOAD, cluster_address, wait_for_warm_workers
from dermground.platform.ray_warm_start import (
    WARM_DIR_ENV,
    WARM_MODULES_ENV,
    WARM_SKIP_ENV,
    WARM_SLOTS_ENV,
    warm_up,
)


def test_the_session_warms_one_worker_per_cpu_and_no_more(ray_session):
    # The shared session has 2 CPUs: Ray prestarts 2 workers, each claims a slot and imports the stack.
    assert wait_for_warm_workers(deadline_s=300) == 2
    folder = Path(os.environ[WARM_DIR_ENV])
    assert os.environ[WARM_MODULES_ENV].split(",") == list(WORKER_PRELOAD)
    assert sorted(p.name for p in folder.glob("slot-*")) == ["slot-0", "slot-1"]
    pids = {int((folder / f"ready-{slot}").read_text()) for slot in (0, 1)}
    assert len(pids) == 2 and os.getpid() not in pids  # two workers, never the driver


def test_warm_up_claims_each_slot_once_and_marks_it_ready_after_the_imports(tmp_path: Path):
    environ = {WARM_DIR_ENV: str(tmp_path), WARM_SLOTS_ENV: "1", WARM_MODULES_ENV: "json,email.parser"}
    assert warm_up(environ) == 0
    assert (tmp_path / "ready-0").read_text() == str(os.getpid())
    assert warm_up(environ) is None  # the only slot is taken: a later worker imports nothing ahead
    assert warm_up({WARM_SLOTS_ENV: "2"}) is None  # no folder: not a warmed session
    skipped = {WARM_DIR_ENV: str(tmp_path / "other"), WARM_SLOTS_ENV: "1", WARM_MODULES_ENV: "json",
               WARM_SKIP_ENV: "1"}
    assert warm_up(skipped) is None  # a helper actor's worker leaves the slot to the next worker


@pytest.mark.parametrize(("name", "namespace"), [
    ("ActorLocationTracker", "ActorLocationTracker"),
    ("AutoscalingCoordinator", "AutoscalingCoordinator"),
    ("datasets_stats_actor", "_dataset_stats_actor"),
])
def test_ray_datas_helpers_run_in_workers_of_their_own_not_warm_ones(ray_session, name: str, namespace: str):
    # Ray Data's detached helper actors exist before any ingest (the executor gives its operators
    # no resources until the autoscaling coordinator has answered once), in workers that are not
    # the warm ones: those stay free for the CPU stage and the embedding actors.
    import ray

    assert wait_for_warm_workers(deadline_s=300) == 2
    helper = ray.get_actor(name, namespace=namespace)
    helper_pid, skip = ray.get(helper.__ray_call__.remote(lambda self: (os.getpid(), os.environ.get(WARM_SKIP_ENV))),
                               timeout=120)
    warm_pids = {int(path.read_text()) for path in Path(os.environ[WARM_DIR_ENV]).glob("ready-*")}
    assert len(warm_pids) == 2 and helper_pid not in warm_pids
    assert skip == "1"  # created by ensure_ray (Ray Data's own would lack it), and Ray Data reuses it


def test_the_preloaded_modules_import_in_a_plain_process():
    # Ray logs and skips a preload that fails: a renamed module would silently lose the warm start.
    import importlib
    import sys

    for name in WORKER_PRELOAD:
        assert importlib.import_module(name) is sys.modules[name]


def test_the_cluster_joined_is_the_one_named_else_ray_address_else_none(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None  # a local session of our own, whatever else runs here
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")  # what `ray job submit` gives the driver it runs
    assert cluster_address(None) == "head:6379"
    assert cluster_address("other:6379") == "other:6379"  # --ray-address / DERMGROUND_RAY_ADDRESS first
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert cluster_address("") is None
