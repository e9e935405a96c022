"""Training as an operator runs it: odd data sizes for the worker count, existing output folders."""

from __future__ import annotations

from dermground.train.loop import batch_share, epoch_order


def test_every_worker_gets_a_share_of_a_batch_smaller_than_the_worker_count():
    """5 tuples, batch 4, 2 workers: the epoch's last batch holds one tuple. A worker with nothing
    to run never joins DDP's gradient all-reduce and the run hung there (test_train_ray.py's DDP
    test trains exactly that tail)."""
    order = epoch_order(5, seed=0, epoch=0)
    full = [batch_share(order, 0, 4, rank, 2) for rank in range(2)]
    assert full == [order[0:4][0::2], order[0:4][1::2]]  # a full batch is split as it always was
    tail = [batch_share(order, 1, 4, rank, 2) for rank in range(2)]
    assert tail[0] == [order[4]] and tail[1] == [order[0]]  # topped up with the epoch's first tuple
    one = epoch_order(1, seed=0, epoch=0)  # a data set smaller than the worker count
    assert [batch_share(one, 0, 4, rank, 3) for rank in range(3)] == [[0], [0], [0]]


def test_train_refuses_to_write_the_adapter_into_the_base_model_folder(tiny_model_dir, tmp_path):
    """`--out` = `--base` copied adapter_config.json and peft's README.md into the base model's
    folder after the run (a real checkpoint's model card overwritten, the base then looking like an
    adapter of itself). It is refused before Ray starts, with a folder to use instead."""
    import shutil

    from click.testing import CliRunner

    from dermground.ingest.synth import generate_dataset
    from dermground.platform.cli import cli

    data, base = tmp_path / "data", shutil.copytree(tiny_model_dir, tmp_path / "base")
    generate_dataset(data, patients=2, images=4, seed=3, size=64, progress=False, workers=1)
    before = sorted(p.name for p in base.iterdir())
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--base", str(base), "--out", str(base),
                                      "--max-steps", "1", "--batch-size", "2", "--cpus-per-worker", "1"])
    assert result.exit_code == 1, result.output
    assert "is the base model's folder" in result.output and "-adapter" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in base.iterdir()) == before  # nothing written there
