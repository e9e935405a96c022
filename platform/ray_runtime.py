"""Starting or joining Ray with the settings this machine needs.

Ray's defaults assume a big machine: here a local session gets a bounded object store, no
dashboard and no usage reporting; with an address it joins an existing cluster instead.

A local session warms its first workers: the ones Ray prestarts (one per CPU) import the
embedding stack (Ray Data, torch, transformers' Qwen2-VL, our embedder and image gate) as soon as they
start, so an ingest's actor lands on a worker that paid those seconds while the driver opened the
store and read the metadata (platform/ray_warm_start.py, through Ray's `preload_python_modules`
system setting). A job's `worker_process_setup_hook` would not do: it runs only in workers started
for the job, never in the prestarted ones (measured: the actor then waits for a fresh worker and
its hook). A cluster joined by address is started by its owner, who can do the same with
`RAY_preload_python_modules=dermground.platform.ray_warm_start` and the DERMGROUND_RAY_WARM_*
variables of ray_warm_start.py in the environment of `ray start`.

Ray Data creates three helper actors of its own when an ingest's first plan runs (its
`ActorLocationTracker`, `AutoscalingCoordinator` and stats actor, detached, one each per
session). Each started in a fresh worker or took one of the warm ones, and the executor gives its
operators no resources until the coordinator has answered once, so the first CPU-stage task waited
~1 s for those workers to boot (measured at 2,000 images: first batch 3.3 s against 2.2 s when
they exist ahead). A local session that will run Ray Data (not training's) therefore creates them
up front, in workers of their own that claim no warm slot; Ray Data finds them by name and uses them.
A cluster joined by address keeps them between jobs (they are detached), so there only the
first ingest after the cluster starts pays their start-up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

# Must be in the environment before `import ray` spawns anything.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "0",
}
# What a warm worker imports: about 4 s of CPU on a quiet 2-core machine, which an embedding actor
# would otherwise pay between its creation and its first batch.
# Platform modules only (this module sits below ingest/): the embedding actor's own module is small
# once these are in.
WORKER_PRELOAD = ("ray.data", "dermground.platform.embed", "dermground.platform.images",
                  "dermground.platform.image_sources")
_WARM_START_MODULE = "dermground.platform.ray_warm_start"


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               object_store_mb: int = 512, temp_dir: Path | None = None,
               preload: Sequence[str] = WORKER_PRELOAD, ray_data: bool = True) -> str | None:
    """Connect to Ray once per process: join `address`, or start a small local session.

    `preload`: modules the first `num_cpus` workers of a started session import when they start
    (empty: none; see wait_for_warm_workers). `ray_data`: the session will run Ray Data (ingest),
    so Ray Data's helper actors are started off the warm workers (False for training: no such actors).
    Returns the session folder when this call started a local session (its processes belong to
    this process: see ingest/run_locks.py), else None."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return None
    address = cluster_address(address)
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    kwargs: dict[str, object] = {
        # "local", not None: left unset, ray.init joins whatever cluster /tmp/ray/ray_current_cluster
        # names (the last `ray start --head` on this machine, or a test's ray.cluster_utils.Cluster)
        # and then refuses our num_cpus; the docs promise a session of our own.
        "address": "local",
        "num_cpus": num_cpus or os.cpu_count() or 1,
        "include_dashboard": False,
        "object_store_memory": object_store_mb * 1024 * 1024,
        "log_to_driver": False,
    }
    if preload:
        kwargs["_system_config"] = {"preload_python_modules": [_WARM_START_MODULE]}
        _prepare_warm_slots(int(kwargs["num_cpus"]), preload)  # type: ignore[call-overload]
    if temp_dir is not None:
        # Ray's socket paths must stay short (AF_UNIX limit 107 bytes).
        temp_dir.mkdir(parents=True, exist_ok=True)
        kwargs["_temp_dir"] = str(temp_dir.resolve())
    context = ray.init(**kwargs)
    if preload and ray_data:
        _start_ray_data_helpers_off_the_warm_workers()
    return str(context.address_info.get("session_dir") or "") or None


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: `address` (--ray-address / DERMGROUND_RAY_ADDRESS), else Ray's own
    RAY_ADDRESS (which `ray job submit` sets for the driver it runs on the head), else None: start
    a local session. A cluster merely running on this machine is not joined unasked."""
    return address or os.environ.get("RAY_ADDRESS") or None


def _start_ray_data_helpers_off_the_warm_workers() -> None:
    """Create Ray Data's helper actors now, exactly as Ray Data would (same classes, names,
    namespaces and options, so its `get_if_exists` finds these), but in workers that skip the warm-up.

    Private Ray Data classes: when a Ray version moves one, nothing breaks but the first batch
    comes later, so any failure here is ignored, helper by helper."""
    for start in (_start_location_tracker, _start_autoscaling_coordinator, _start_stats_actor):
        try:
            start()
        except (ImportError, AttributeError, TypeError, ValueError):
            continue


def _node_label() -> dict[str, str]:
    import ray

    return {ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()}


def _cold_worker() -> dict[str, object]:
    from dermground.platform.ray_warm_start import WARM_SKIP_ENV

    return {"env_vars": {WARM_SKIP_ENV: "1"}}


def _start_location_tracker() -> None:
    from ray.data._internal.execution.node_trackers.actor_location import ActorLocationTracker

    ActorLocationTracker.options(name="ActorLocationTracker", namespace="ActorLocationTracker",
                                 get_if_exists=True, lifetime="detached", label_selector=_node_label(),
                                 max_concurrency=8, runtime_env=_cold_worker()).remote()


def _start_autoscaling_coordinator() -> None:
    # Ray Data's executor gives its operators no resources until this actor has answered once.
    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import _AutoscalingCoordinatorActor
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_AutoscalingCoordinatorActor).options(
        name="AutoscalingCoordinator", namespace="AutoscalingCoordinator", get_if_exists=True,
        lifetime="detached", scheduling_strategy=node, runtime_env=_cold_worker()).remote()


def _start_stats_actor() -> None:
    from ray.data._internal.stats import STATS_ACTOR_NAME, STATS_ACTOR_NAMESPACE, _StatsActor

    _StatsActor.options(name=STATS_ACTOR_NAME, namespace=STATS_ACTOR_NAMESPACE, get_if_exists=True,
                        lifetime="detached", label_selector=_node_label(), runtime_env=_cold_worker()).remote()


def _prepare_warm_slots(slots: int, modules: Sequence[str]) -> None:
    """Tell the session's workers (through the environment Ray's processes inherit) how many of
    them warm up, with which modules, and where they claim their slot."""
    import atexit
    import shutil
    import tempfile

    from dermground.platform.ray_warm_start import WARM_DIR_ENV, WARM_MODULES_ENV, WARM_SLOTS_ENV

    folder = tempfile.mkdtemp(prefix="dermground-ray-warm-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.update({WARM_DIR_ENV: folder, WARM_SLOTS_ENV: str(slots), WARM_MODULES_ENV: ",".join(modules)})


def wait_for_warm_workers(deadline_s: float) -> int:
    """Wait (up to `deadline_s`) until this process's local session has warmed all its slots;
    returns how many are warm (0 when no session of this process warms any)."""
    import time

    from dermground.platform.ray_warm_start import WARM_DIR_ENV, WARM_SLOTS_ENV

    folder, slots = os.environ.get(WARM_DIR_ENV), int(os.environ.get(WARM_SLOTS_ENV, "0") or 0)
    if not folder or not slots:
        return 0
    deadline = time.monotonic() + deadline_s
    while True:
        ready = len(list(Path(folder).glob("ready-*")))
        if ready >= slots or time.monotonic() >= deadline:
            return ready
        time.sleep(0.1)
