"""The typed run configurations: checks that name the flags, derived numbers, and run names that stay stable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dermground.train.config import PretrainConfig, TrainConfig
from dermground.train.ray_train import run_identity, run_name

ROWS = [{"isic_id": "ISIC_1", "question": "q", "answer": "1"}]
BASE = Path("/models/base")  # only named, never read


@pytest.mark.parametrize(("config", "name"), [
    (TrainConfig(), "run-5104c5533ed9"),
    (TrainConfig(epochs=3, batch_size=8, lr=3e-3, rank=32, alpha=64, dropout=0.0, modules_to_save=["lm_head"],
                 augment_views=8, precision="bf16", number_loss=0.3, max_steps=7, gradient_checkpointing=True),
     "run-6f0caf59fb93"),
    (PretrainConfig(), "run-fd3222f79326"),
    (PretrainConfig(tower_steps=300, epochs=2, batch_size=4), "run-3d12a7551589"),
])
def test_run_names_are_those_of_the_dict_configuration(config, name):
    """Names computed by the code before the typed configuration existed: existing runs must still resume."""
    assert run_name(run_identity(config, BASE, ROWS)) == name


def test_run_length_checkpointing_and_speed_settings_do_not_rename_the_run():
    plain = run_name(run_identity(TrainConfig(), BASE, ROWS))
    for other in (TrainConfig(max_steps=3), TrainConfig(checkpoint_every=0), TrainConfig(gradient_checkpointing=True),
                  TrainConfig(workers=2), TrainConfig(use_gpu=True)):
        assert run_name(run_identity(other, BASE, ROWS)) == plain
    assert run_name(run_identity(TrainConfig(lr=2e-4), BASE, ROWS)) != plain
    assert run_name(run_identity(TrainConfig(), BASE, ROWS + ROWS)) != plain


def test_saved_hyperparameters_are_json_and_give_back_the_config():
    config = TrainConfig(modules_to_save=["lm_head"], precision="bf16", workers=2, batch_size=8)
    saved = json.loads(json.dumps(config.hyperparameters()))
    assert saved["modules_to_save"] == ["lm_head"] and saved["workers"] == 2
    assert TrainConfig(**saved) == config
    tower = PretrainConfig(tower_steps=5)
    assert tower.hyperparameters()["freeze_vision"] is True and "tower_steps" not in PretrainConfig().hyperparameters()


@pytest.mark.parametrize(("fields", "flag"), [
    ({"batch_size": 6, "workers": 4}, "--workers"), ({"augment_views": 9}, "--augment-views"),
    ({"precision": "fp16"}, "--precision"), ({"number_loss": float("nan")}, "--number-loss"),
    ({"w": 17}, "--w"), ({"dropout": 1.0}, "--dropout"), ({"micro_batch_size": 0}, "--micro-batch-size"),
    ({"seed": 2**64}, "--seed"),  # torch.manual_seed's overflow, inside a Ray worker after Ray started
])
def test_bad_training_settings_are_refused_naming_the_flag(fields, flag):
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**fields)


def test_bad_pretraining_settings_are_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--tower-steps"):
        PretrainConfig(tower_steps=-1)
    with pytest.raises(ValueError, match="--questions-per-image"):
        PretrainConfig(questions_per_image=11)
    with pytest.raises(ValueError, match="--seed"):
        PretrainConfig(seed=-(2**63) - 1)


def test_derived_numbers():
    config = TrainConfig(batch_size=4, epochs=3)
    assert config.steps_per_epoch(10) == 3 and config.total_steps(10) == 9 and config.micro_batch() == 4
    assert TrainConfig(batch_size=4, epochs=3, max_steps=5).total_steps(10) == 5
    assert TrainConfig(batch_size=4, micro_batch_size=1).micro_batch() == 1


def test_command_options_are_the_config_fields():
    """`train` / `pretrain` hand their hyper-parameter options to the config by field name: none may drift."""
    from dataclasses import fields

    from dermground.platform.commands.pretrain import pretrain
    from dermground.platform.commands.train import train

    run_options = {"data_dir", "base_dir", "out_dir", "cpus_per_worker", "ray_address", "cache_mb", "help"}
    train_options = {p.name for p in train.params} - run_options
    assert train_options == {f.name for f in fields(TrainConfig)} - {"modules_to_save"} | {"train_lm_head"}
    pretrain_options = {p.name for p in pretrain.params} - run_options
    unflagged = {"warmup_steps", "max_images", "checkpoint_every", "use_gpu"}  # the API's and the tests', not the CLI's
    assert pretrain_options == {f.name for f in fields(PretrainConfig)} - unflagged
