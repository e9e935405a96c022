"""How busy ingest kept its model: seconds the embedding actors spent in it against their time.

With one GPU per actor this is the GPU's busy share as the pipeline sees it (an upper bound:
gaps between kernels inside a model call count as busy). It tells an operator which side limits
a run: near 1 the model is the bottleneck (a faster card or more actors help); well below it the
actors wait for images (more CPUs for the preparation stage, faster storage).

Each output row of an embedding actor carries its actor's id, its share of its batch's model
seconds and when (the actor's clock) the batch's model call ended (ingest/embedding_actor.py); the
driver feeds every batch it receives to a `WaveClock`. The steady state is timed on the actors'
clocks: Ray Data hands the driver a block of several batches at once, so the driver's receive
times say little about when the work was done.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ModelBusy:
    """Model seconds against actor seconds, over a whole run, and in the steady state."""

    model_seconds: float = 0.0
    actor_seconds: float = 0.0  # each wave's embedding wall time x its actors (start-up included)
    # From the end of each actor's first batch to the end of its last: the rate a long run settles at.
    steady_model_seconds: float = 0.0
    steady_actor_seconds: float = 0.0
    actors: int = 0  # the most actors one wave used

    @property
    def fraction(self) -> float | None:
        """Share of the actors' time spent in the model, actor start-up and model load included."""
        return self.model_seconds / self.actor_seconds if self.actor_seconds > 0 else None

    @property
    def steady_fraction(self) -> float | None:
        """The same after each actor's first batch (None when no actor embedded two batches)."""
        return self.steady_model_seconds / self.steady_actor_seconds if self.steady_actor_seconds > 0 else None

    def describe(self) -> str:
        """One line for the CLI and logs."""
        if self.fraction is None:
            return "model busy: nothing embedded"
        steady = self.steady_fraction
        return (f"model busy {self.fraction:.0%} of the embedding actors' time"
                + (f" ({steady:.0%} after each actor's first batch)" if steady is not None else "")
                + f", {self.model_seconds:.1f} s in the model, {self.actors} actor(s)")

    def wave(self, configured_actors: int) -> WaveClock:
        """A clock for one wave of the pipeline, started now."""
        return WaveClock(self, configured_actors)


@dataclass
class WaveClock:
    """Collects one wave's batches; `finish` adds the wave to its ModelBusy."""

    busy: ModelBusy
    configured_actors: int
    started: float = field(default_factory=time.perf_counter)
    # actor -> {the batch's end on the actor's clock -> its model seconds}
    batches: dict[str, dict[float, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))

    def observe(self, actors: np.ndarray, model_seconds: np.ndarray, finished: np.ndarray) -> None:
        """One received block: its rows' actor ids, model seconds and batch end times (the actor's clock)."""
        for actor, seconds, end in zip(actors, model_seconds, finished, strict=True):
            self.batches[str(actor)][float(end)] += float(seconds)
            self.busy.model_seconds += float(seconds)

    def finish(self) -> None:
        """The wave's last batch has been received."""
        actors = max(self.configured_actors, len(self.batches))
        self.busy.actor_seconds += (time.perf_counter() - self.started) * actors
        for ends in self.batches.values():
            if len(ends) < 2:
                continue
            order = sorted(ends)
            # The first batch's work lies before the span, which starts where it ended.
            self.busy.steady_model_seconds += sum(ends[end] for end in order[1:])
            self.busy.steady_actor_seconds += order[-1] - order[0]
        self.busy.actors = max(self.busy.actors, actors)
