"""The end-to-end demo as resumable stages, each one a `dermground` CLI invocation.

A stage that finished writes a marker (with the command it ran) under HOME/demo/; a second
`make demo` skips it, so only unfinished work is redone. Stages call the real CLI in a child
process, which keeps each stage's Ray session and store lock to itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DemoSize:
    """How big the demo's data set and training run are."""

    patients: int
    images: int
    image_px: int
    seed: int = 7


FULL = DemoSize(patients=120, images=2400, image_px=128)
SMALL = DemoSize(patients=24, images=240, image_px=128)


@dataclass(frozen=True)
class Stage:
    """One resumable step: a name and the CLI arguments after `dermground`."""

    name: str
    args: list[str]
    outputs: list[Path] = field(default_factory=list)


def plan_stages(home: Path, size: DemoSize) -> list[Stage]:
    """The demo's stages in order."""
    data = home / "demo" / "data"
    return [
        Stage("synth", ["synth", "--out", str(data), "--patients", str(size.patients),
                        "--images", str(size.images), "--seed", str(size.seed),
                        "--size", str(size.image_px)], [data / "train-metadata.csv"]),
    ]


def _marker(home: Path, stage: Stage) -> Path:
    return home / "demo" / "stages" / f"{stage.name}.json"


def run_stages(home: Path, stages: list[Stage], echo: Callable[[str], None] = print,
               force: bool = False) -> list[str]:
    """Run unfinished stages in order; return the names of the ones that ran."""
    ran = []
    for stage in stages:
        marker = _marker(home, stage)
        if marker.exists() and not force and all(p.exists() for p in stage.outputs):
            echo(f"[demo] {stage.name}: done earlier, reusing ({marker})")
            continue
        command = [sys.executable, "-m", "dermground", "--home", str(home), *stage.args]
        echo(f"[demo] {stage.name}: {' '.join(command[2:])}")
        started = time.perf_counter()
        result = subprocess.run(command)
        if result.returncode != 0:
            raise RuntimeError(f"demo stage {stage.name!r} failed (exit {result.returncode}); "
                               f"fix the error above and run `make demo` again to resume from it")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"command": command[2:],
                                      "seconds": round(time.perf_counter() - started, 1)}))
        ran.append(stage.name)
    return ran
