"""Can the Ray cluster ever place a training run's workers? Asked before Ray Train is started.

Ray Train waits until every worker has its resources: asked for more CPUs (`--workers` x
`--cpus-per-worker`) or GPUs than a local Ray has, `dermground train` hung silently forever after
"Started a local Ray instance". A local session never grows, so that is refused with the numbers
that fit; a joined cluster may grow (an autoscaler), so there it is a warning.
"""

from __future__ import annotations


def room_problem(workers: int, cpus_per_worker: int, use_gpu: bool, resources: dict[str, float]) -> str | None:
    """What the run needs that `resources` (Ray's cluster totals) lacks, with the flags that fit; None if it fits."""
    cpus = resources.get("CPU", 0.0)
    if use_gpu and resources.get("GPU", 0.0) < workers:
        gpus = int(resources.get("GPU", 0.0))
        return (f"--gpu --workers {workers} needs {workers} GPUs but the Ray cluster has {gpus}; "
                + (f"pass --workers {gpus}" if gpus else "leave --gpu out"))
    if cpus < workers * cpus_per_worker:
        fit = (f"pass --cpus-per-worker {int(cpus) // workers}" if cpus >= workers
               else f"pass --workers {max(1, int(cpus))} or fewer")
        return (f"--workers {workers} x --cpus-per-worker {cpus_per_worker} needs {workers * cpus_per_worker} CPUs "
                f"but the Ray cluster has {cpus:g}; {fit}")
    return None


def require_room(workers: int, cpus_per_worker: int, use_gpu: bool, joined: bool) -> str | None:
    """ValueError when a local Ray can never place the run's workers; on a joined cluster the problem as a
    warning (returned), since it may grow; None when they fit."""
    import ray

    problem = room_problem(workers, cpus_per_worker, use_gpu, ray.cluster_resources())
    if problem is None:
        return None
    if not joined:
        raise ValueError(f"{problem} (Ray Train would wait for them forever)")
    return f"{problem}; waiting until the cluster can place every worker"
