"""How an ingest run's two Ray Data stages share the cluster's CPUs.

The CPU stage (ingest/image_prep.py: read, decode, patchify) and the embedding actors
(ingest/embedding_actor.py) run side by side when there are CPUs for both. The actors get what
they always got (the --cpus-per-actor value, else the CPUs shared evenly by the actors; one CPU
each when they hold GPUs, whose work is on the card); the CPU stage gets the CPUs left over, one
per concurrent task. When less than one CPU is left (the default on a CPU-only machine: the
actors hold every core), the stage runs inline, fused by Ray Data into the actors: each actor
prepares its own images before embedding them, as a separate stage would only take cores from
the model (measured: a 2-thread actor beside an unreserved preparing task ran at 0.76x; see
docs/BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StagePlan:
    """CPUs per embedding actor (= its torch threads) and the CPU stage's concurrent tasks."""

    embed_cpus: float
    prep_tasks: int  # each reserves one CPU; 0: the stage runs inline, in the actors

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.embed_cpus))

    @property
    def prep_inline(self) -> bool:
        return self.prep_tasks == 0


def plan_stages(cluster_cpus: float, actors: int, cpus_per_actor: float | None,
                gpus_per_actor: float = 0.0) -> StagePlan:
    """The plan for `actors` embedding actors on a cluster with `cluster_cpus` CPUs in all."""
    if cpus_per_actor is None:
        cpus_per_actor = 1.0 if gpus_per_actor > 0 else max(1.0, math.floor(cluster_cpus / actors))
    spare = cluster_cpus - actors * cpus_per_actor
    return StagePlan(cpus_per_actor, int(spare) if spare >= 1 else 0)
