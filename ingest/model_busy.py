"""How busy ingest kept its model: seconds the embedding actors spent in it against their time.

With one GPU per actor this is the GPU's busy share as the pipeline sees it (an upper bound:
gaps between kernels inside a model call count as busy). It tells an operator which side limits
a run: near 1 the model is the bottleneck (a faster card or more actors help); well below it the
actors wait for images (more CPUs for the preparation stage, faster storage).

Each output row of an embedding actor carries its actor's id and its share of its batch's model
seconds (ingest/embedding_actor.py); the driver feeds every batch it receives to a `WaveClock`.
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
    # From each actor's first batch to its last: the rate a long run settles at.
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
    first_seen: dict[str, float] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    steady_model: float = 0.0

    def observe(self, actors: np.ndarray, model_seconds: np.ndarray) -> None:
        """One received batch: its rows' actor ids and model seconds."""
        now = time.perf_counter()
        per_actor: dict[str, float] = defaultdict(float)
        for actor, seconds in zip(actors, model_seconds, strict=True):
            per_actor[str(actor)] += float(seconds)
        for actor, seconds in per_actor.items():
            self.busy.model_seconds += seconds
            if actor in self.first_seen:
                self.last_seen[actor] = now
                self.steady_model += seconds  # the first batch's work lies before the steady span
            else:
                self.first_seen[actor] = now

    def finish(self) -> None:
        """The wave's last batch has been received."""
        actors = max(self.configured_actors, len(self.first_seen))
        self.busy.actor_seconds += (time.perf_counter() - self.started) * actors
        self.busy.steady_model_seconds += self.steady_model
        self.busy.steady_actor_seconds += sum(last - self.first_seen[a] for a, last in self.last_seen.items())
        self.busy.actors = max(self.busy.actors, actors)
