"""The end-to-end demo as resumable stages, each one a `dermground` CLI invocation.

A stage that finished writes a marker (with the command it ran) under HOME/demo/; a second
`make demo` skips it, so only unfinished work is redone. Stages call the real CLI in a child
process, which keeps each stage's Ray session and store lock to itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dermground.platform.next_step import next_command


@dataclass(frozen=True)
class DemoSize:
    """How big the demo's data set and training run are."""

    patients: int
    images: int
    image_px: int  # size of the synthetic JPEGs
    model_px: int  # the tiny model's fixed input size
    pretrain_args: tuple[str, ...]
    train_args: tuple[str, ...]
    seed: int = 7


# Each setting below won a measured comparison; the runs and figures: docs/EVALUATION.md, "Tuning history".
# model_px 140: 25 image tokens instead of 16 help the colour contrasts; 168 px was slower and no better.
FULL = DemoSize(patients=120, images=2400, image_px=128, model_px=140,
                # --tower-steps 2000: the vision tower first learns local colour and texture (the largest gain).
                pretrain_args=("--epochs", "2", "--max-steps", "1400", "--lr", "1e-3", "--tower-steps", "2000"),
                # rank 32 / alpha 64 beat rank 8; no LoRA dropout (its masks cost a sixth of a step) so that 17
                # epochs fit the 20 training minutes; --augment-views 8 shows a random turn or mirror image per use.
                train_args=("--epochs", "17", "--lr", "1e-3", "--warmup-steps", "30", "--train-lm-head",
                            "--rank", "32", "--alpha", "64", "--dropout", "0", "--augment-views", "8"))
SMALL = DemoSize(patients=24, images=240, image_px=128, model_px=112,
                 pretrain_args=("--epochs", "2", "--max-steps", "150", "--lr", "1e-3", "--tower-steps", "200"),
                 train_args=("--epochs", "3", "--lr", "1e-3", "--warmup-steps", "10", "--train-lm-head",
                             "--augment-views", "8"))
# One embedding actor on one thread: on 2 shared cores, 2 torch threads for the tiny model were
# measured up to 20x slower under load (docs/BENCHMARKS.md, ingest pipeline).
INGEST_ARGS = ("--actors", "1", "--cpus-per-actor", "1")
TUNED, UNTUNED = "demo_tuned", "demo_untuned"


@dataclass(frozen=True)
class Stage:
    """One resumable step: a name and the CLI arguments after `dermground`."""

    name: str
    args: list[str]
    outputs: list[Path] = field(default_factory=list)
    # Removed before the stage runs again because an earlier stage changed (not on a resume).
    stale_when_upstream_changes: list[Path] = field(default_factory=list)
    # Collections of the embedded store removed then, every version and the alias record: removing
    # the bare folder alone left a version made since (a `snapshot restore`, an `ingest
    # --new-version`) live, and the stage's ingest then met the old model's vectors there.
    stale_collections: list[str] = field(default_factory=list)
    # Runs every time: it resumes by itself (ingest's ledger) and is cheap when there is nothing to
    # do, so a collection lost since the last run is rebuilt instead of trusted from a marker. Such
    # a run alone does not make later stages stale (it rebuilds the same content).
    idempotent: bool = False


def plan_stages(home: Path, size: DemoSize) -> list[Stage]:
    """The demo's stages in order (the last one, serve, is run by the caller)."""
    demo = home / "demo"
    data, models, evals = demo / "data", home / "models", demo / "eval"
    random_base, base, adapter = models / "tiny-random", models / "base", models / "adapter"
    seed = str(size.seed)
    return [
        Stage("init-model", ["model", "init-tiny", "--out", str(random_base), "--preset", "tiny",
                             "--image-size", str(size.model_px), "--seed", seed, "--force"],
              [random_base / "config.json"]),
        Stage("synth", ["synth", "--out", str(data), "--patients", str(size.patients),
                        "--images", str(size.images), "--seed", seed, "--size", str(size.image_px),
                        "--overwrite"], [data / "train-metadata.csv"]),
        Stage("pretrain", ["pretrain", "--data", str(data), "--base", str(random_base), "--out", str(base),
                           *size.pretrain_args, "--seed", seed], [base / "config.json"],
              stale_when_upstream_changes=[base]),
        Stage("train", ["train", "--data", str(data), "--base", str(base), "--out", str(adapter),
                        *size.train_args, "--seed", seed], [adapter / "adapter_config.json"],
              stale_when_upstream_changes=[adapter]),
        Stage("eval-predict", ["eval", "predict", "--data", str(data), "--model", str(base),
                               "--adapter", str(adapter), "--out", str(evals / "predict"), "--samples", "4", "--views", "8"],
              [evals / "predict" / "prediction.json"]),
        Stage("ingest-tuned", ["ingest", "--data", str(data), "--collection", TUNED, "--model", str(base),
                               "--adapter", str(adapter), "--split", "all", *INGEST_ARGS],
              stale_collections=[TUNED], idempotent=True),
        Stage("ingest-untuned", ["ingest", "--data", str(data), "--collection", UNTUNED, "--model", str(base),
                                 "--split", "all", *INGEST_ARGS], stale_collections=[UNTUNED],
              idempotent=True),
        Stage("check", ["check", "--collection", TUNED], idempotent=True),
        Stage("check-untuned", ["check", "--collection", UNTUNED], idempotent=True),
        Stage("eval-retrieval", ["eval", "retrieval", "--collection", TUNED, "--untuned-collection", UNTUNED,
                                 "--out", str(evals / "retrieval"), "--b", "200", "--k", "5"],
              [evals / "retrieval" / "retrieval.json"]),
    ]


def cli_command(home: Path, args: list[str]) -> list[str]:
    """`dermground --home HOME ARGS...` in a child process of this interpreter."""
    return [sys.executable, "-m", "dermground", "--home", str(home), *args]


def serve_command(home: Path, port: int) -> list[str]:
    """The final step: serve the tuned collection with its model on loopback."""
    models = home / "models"
    return cli_command(home, ["serve", "--host", "127.0.0.1", "--port", str(port), "--collection", TUNED,
                              "--model", str(models / "base"), "--adapter", str(models / "adapter")])


def _marker(home: Path, stage: Stage) -> Path:
    return home / "demo" / "stages" / f"{stage.name}.json"


def remove_collection(home: Path, name: str) -> None:
    """Every version of a demo collection in the embedded store under `home`, and its alias record
    (its catalog rows stay, as after `collections drop`: the demo's rebuild writes its own)."""
    from dermground.platform.settings import load_settings
    from dermground.platform.store.edge_versions import ALIAS_DIR, EdgeCollections
    from dermground.platform.store.versions import physical_name

    store_dir = load_settings(home=home).store_dir
    for version in EdgeCollections(store_dir).versions(name):
        shutil.rmtree(store_dir / physical_name(name, version), ignore_errors=True)
    (store_dir / ALIAS_DIR / f"{name}.json").unlink(missing_ok=True)


def _recorded_command(marker: Path) -> list[str] | None:
    """The command a finished stage ran (None for an unreadable marker: the stage reruns)."""
    try:
        return json.loads(marker.read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_stages(home: Path, stages: list[Stage], echo: Callable[[str], None] = print,
               force: bool = False, rerun: str | None = None) -> list[str]:
    """Run unfinished stages in order; return the names of the ones that ran.

    `rerun` is the command a failed stage tells the user to run again (the demo as it was invoked:
    `make demo` would run the full demo on the default home, not resume this one).

    A stage is reused only when it finished with the same command (a changed demo setting reruns
    it). Once a stage runs, every later stage runs too: its inputs may have changed. Idempotent
    stages always run, and make later stages rerun only when they ran because of such a change.
    """
    ran: list[str] = []
    changed = False
    for stage in stages:
        marker = _marker(home, stage)
        command = cli_command(home, stage.args)
        same = (marker.exists() and all(p.exists() for p in stage.outputs)
                and _recorded_command(marker) == command[2:])
        if same and not force and not changed and not stage.idempotent:
            echo(f"[demo] {stage.name}: done earlier, reusing ({marker})")
            continue
        stale = changed or force or (marker.exists() and not same)
        if stale:  # not a resume: earlier results are stale
            for stale_path in stage.stale_when_upstream_changes:
                shutil.rmtree(stale_path, ignore_errors=True)
            for name in stage.stale_collections:
                remove_collection(home, name)
            marker.unlink(missing_ok=True)
        echo(f"[demo] {stage.name}: {' '.join(command[2:])}")
        started = time.perf_counter()
        result = subprocess.run(command)
        if result.returncode != 0:
            raise RuntimeError(f"demo stage {stage.name!r} failed (exit {result.returncode}); "
                               f"fix the error above and run `{rerun or next_command('demo')}` again to resume from it")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"command": command[2:],
                                      "seconds": round(time.perf_counter() - started, 1)}))
        ran.append(stage.name)
        changed = changed or stale or not (same and stage.idempotent)
    return ran
