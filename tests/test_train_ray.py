"""Short Ray Train runs on the tiny model: adapter + metadata, resume, pre-training, eval predict."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES
from dermground.train.config import PretrainConfig, TrainConfig


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from dermground.ingest.synth import generate_dataset
    from dermground.platform.records import LesionRecord, read_records

    out = tmp_path_factory.mktemp("ray_train") / "data"
    generate_dataset(out, patients=8, images=16, seed=11, size=64, progress=False, workers=1)
    splits = [r.split for r in read_records(out) if isinstance(r, LesionRecord)]
    assert "train" in splits and "test" in splits  # the tests below need both sides
    return out


@pytest.fixture(scope="module")
def trained(ray_session, small_data, tiny_model_dir, tmp_path_factory):
    """Two runs of the same configuration: 2 steps, then (re-run) up to 4 steps.

    The re-run keeps no encoded examples (cache_mb=0): the cache is speed only, so it must still
    resume the same run, on the path that re-encodes every step.
    """
    from dermground.train.ray_train import train_adapter

    out = tmp_path_factory.mktemp("adapter") / "adapter"
    run = dict(progress=False, cpus_per_worker=2)
    config = TrainConfig(batch_size=4, lr=5e-3, checkpoint_every=1, seed=0, max_steps=2)
    first = train_adapter(small_data, tiny_model_dir, out, config, **run)
    # A longer run of the same configuration, with another (speed-only) cache size: the same run, resumed.
    longer = TrainConfig(batch_size=4, lr=5e-3, checkpoint_every=1, seed=0, max_steps=4)
    second = train_adapter(small_data, tiny_model_dir, out, longer, cache_mb=0, **run)
    return out, first, second


def test_run_saves_adapter_with_metadata(trained, tiny_model_dir):
    from dermground.platform.model.fingerprint import fingerprint

    out, first, _ = trained
    assert first.steps == 2 and first.resumed_from_step is None
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    meta = json.loads((out / "dermground_adapter.json").read_text())
    assert meta["base_fingerprint"] == fingerprint(tiny_model_dir)
    assert meta["data_fingerprint"] == first.data_fingerprint and len(meta["data_fingerprint"]) == 16
    assert meta["hyperparameters"]["lr"] == 5e-3 and meta["hyperparameters"]["rank"] == 8
    assert meta["prompt_version"] and meta["n_tuples"] == first.n_tuples
    assert meta["loss_curve"] and all(loss > 0 for _, loss in meta["loss_curve"])
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and "visual" in adapter_config["target_modules"]


def test_rerun_resumes_from_the_checkpoint_step(trained):
    out, first, second = trained
    assert second.resumed_from_step == 2  # continued from the first run's last checkpoint, not from 0
    assert second.steps == 4
    assert second.data_fingerprint == first.data_fingerprint
    assert [step for step, _ in second.loss_curve] == [2, 4]  # the first run's history is kept
    assert json.loads((out / "dermground_adapter.json").read_text())["resumed_from_step"] == 2


def test_a_run_resumes_only_on_the_base_weights_it_started_on(trained, tiny_model_dir, tmp_path):
    """The run folder is named after the base's path: a re-run after another checkpoint was downloaded
    into the same folder continued the first base's LoRA state on the second. The run records its base."""
    from dermground.platform.model.base_weights import base_weights_digest
    from dermground.platform.model.loading import BackboneError
    from dermground.platform.model.tiny import save_tiny_model
    from dermground.train.run_base import RUN_BASE_FILE, require_same_base

    out, _, second = trained
    (record,) = (out / "checkpoints").glob(f"run-*/{RUN_BASE_FILE}")  # written by the first run, resumed by the second
    assert json.loads(record.read_text())["base_weights_digest"] == base_weights_digest(tiny_model_dir)
    require_same_base(record.parent, tiny_model_dir)  # the same base resumes
    replaced = save_tiny_model(tmp_path / "base", seed=1, preset="tiny", image_size=112)  # same shapes, other weights
    with pytest.raises(BackboneError, match=f"the checkpoints in {record.parent} were trained on other base weights"):
        require_same_base(record.parent, replaced)


def test_rerun_says_at_its_start_that_it_resumes(trained, tiny_model_dir):
    """A re-run's log said "resumed from step N" only after the whole run; a long run that restarted
    from scratch (another flag, another base) said nothing. Its first line after Ray starts says which now."""
    from click.testing import CliRunner

    from dermground.platform.cli import cli

    import os
    import shutil

    out, _, _ = trained
    data_dir = json.loads((out / "dermground_adapter.json").read_text())["data_dir"]
    # What a run killed while writing a checkpoint leaves: a folder Ray's snapshot does not name (test_train_run_checkpoints.py).
    run_folder = next((out / "checkpoints").glob("run-*"))
    unfinished = run_folder / "checkpoint_2000-01-01_00-00-00.000000"
    shutil.copytree(sorted(p for p in run_folder.glob("checkpoint_*") if p.is_dir())[-1], unfinished)
    os.utime(unfinished, (0, 0))
    for path in unfinished.rglob("*"):
        os.utime(path, (0, 0))
    result = CliRunner().invoke(cli, ["train", "--data", data_dir, "--base", str(tiny_model_dir), "--out", str(out), "--batch-size", "4",
                                      "--lr", "0.005", "--checkpoint-every", "1", "--seed", "0", "--max-steps", "4",
                                      "--cpus-per-worker", "2"])
    assert result.exit_code == 0, result.output
    assert "train: resuming from step 4 of 4 (checkpoint in" in result.stderr  # with the progress lines
    assert not unfinished.exists() and f"unfinished checkpoint folder(s) of an interrupted run from {run_folder}" in result.stderr


def test_a_rerun_asking_for_fewer_steps_than_its_checkpoint_has_is_refused(trained, small_data, tiny_model_dir):
    """The run is at step 4; a re-run with --max-steps 2 saved the 4-step adapter while its metadata said
    max_steps 2. It is refused before Ray starts, with the two ways out, and the adapter is left as it was."""
    from dermground.train.ray_train import train_adapter

    out, _, second = trained
    before = (out / "adapter_model.safetensors").read_bytes()
    shorter = TrainConfig(batch_size=4, lr=5e-3, checkpoint_every=1, seed=0, max_steps=2)
    with pytest.raises(ValueError, match=r"at step 4, past the 2 steps asked for \(--max-steps 2\); pass --max-steps 4"):
        train_adapter(small_data, tiny_model_dir, out, shorter, progress=False, cpus_per_worker=2)
    assert (out / "adapter_model.safetensors").read_bytes() == before and second.steps == 4


def test_trained_adapter_changes_the_outputs(trained, tiny_model_dir, tiny_backbone):
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.model.prompts import build_prompt

    out, _, _ = trained
    tuned = load_backbone(tiny_model_dir, out, device="cpu", dtype="float32")
    assert tuned.fingerprint != tiny_backbone.fingerprint
    image = Image.new("RGB", (112, 112), (170, 110, 90))
    inputs = tiny_backbone.processor(text=[build_prompt("What is the area of the lesion in mm²?")], images=[image],
                                     return_tensors="pt")
    with torch.inference_mode():
        base_logits = tiny_backbone.model(**inputs).logits[0, -1]
        tuned_logits = tuned.model(**inputs).logits[0, -1]
    assert (base_logits - tuned_logits).abs().max() > 1e-3


def test_pretraining_writes_a_loadable_base_model(ray_session, small_data, tiny_model_dir, tmp_path):
    from dermground.platform.model.loading import load_backbone
    from dermground.train.pretrain import PRETRAIN_METADATA_FILE, pretrain_base

    out = tmp_path / "pretrained"
    meta = pretrain_base(small_data, tiny_model_dir, out, PretrainConfig(max_steps=2, batch_size=4), progress=False,
                         cpus_per_worker=2)
    assert meta["steps"] == 2 and (out / PRETRAIN_METADATA_FILE).is_file()
    backbone = load_backbone(out, device="cpu", dtype="float32")
    assert backbone.fingerprint != load_backbone(tiny_model_dir, device="cpu", dtype="float32").fingerprint
    from safetensors.torch import load_file

    old, new = load_file(next(tiny_model_dir.glob("*.safetensors"))), load_file(next(out.glob("*.safetensors")))
    assert set(old) == set(new)
    assert any(not torch.equal(old[k], new[k]) for k in old if "visual.blocks" in k)  # full-parameter: vision too
    with pytest.raises(ValueError, match="must differ"):
        pretrain_base(small_data, tiny_model_dir, tiny_model_dir, PretrainConfig(max_steps=1), progress=False)


def test_eval_predict_cli_writes_json_figure_and_catalog(trained, small_data, tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from dermground.platform.catalog import Catalog
    from dermground.platform.cli import cli
    from dermground.platform.commands.context import use_settings
    from dermground.platform.records import LesionRecord, read_records

    out_adapter, _, _ = trained
    home, out = tmp_path / "home", tmp_path / "eval"
    n_test = sum(isinstance(r, LesionRecord) for r in read_records(small_data, split="test"))
    try:
        result = CliRunner().invoke(cli, ["--home", str(home), "eval", "predict", "--data", str(small_data),
                                          "--model", str(tiny_model_dir), "--adapter", str(out_adapter),
                                          "--out", str(out)])
    finally:
        use_settings(None)  # do not leak this test's home into other tests
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prediction.json").read_text())
    assert list(report) == list(ATTRIBUTE_NAMES)
    assert all(row["n"] == n_test and 0.0 <= row["parse_rate"] <= 1.0 for row in report.values())
    assert (out / "prediction_r2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    catalog = Catalog(home / "catalog")
    (count,) = catalog.connect().execute("SELECT count(*) FROM predictions").fetchone()
    assert count == n_test * 16
    rows = catalog.connect().execute(
        "SELECT attribute, metric, value FROM evaluations WHERE kind = 'attribute_prediction'").fetchall()
    assert len(rows) == 32 and {r[1] for r in rows} == {"r2", "parse_rate"}
    # the default decoding: the mean of 4 sampled answers in each of 8 views, greedy answers scored beside it
    greedy = json.loads((out / "prediction_greedy.json").read_text())
    assert list(greedy) == list(ATTRIBUTE_NAMES) and all(row["n"] == n_test for row in greedy.values())
    (most, unparsed_with_value) = catalog.connect().execute(
        "SELECT max(samples), count(*) FILTER (WHERE NOT ok AND value IS NOT NULL) FROM predictions").fetchone()
    assert most <= 32 and unparsed_with_value == 0
    (details,) = catalog.connect().execute("SELECT any_value(details) FROM evaluations").fetchone()
    assert json.loads(details)["decoding"] == "mean of 4 samples x 8 views"
    # prediction_errors carries what the run scored against: R² from the view equals the report's.
    import numpy as np

    from dermground.eval.predictions import r2_score

    truth = {r.isic_id: r.attributes for r in read_records(small_data, split="test") if isinstance(r, LesionRecord)}
    errors = catalog.connect().execute(
        "SELECT isic_id, attribute, measured, predicted, error FROM prediction_errors").fetchall()
    assert all(measured == pytest.approx(truth[isic_id][attribute]) for isic_id, attribute, measured, _, _ in errors)
    for name in ("areaMM2", "A"):
        pairs = [(m, p) for _, a, m, p, _ in errors if a == name and p is not None]
        if len(pairs) >= 2 and np.isfinite(report[name]["r2"]):
            assert r2_score([m for m, _ in pairs], [p for _, p in pairs]) == pytest.approx(report[name]["r2"])
    try:  # a plain greedy run into the same folder drops the sampled run's greedy sidecar
        result = CliRunner().invoke(cli, ["--home", str(home), "eval", "predict", "--data", str(small_data),
                                          "--model", str(tiny_model_dir), "--adapter", str(out_adapter),
                                          "--out", str(out), "--samples", "0", "--views", "1", "--max-images", "2",
                                          "--no-catalog"])
    finally:
        use_settings(None)
    assert result.exit_code == 0, result.output
    assert not (out / "prediction_greedy.json").exists()
    assert all(row["n"] == 2 for row in json.loads((out / "prediction.json").read_text()).values())


def test_eval_predict_on_missing_data_is_a_clear_error(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from dermground.platform.cli import cli
    from dermground.platform.commands.context import use_settings

    try:
        result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "eval", "predict", "--data",
                                          str(tmp_path / "nothing"), "--model", str(tiny_model_dir), "--out",
                                          str(tmp_path / "out")])
    finally:
        use_settings(None)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"dermground --home {tmp_path / 'home'} synth" in result.output  # the next step acts on the same home


def test_two_workers_train_with_ddp(ray_session, small_data, tiny_model_dir, tmp_path):
    """More than one worker: DDP over Ray Train's process group; each worker gets 1 of the 2 CPUs.

    With view augmentation: both workers draw the same views (a shared seed), images turned as patches.
    One image's 5 tuples in batches of 4: the second step's batch holds one tuple for two workers
    (the worker left without one used to hang DDP's all-reduce; it is topped up now).
    """
    from dermground.train.ray_train import train_adapter

    out = tmp_path / "adapter_ddp"
    config = TrainConfig(workers=2, batch_size=4, lr=5e-3, max_steps=2, checkpoint_every=0, seed=0, augment_views=8)
    result = train_adapter(small_data, tiny_model_dir, out, config, cpus_per_worker=1, progress=False, max_images=1)
    assert result.steps == 2 and result.n_tuples == 5
    assert (out / "adapter_model.safetensors").is_file()
    meta = json.loads((out / "dermground_adapter.json").read_text())
    assert meta["hyperparameters"]["workers"] == 2 and meta["hyperparameters"]["augment_views"] == 8


def test_view_augmentation_outside_the_dihedral_group_is_refused(small_data, tiny_model_dir, tmp_path):
    from dermground.train.ray_train import train_adapter

    for bad in (0, 9):
        with pytest.raises(ValueError, match="--augment-views"):
            train_adapter(small_data, tiny_model_dir, tmp_path / "never", TrainConfig(augment_views=bad), progress=False)
    assert not (tmp_path / "never").exists()


def _adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_bf16_training_keeps_the_trained_weights_float32(ray_session, small_data, tiny_model_dir, tmp_path):
    """--precision bf16: bfloat16 base and autocast; LoRA and the trained lm_head stay float32."""
    from dermground.train.ray_train import train_adapter

    out = tmp_path / "adapter_bf16"
    config = TrainConfig(batch_size=4, lr=5e-3, max_steps=2, checkpoint_every=0, seed=0, modules_to_save=("lm_head",),
                         precision="bf16")
    result = train_adapter(small_data, tiny_model_dir, out, config, progress=False, cpus_per_worker=2)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(loss)) for _, loss in result.loss_curve)
    meta = json.loads((out / "dermground_adapter.json").read_text())
    assert meta["hyperparameters"]["precision"] == "bf16"
    weights = _adapter_weights(out)
    assert any("lm_head" in name for name in weights) and any("lora_B" in name for name in weights)
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}
    assert any(w.abs().max() > 0 for name, w in weights.items() if "lora_B" in name)  # B starts at 0: it was trained


def test_gradient_checkpointing_trains_the_same_adapter(ray_session, small_data, tiny_model_dir, tmp_path):
    """Recomputing activations in backward changes memory and time, not the weights."""
    from dermground.train.ray_train import train_adapter

    hyper = dict(batch_size=4, lr=5e-3, max_steps=2, checkpoint_every=0, seed=0, dropout=0.0)
    run = dict(progress=False, cpus_per_worker=2)
    train_adapter(small_data, tiny_model_dir, tmp_path / "plain", TrainConfig(**hyper), **run)
    train_adapter(small_data, tiny_model_dir, tmp_path / "recomputed", TrainConfig(gradient_checkpointing=True, **hyper),
                  **run)
    plain, recomputed = _adapter_weights(tmp_path / "plain"), _adapter_weights(tmp_path / "recomputed")
    assert plain.keys() == recomputed.keys()
    assert any(w.abs().max() > 0 for name, w in plain.items() if "lora_B" in name)
    assert max(float((plain[k] - recomputed[k]).abs().max()) for k in plain) < 1e-5
    meta = json.loads((tmp_path / "recomputed" / "dermground_adapter.json").read_text())
    assert meta["hyperparameters"]["gradient_checkpointing"] is True


def test_unknown_precision_is_refused(small_data, tiny_model_dir, tmp_path):
    from dermground.train.ray_train import train_adapter

    with pytest.raises(ValueError, match="--precision"):
        train_adapter(small_data, tiny_model_dir, tmp_path / "never", TrainConfig(precision="fp16"), progress=False)
    assert not (tmp_path / "never").exists()


def test_worker_model_with_bf16_and_checkpointing(tiny_model_dir):
    """What a worker builds: bfloat16 frozen base, float32 trained weights, recomputation in every block."""
    from dermground.train.loop import _build_model

    config = TrainConfig(dropout=0.0, modules_to_save=("lm_head",), precision="bf16", gradient_checkpointing=True)
    model, _ = _build_model(config, tiny_model_dir)
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    recomputed = {name for name, module in model.get_base_model().named_modules()
                  if getattr(module, "gradient_checkpointing", False)}
    assert {"model.visual.blocks.0", "model.language_model.layers.0"} <= recomputed
    plain, _ = _build_model(TrainConfig(dropout=0.0), tiny_model_dir)
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    assert not any(getattr(m, "gradient_checkpointing", False) for m in plain.modules())
