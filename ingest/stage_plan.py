"""How an ingest run's two Ray Data stages share the cluster's CPUs.

The CPU stage (ingest/image_prep.py: read, decode, patchify) and the embedding actors
(ingest/embedding_actor.py) run side by side. The actors get what they always got (the
--cpus-per-actor value, else the CPUs shared evenly by the actors; one CPU each when they hold
GPUs, whose work is on the card); the CPU stage gets the CPUs left over, one per concurrent task.
When nothing is left (the actors hold every CPU) one task at a time still runs, reserving no
CPU: it takes the share of the cores the actors used to spend preparing images themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StagePlan:
    """CPUs per embedding actor (= its torch threads) and the CPU stage's concurrent tasks."""

    embed_cpus: float
    prep_cpus: float  # reserved per task (0: shares the embedding actors' cores)
    prep_tasks: int

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.embed_cpus))


def plan_stages(cluster_cpus: float, actors: int, cpus_per_actor: float | None,
                gpus_per_actor: float = 0.0) -> StagePlan:
    """The plan for `actors` embedding actors on a cluster with `cluster_cpus` CPUs in all."""
    if cpus_per_actor is None:
        cpus_per_actor = 1.0 if gpus_per_actor > 0 else max(1.0, math.floor(cluster_cpus / actors))
    spare = cluster_cpus - actors * cpus_per_actor
    if spare >= 1:
        return StagePlan(cpus_per_actor, 1.0, int(spare))
    return StagePlan(cpus_per_actor, max(0.0, spare), 1)
