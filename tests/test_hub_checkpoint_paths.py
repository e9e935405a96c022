"""Every user path on a hub-like checkpoint with Qwen's tokenizer: train (number loss, multi-attribute),
plain PEFT, ingest, search in every mode, /predict and sampled `eval predict`, all through the CLI/API.

One short training run (1 step) and one ingest serve all the tests of this module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dermground.platform.attributes import ATTRIBUTE_NAMES
from dermground.platform.cli import cli
from dermground.platform.commands.context import use_settings


def invoke(home, *args, env=None):
    try:
        return CliRunner().invoke(cli, ["--home", str(home), *args], env=env)
    finally:
        use_settings(None)  # do not leak this test's home into other tests


@pytest.fixture(scope="module")
def hub_dir(hub_checkpoints):
    return hub_checkpoints("qwen2_vl")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dermground.ingest.synth import generate_dataset

    out = tmp_path_factory.mktemp("hub_paths") / "data"
    generate_dataset(out, patients=6, images=12, seed=5, size=112, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def run(ray_session, hub_dir, data, tmp_path_factory):
    """`train` (number loss + multi-attribute, 1 step) then `ingest` with the adapter, via the CLI."""
    base = tmp_path_factory.mktemp("hub_run")
    home, adapter = base / "home", base / "adapter"
    trained = invoke(home, "train", "--data", str(data), "--base", str(hub_dir), "--out", str(adapter),
                     "--max-steps", "1", "--batch-size", "2", "--lr", "5e-3", "--number-loss", "0.3",
                     "--multi-attribute", "--checkpoint-every", "0", "--cpus-per-worker", "2")
    assert trained.exit_code == 0, trained.output
    ingested = invoke(home, "ingest", "--data", str(data), "--model", str(hub_dir), "--adapter", str(adapter),
                      "--split", "all", "--collection", "lesions", "--batch-size", "4")
    assert ingested.exit_code == 0, ingested.output
    return {"home": home, "adapter": adapter, "train_output": trained.output, "ingest_output": ingested.output,
            "env": {"DERMGROUND_MODEL_DIR": str(hub_dir), "DERMGROUND_ADAPTER_DIR": str(adapter)}}


def test_train_writes_an_adapter_on_vision_and_decoder_that_plain_peft_loads_and_merges(run, hub_dir, data):
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    from dermground.platform.records import LesionRecord, read_records

    meta = json.loads((run["adapter"] / "dermground_adapter.json").read_text())
    n_train = sum(isinstance(r, LesionRecord) for r in read_records(data, split="train"))
    assert meta["n_tuples"] == n_train * (5 + 1)  # W=5 single questions + one multi-attribute question per image
    assert meta["hyperparameters"]["number_loss"] == 0.3 and meta["hyperparameters"]["multi_attribute"] is True
    assert len(meta["loss_curve"]) >= 1 and all(np.isfinite(loss) and loss > 0 for _, loss in meta["loss_curve"])
    from dermground.platform.model.base_weights import base_weights_digest

    assert meta["base_weights_digest"] == base_weights_digest(hub_dir)  # loading checks it against the base given
    base = Qwen2VLForConditionalGeneration.from_pretrained(hub_dir, dtype=torch.float32, local_files_only=True)
    model = PeftModel.from_pretrained(base, run["adapter"]).eval()
    lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert any(".visual.blocks." in n and ".mlp.fc1." in n for n in lora)
    assert any(".language_model.layers." in n and ".q_proj." in n for n in lora)
    assert not any("patch_embed" in n for n in lora)
    ids = torch.tensor([[151644, 872, 198, 16, 17, 13, 18, 151645]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits[0, -1]
        with model.disable_adapter():
            plain = model(input_ids=ids).logits[0, -1]
        merged = model.merge_and_unload()(input_ids=ids).logits[0, -1]
    assert (adapted - plain).abs().max() > 1e-4  # one step at lr 5e-3 moved the weights
    assert torch.allclose(merged, adapted, atol=1e-4)


def test_ingest_stores_the_vectors_the_embedder_computes(run, hub_dir, data):
    from dermground.platform.embed import Embedder
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.records import LesionRecord, read_records
    from dermground.platform.settings import load_settings
    from dermground.platform.store import open_store, point_id

    assert "ingested 12" in run["ingest_output"]
    records = [r for r in read_records(data) if isinstance(r, LesionRecord)][:3]
    backbone = load_backbone(hub_dir, run["adapter"], device="cpu", dtype="float32")
    expected = Embedder(backbone).embed([r.load_image() for r in records], attributes=["areaMM2", "deltaB"])
    with open_store(load_settings(home=run["home"]).model_copy(update={"collection": "lesions"})) as store:
        assert store.describe().fingerprint == backbone.fingerprint
        stored = store.retrieve([point_id(r.isic_id) for r in records], with_vectors=True)
    by_id = {p.payload["isic_id"]: p.vectors for p in stored}
    for i, record in enumerate(records):
        for name, vector in (("image", expected.h_im[i]), ("q_areaMM2", expected.h_im_a["areaMM2"][i]),
                             ("q_deltaB", expected.h_im_a["deltaB"][i])):
            got = np.asarray(by_id[record.isic_id][name], dtype=np.float32)
            cosine = float(got @ vector / np.linalg.norm(got) / np.linalg.norm(vector))
            assert cosine >= 0.9999, (record.isic_id, name, cosine)


@pytest.mark.parametrize("mode", ["image", "image_text", "hierarchical", "prefetch"])
def test_search_runs_in_every_mode(run, data, mode):
    from dermground.platform.records import LesionRecord, read_records

    query = next(r for r in read_records(data) if isinstance(r, LesionRecord)).isic_id
    attribute = [] if mode == "image" else ["--attribute", "areaMM2"]
    result = invoke(run["home"], "search", "--id", query, "--mode", mode, *attribute, "--k", "4", "--b", "8",
                    "--collection", "lesions", "--json", env=run["env"])
    assert result.exit_code == 0, result.output
    response = json.loads(result.output)
    assert response["mode"] == mode and len(response["hits"]) == 4
    scores = [hit["score"] for hit in response["hits"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)


def test_predict_endpoint_answers_16_questions(run, hub_dir, data):
    from fastapi.testclient import TestClient

    from dermground.platform.api import create_app
    from dermground.platform.records import LesionRecord, read_records
    from dermground.platform.settings import Settings

    jpeg = next(r for r in read_records(data) if isinstance(r, LesionRecord)).image_bytes()
    settings = Settings(home=run["home"], model_dir=hub_dir, adapter_dir=run["adapter"], collection="lesions",
                        predict_samples=2, predict_views=2)
    with TestClient(create_app(settings)) as client:
        response = client.post("/predict", files={"file": ("q.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    answers = response.json()["answers"]
    assert [a["name"] for a in answers] == list(ATTRIBUTE_NAMES)
    assert all(isinstance(a["raw"], str) and (a["value"] is None) != a["ok"] for a in answers)
    assert all(0 <= a["samples"] <= 4 for a in answers)  # 2 sampled answers in each of 2 views


def test_eval_predict_with_sampled_decoding(run, hub_dir, data, tmp_path):
    from dermground.platform.records import LesionRecord, read_records

    n_test = min(2, sum(isinstance(r, LesionRecord) for r in read_records(data, split="test")))
    assert n_test >= 1
    out = tmp_path / "eval"
    result = invoke(run["home"], "eval", "predict", "--data", str(data), "--model", str(hub_dir), "--adapter",
                    str(run["adapter"]), "--out", str(out), "--max-images", "2", "--samples", "2", "--views", "1",
                    "--no-catalog")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prediction.json").read_text())
    assert list(report) == list(ATTRIBUTE_NAMES)
    assert all(row["n"] == n_test and 0.0 <= row["parse_rate"] <= 1.0 for row in report.values())
    assert "mean of 2 samples" in result.output or (out / "prediction_greedy.json").is_file()


def test_train_and_ingest_refuse_a_broken_folder_before_starting(hub_dir, data, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(hub_dir, broken)
    (broken / "preprocessor_config.json").unlink()
    for args in (["train", "--data", str(data), "--base", str(broken), "--out", str(tmp_path / "a")],
                 ["ingest", "--data", str(data), "--model", str(broken), "--collection", "lesions"]):
        result = invoke(tmp_path / "home", *args)
        assert result.exit_code == 1, result.output
        assert "preprocessor_config.json" in result.output and "hub page" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "home" / "qdrant").exists()
