"""Ingest pipeline efficiency: images/s of the whole pipeline vs the bare batched embedding loop.

Same images (a synthetic data set at 112 px), same tiny model, same torch threads, in one run:
- bare: one process reads, decodes and prepares each image (ingest's recipe) and embeds it,
  in batches (model already loaded, Ray not involved, nothing written) - the reference; the
  model's share of its time is timed apart (the model-only reference);
- pipeline: `ingest_dataset` end to end (reader, partitions, the Ray Data CPU stage that reads,
  decodes and prepares, the embedding actor pool including its start-up and model load, store
  upserts, catalog and ledger files) into a fresh embedded store.
The bare loop runs before and after the pipeline (other jobs share the machine); efficiency is
measured against the faster bare round. With N actors the ceiling is N x the bare rate (each actor
is one such loop with the same threads). The pipeline's CPU stage runs beside its actors on the
CPUs they leave (ingest/stage_plan.py), so it can pass the bare loop, which does both in turn;
`model_only_efficiency` compares it with the model's share alone, the stricter reference. Ray's
own start-up is excluded (a cluster is already up); the actors' start-up and model load are
included in the end-to-end figure and excluded from the steady-state one (from the first
embedded batch reaching the driver to the end).
Last line (self-contained): `ingest efficiency=<x> steady_state_efficiency=<y> pipeline_images_per_s=<p>
ceiling_images_per_s=<c> images=<n> first_batch_s=<s> actors=<a> threads=<t> model_only_efficiency=<m>
warm=yes|started|no load=<1/5/15 min>`. Ray's start-up is excluded, and so is the warm-up of its
first workers (platform/ray_runtime.py) unless --no-warm-wait: on a cluster that is already up they are warm.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ingest.py [--images 2000] [--batch-size 8] [--actors 1]
        [--cpus-per-actor 2] [--no-preload | --no-warm-wait]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from harness import machine_line  # first: sets the offline environment


def bare_loop(data: Path, model_dir: Path, batch_size: int, threads: int) -> tuple[int, float, float]:
    """(images, seconds, model seconds) of read + decode + prepare + Embedder.embed_prepared over the
    data set, batched; images are prepared as ingest prepares them (the numpy recipe, bit-identical
    to the processor), and the model's share is timed apart."""
    import torch

    from dermground.platform.embed import Embedder
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.model.patch_recipe import PatchRecipe
    from dermground.platform.records import LesionRecord, read_records

    torch.set_num_threads(threads)
    embedder = Embedder(load_backbone(model_dir), batch_size=batch_size)
    recipe = PatchRecipe.from_model_dir(model_dir)
    records = [r for r in read_records(data) if isinstance(r, LesionRecord)]
    embedder.embed([records[0].load_image()])  # warm-up
    model_seconds = 0.0
    start = time.perf_counter()
    for i in range(0, len(records), batch_size):
        prepared = [recipe.prepare(r.load_image()) for r in records[i : i + batch_size]]
        model_start = time.perf_counter()
        embedder.embed_prepared(prepared)
        model_seconds += time.perf_counter() - model_start
    return len(records), time.perf_counter() - start, model_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--partition-size", type=int, default=256)
    parser.add_argument("--cpus-per-actor", type=int, default=None,
                        help="CPUs and torch threads per actor and of the bare loop [default: all cores / actors]")
    parser.add_argument("--no-preload", action="store_true",
                        help="Ray workers import nothing ahead (platform/ray_runtime.py WORKER_PRELOAD): the old start-up")
    parser.add_argument("--no-warm-wait", action="store_true",
                        help="Start the pipeline right after Ray starts, while its workers still warm up "
                             "(what a CLI run on a fresh local session sees)")
    args = parser.parse_args()

    from dermground.ingest.pipeline import ingest_dataset
    from dermground.ingest.stage_plan import plan_stages
    from dermground.ingest.synth import generate_dataset
    from dermground.platform.model.tiny import save_tiny_model
    from dermground.platform.ray_runtime import WORKER_PRELOAD, ensure_ray, wait_for_warm_workers
    from dermground.platform.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        root = Path(tmp)
        model_dir = save_tiny_model(root / "model", seed=0, preset="tiny", image_size=args.size)
        data = root / "data"
        generate_dataset(data, patients=max(1, args.images // 20), images=args.images, seed=0, size=args.size,
                         progress=False)
        print(machine_line())
        cpus = os.cpu_count() or 1
        threads = args.cpus_per_actor or max(1, cpus // args.actors)
        print(f"{args.images} images at {args.size} px, tiny model, batch {args.batch_size}, "
              f"{args.actors} actor(s) x {threads} CPU(s)/torch thread(s), partitions of {args.partition_size}, "
              f"{cpus} cores, load average {_load()}")
        plan = plan_stages(cpus, args.actors, args.cpus_per_actor)
        stage = "inline in the actors" if plan.prep_inline else f"up to {plan.prep_tasks} task(s) x 1 CPU"
        print(f"resources: bare loop = 1 process x {threads} torch thread(s) (read, decode, prepare, embed); "
              f"pipeline = {args.actors} embedding actor(s) x {plan.embed_cpus:g} CPU(s)/torch thread(s) + CPU stage "
              f"(read, decode, prepare) {stage} + the driver (reader, payloads, store and catalog writes) in a {cpus}-CPU Ray session; worker preload: "
              f"{'none' if args.no_preload else ', '.join(WORKER_PRELOAD)}")
        n, bare_1, model_1 = bare_loop(data, model_dir, args.batch_size, threads)
        print(f"bare loop round 1: {n} images in {bare_1:.2f} s ({n / bare_1:.1f} images/s), of which the model "
              f"{model_1:.2f} s ({n / model_1:.1f} images/s)")

        started = time.perf_counter()
        ensure_ray(num_cpus=cpus, object_store_mb=512, temp_dir=Path(tempfile.mkdtemp(prefix="rayb", dir="/tmp")),
                   preload=() if args.no_preload else WORKER_PRELOAD)
        print(f"ray start-up (excluded): {time.perf_counter() - started:.2f} s")
        if not args.no_preload and not args.no_warm_wait:
            started = time.perf_counter()
            warm = wait_for_warm_workers(300)
            print(f"worker warm-up (excluded, as on a cluster already up): {warm} worker(s) warm after "
                  f"{time.perf_counter() - started:.2f} s")
        settings = load_settings(home=root / "home")
        summary = ingest_dataset(data, "bench", settings, model_dir=model_dir, split="all",
                                 partition_size=args.partition_size, batch_size=args.batch_size,
                                 actors=args.actors, cpus_per_actor=threads, progress=False)
        assert summary.ingested == n, summary
        pipeline_rate = summary.ingested / summary.seconds
        first = summary.first_batch_seconds or 0.0
        steady_rate = (summary.ingested - summary.first_batch_rows) / (summary.seconds - first)
        print(f"pipeline: {summary.ingested} images in {summary.seconds:.2f} s ({pipeline_rate:.1f} images/s), "
              f"{summary.partitions} partitions committed; first batch back after {first:.2f} s "
              f"(actor start-up + model load), then {steady_rate:.1f} images/s")
        print(f"pipeline {summary.model_busy.describe()}")

        _, bare_2, model_2 = bare_loop(data, model_dir, args.batch_size, threads)
        print(f"bare loop round 2: {n} images in {bare_2:.2f} s ({n / bare_2:.1f} images/s), of which the model "
              f"{model_2:.2f} s ({n / model_2:.1f} images/s)")
        ceiling = args.actors * n / min(bare_1, bare_2)
        model_ceiling = args.actors * n / min(model_1, model_2)
        print(f"model-only reference (the actors' share of the bare loop; the pipeline moves the rest to its CPU "
              f"stage): {model_ceiling:.1f} images/s; pipeline / model-only {pipeline_rate / model_ceiling:.3f}, "
              f"steady state {steady_rate / model_ceiling:.3f}")
        print(f"ingest efficiency={pipeline_rate / ceiling:.3f} steady_state_efficiency={steady_rate / ceiling:.3f} "
              f"pipeline_images_per_s={pipeline_rate:.1f} ceiling_images_per_s={ceiling:.1f} images={n} "
              f"first_batch_s={first:.2f} actors={args.actors} threads={threads} "
              f"model_only_efficiency={pipeline_rate / model_ceiling:.3f} "
              f"warm={'no' if args.no_preload else 'started' if args.no_warm_wait else 'yes'} load={_load()}")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
