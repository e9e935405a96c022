"""An adapter that does not fit the base is refused up front, on the driver, from the files alone.

Before, ingest found out inside Ray's embedding actors (hundreds of lines of actor tracebacks and
peft's size-mismatch list), `serve` on the first image search, and search/eval with peft's raw
message. Now one error names the adapter folder, the base and what does not fit, with a next step.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from dermground.platform.cli import cli
from dermground.platform.model.adapter_fit import adapter_fit_problem
from dermground.platform.model.loading import BackboneError, load_backbone


@pytest.fixture(scope="module")
def fitting_adapter(tiny_model_dir, make_tiny_adapter, tmp_path_factory):
    return make_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("fit") / "adapter")


def _rank_mismatch(adapter, out):
    """The weights of a rank-4 run beside an adapter_config.json that says r=8."""
    shutil.copytree(adapter, out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config | {"r": 8}))
    return out


def _wider_base(adapter, out):
    """The adapter as trained on a base twice as wide (every layer dimension doubled, rank kept)."""
    out.mkdir()
    shutil.copy(adapter / "adapter_config.json", out)
    weights = load_file(adapter / "adapter_model.safetensors")
    wider = {k: torch.zeros(v.shape[0] * (2 if ".lora_B." in k else 1), v.shape[1] * (2 if ".lora_A." in k else 1))
             for k, v in weights.items()}
    save_file(wider, str(out / "adapter_model.safetensors"))
    return out


def _absent_targets(adapter, out):
    shutil.copytree(adapter, out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config | {"target_modules": ["c_attn", "c_proj"]}))
    return out


def _other_family(_adapter, out):
    """An adapter trained on a Qwen2.5-VL (gated vision MLP: gate/up/down_proj, no fc1/fc2)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from dermground.platform.model.tiny import save_tiny_model

    base_dir = save_tiny_model(out.parent / "qwen25", seed=0, family="qwen2_5_vl")
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir, local_files_only=True)
    get_peft_model(base, LoraConfig(r=4, target_modules=r".*visual\.blocks\.\d+\.mlp\.(gate|up|down)_proj"
                                                        r"|.*language_model\.layers\.\d+\.self_attn\.q_proj")
                   ).save_pretrained(out)
    return out


def _prefix_tuning(adapter, out):
    """A prompt-learning adapter (virtual tokens) for the same base, which the shared-prefix embedder cannot apply."""
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    base_dir = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = Qwen2VLForConditionalGeneration.from_pretrained(base_dir, local_files_only=True)
    get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).save_pretrained(out)
    return out


MISFITS = {  # how the adapter was made -> what the error must say
    "rank": (_rank_mismatch, r"\[4, 64\] in the file but \[8, 64\] .*trained with rank 4 where adapter_config.json says r=8"),
    "hidden_size": (_wider_base, r"other shapes .*hidden size 128.*trained on a base with other layer sizes"),
    "target_modules": (_absent_targets, r"target_modules \['c_attn', 'c_proj'\] cannot be applied"),
    "family": (_other_family, r"name no module of the base \(Qwen2-VL.*mlp\.down_proj"),
    "prompt_learning": (_prefix_tuning, r"it is a PREFIX_TUNING adapter, which adds virtual tokens"),
}


@pytest.mark.parametrize("kind", sorted(MISFITS))
def test_an_adapter_that_does_not_fit_is_refused_with_the_folder_the_base_and_what_differs(
        tiny_model_dir, fitting_adapter, tmp_path, kind):
    make, what = MISFITS[kind]
    adapter = make(fitting_adapter, tmp_path / kind)
    with pytest.raises(BackboneError, match=what) as error:  # before: peft's size mismatches, or nothing at all
        load_backbone(tiny_model_dir, adapter, device="cpu", dtype="float32")
    message = str(error.value)
    assert f"adapter {adapter} does not fit base model {tiny_model_dir}" in message
    assert "Next: point --model or DERMGROUND_MODEL_DIR" in message and "size mismatch" not in message


def test_a_fitting_adapter_passes_the_check(tiny_model_dir, fitting_adapter):
    assert adapter_fit_problem(fitting_adapter, tiny_model_dir) is None


def test_ingest_refuses_an_adapter_of_another_rank_before_ray_starts(tiny_model_dir, fitting_adapter, tmp_path):
    # Before: model_identity checked the adapter's files only; the embedding actors then died in Ray.
    from dermground.ingest.pipeline import model_identity

    with pytest.raises(BackboneError, match="trained with rank 4"):
        model_identity(tiny_model_dir, _rank_mismatch(fitting_adapter, tmp_path / "rank"))


def test_serve_refuses_an_adapter_that_does_not_fit_at_start(tiny_model_dir, fitting_adapter, tmp_path):
    # Before: the API started and every image search failed when the model loaded on the first request.
    import socket

    adapter = _absent_targets(fitting_adapter, tmp_path / "absent")
    with socket.socket() as taken:  # a port in use: should the check let the server start, it stops at once
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "serve", "--port",
                                          str(taken.getsockname()[1]), "--model", str(tiny_model_dir),
                                          "--adapter", str(adapter)])
    assert result.exit_code == 1, result.output
    assert f"adapter {adapter} does not fit base model {tiny_model_dir}" in result.output
    assert "Serving collection" not in result.output


def _hub_cache(adapter, out):
    snapshot = out / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(adapter, snapshot)
    return out, snapshot


def _trainer_output(adapter, out):
    for step in (500, 1000, 50):  # the last by step number, not by name
        shutil.copytree(adapter, out / f"checkpoint-{step}")
    return out, out / "checkpoint-1000"


def _merged_model(_adapter, out):
    from dermground.platform.model.tiny import save_tiny_model

    return save_tiny_model(out, seed=1), "pass it as --model and leave --adapter out"


@pytest.mark.parametrize("layout", [_hub_cache, _trainer_output, _merged_model], ids=lambda f: f.__name__[1:])
def test_a_folder_around_an_adapter_or_a_whole_model_passed_as_adapter_gets_the_folder_to_pass(
        tiny_model_dir, fitting_adapter, tmp_path, layout):
    # Before: "has no adapter_config.json; pass the folder a training run saved" for all three.
    folder, hint = layout(fitting_adapter, tmp_path / "given")
    with pytest.raises(BackboneError, match="has no adapter_config.json") as error:
        load_backbone(tiny_model_dir, folder, device="cpu", dtype="float32")
    assert str(hint) in str(error.value)


def test_an_adapter_folder_passed_as_the_model_is_named_as_an_adapter(tiny_model_dir, fitting_adapter, tmp_path):
    # Before: "has no config.json, so it is not a Hugging Face checkpoint; build a local model with init-tiny".
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "check", str(fitting_adapter)])
    assert result.exit_code == 1
    assert "is a LoRA adapter folder (adapter_config.json), not a base checkpoint" in result.output
    assert f"pass it as --adapter and its base model as --model (it records {tiny_model_dir})" in result.output


def test_model_check_checks_an_adapter_against_the_base(tiny_model_dir, fitting_adapter, tmp_path):
    home = ["--home", str(tmp_path / "home")]
    ok = CliRunner().invoke(cli, [*home, "model", "check", str(tiny_model_dir), "--adapter", str(fitting_adapter)])
    assert ok.exit_code == 0, ok.output
    assert f"adapter      {fitting_adapter} fits" in ok.output
    bad = CliRunner().invoke(cli, [*home, "model", "check", str(tiny_model_dir), "--adapter",
                                   str(_rank_mismatch(fitting_adapter, tmp_path / "rank"))])
    assert bad.exit_code == 1 and "trained with rank 4 where adapter_config.json says r=8" in bad.output


def test_a_file_given_for_the_model_or_the_adapter_folder_points_at_its_folder(tiny_model_dir, fitting_adapter):
    # Before: "model directory .../config.json does not exist" (it does) and "adapter directory
    # .../adapter_model.safetensors has no adapter_config.json".
    from dermground.platform.model.checkpoint_check import check_checkpoint

    summary = check_checkpoint(tiny_model_dir / "config.json").summary()
    assert "config.json is a file" in summary and f"point --model at the folder {tiny_model_dir}" in summary
    with pytest.raises(BackboneError, match=f"point --adapter at the folder {fitting_adapter}"):
        load_backbone(tiny_model_dir, fitting_adapter / "adapter_model.safetensors", device="cpu")


def _recorded(adapter, out, base_dir):
    """The adapter as `dermground train` leaves it: dermground_adapter.json records the base weights digest."""
    from dermground.platform.model.base_weights import ADAPTER_METADATA_FILE, BASE_WEIGHTS_KEY, base_weights_digest

    shutil.copytree(adapter, out)
    (out / ADAPTER_METADATA_FILE).write_text(json.dumps({"base_model_dir": str(base_dir),
                                                         BASE_WEIGHTS_KEY: base_weights_digest(base_dir)}))
    return out


def test_an_adapter_trained_on_another_base_of_the_same_shape_is_refused(tiny_model_dir, fitting_adapter, tmp_path):
    # Before: same family and sizes, so it loaded on the seed-1 base and every vector was wrong, silently.
    from transformers import Qwen2VLForConditionalGeneration

    from dermground.platform.model.adapter_fit import require_adapter_fits
    from dermground.platform.model.tiny import save_tiny_model

    adapter = _recorded(fitting_adapter, tmp_path / "adapter", tiny_model_dir)
    other = save_tiny_model(tmp_path / "seed1", seed=1, preset="tiny", image_size=112)
    with pytest.raises(BackboneError, match="it was trained on other base weights") as error:
        load_backbone(other, adapter, device="cpu", dtype="float32")
    message = str(error.value)
    assert f"adapter {adapter} does not fit base model {other}" in message and "Next: point --model or DERMGROUND_MODEL_DIR at the base" in message
    require_adapter_fits(adapter, tiny_model_dir)  # its own base
    # ... also saved again in bfloat16, in shards: the same weights.
    resaved = tmp_path / "bf16"
    Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, local_files_only=True).to(
        torch.bfloat16).save_pretrained(resaved, max_shard_size="200KB")
    assert len(list(resaved.glob("*.safetensors"))) > 1
    require_adapter_fits(adapter, resaved)


def test_an_adapter_that_records_no_base_weights_loads_with_a_warning(tiny_model_dir, fitting_adapter, tmp_path,
                                                                       caplog):
    from dermground.platform.model.adapter_fit import require_adapter_fits

    adapter = shutil.copytree(fitting_adapter, tmp_path / "peft-saved")  # peft's files only
    with caplog.at_level("WARNING", logger="dermground.platform.model.base_weights"):
        require_adapter_fits(adapter, tiny_model_dir)
    assert f"adapter {adapter} does not record which base weights it was trained on" in caplog.text
    assert f"adapter_config.json names the base {tiny_model_dir}" in caplog.text
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "check", str(tiny_model_dir),
                                      "--adapter", str(adapter)])
    assert result.exit_code == 0 and f"adapter      {adapter} fits by its shapes; adapter" in result.output
