"""A poison training image (truncated, not an image) is left out of train and pretrain, named with its
field and the gate's rule; the rest trains. It used to stop the run at the step that first decoded it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dermground.platform import isic_format as fmt
from dermground.train.config import TrainConfig


@pytest.fixture(scope="module")
def poisoned_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, str]]:
    """A small folder-layout data set with two training images spoiled: (folder, train ids, {id: rule})."""
    from dermground.ingest.synth import generate_dataset
    from dermground.platform.records import read_records

    data = tmp_path_factory.mktemp("train_poison") / "data"
    generate_dataset(data, patients=8, images=16, seed=11, size=64, layout="folder", progress=False, workers=1)
    train_ids = [r.isic_id for r in read_records(data, split="train")]
    assert len(train_ids) >= 4
    truncated, not_an_image = train_ids[1], train_ids[-1]
    image = data / fmt.IMAGE_FOLDER / f"{truncated}.jpg"
    image.write_bytes(image.read_bytes()[:300])
    (data / fmt.IMAGE_FOLDER / f"{not_an_image}.jpg").write_bytes(b"this is not an image\n" * 20)
    return data, train_ids, {truncated: "decode: ", not_an_image: "format: "}


def _named(messages: list[str], poisoned: dict[str, str]) -> bool:
    return all(any(isic_id in m and "field image" in m and rule in m for m in messages)
               for isic_id, rule in poisoned.items())


def test_training_leaves_out_poison_images_naming_them_and_trains_on_the_rest(
        ray_session, poisoned_data, tiny_model_dir, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One epoch covers every tuple, so before the check a worker met a poison image and the run failed."""
    from dermground.train.ray_train import METADATA_FILE, train_adapter

    data, train_ids, poisoned = poisoned_data
    config = TrainConfig(w=1, batch_size=8, micro_batch_size=4, lr=5e-3, checkpoint_every=0, seed=0)
    result = train_adapter(data, tiny_model_dir, tmp_path / "adapter", config, progress=False, cpus_per_worker=2)
    usable = len(train_ids) - len(poisoned)
    assert result.n_tuples == usable and result.steps == config.steps_per_epoch(usable)
    assert {(item.isic_id, item.field) for item in result.left_out} == {(i, "image") for i in poisoned}
    meta = json.loads((tmp_path / "adapter" / METADATA_FILE).read_text())
    assert meta["n_images"] == usable and meta["n_left_out"] == 2
    assert {item["isic_id"]: item["reason"].split(" ")[0] for item in meta["left_out"]} == {
        i: rule.strip() for i, rule in poisoned.items()}
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert _named(caplog.messages, poisoned), caplog.messages


def test_training_with_every_image_refused_fails_before_ray_with_a_next_step(tiny_model_dir, tmp_path: Path) -> None:
    from dermground.ingest.synth import generate_dataset
    from dermground.train.ray_train import train_adapter

    data = tmp_path / "data"
    generate_dataset(data, patients=3, images=4, seed=3, size=64, layout="folder", progress=False, workers=1)
    for image in (data / fmt.IMAGE_FOLDER).glob("*.jpg"):
        image.write_bytes(b"")
    with pytest.raises(ValueError, match="were left out .*field image: empty: .*fix or replace"):
        train_adapter(data, tiny_model_dir, tmp_path / "never", TrainConfig(max_steps=1), progress=False)
    assert not (tmp_path / "never").exists()


def test_pretraining_rows_and_tower_images_leave_out_poison_images(
        poisoned_data, tiny_model_dir, tiny_backbone, caplog: pytest.LogCaptureFixture) -> None:
    """Pre-training decodes each image on the driver for its targets: a poison one stopped it there."""
    from dermground.train.pretrain import build_pretraining_rows
    from dermground.train.tower_pretrain import _encode_images

    data, train_ids, poisoned = poisoned_data
    left_out: list = []
    rows = build_pretraining_rows(data, questions_per_image=2, model_dir=tiny_model_dir, left_out=left_out)
    assert [r["isic_id"] for r in rows[::2]] == [i for i in train_ids if i not in poisoned]
    assert {item.isic_id for item in left_out} == set(poisoned)
    assert _named(caplog.messages, poisoned), caplog.messages
    patches, grids, targets = _encode_images(data, tiny_model_dir, tiny_backbone.processor, None, progress=False)
    assert len(patches) == len(grids) == len(targets) == len(train_ids) - len(poisoned)


def test_a_repeated_training_row_is_left_out_once_named_as_ingest_names_it(tmp_path: Path) -> None:
    """A row repeated in train-metadata.csv was trained on twice (ingest and eval keep it once)."""
    from dermground.ingest.synth import generate_dataset
    from dermground.platform.records import DUPLICATE_REASON
    from dermground.train.training_images import TrainingImages

    data = tmp_path / "data"
    generate_dataset(data, patients=3, images=6, seed=5, size=64, layout="folder", progress=False, workers=1)
    csv = data / fmt.METADATA_FILE
    lines = csv.read_text().splitlines(keepends=True)
    images = TrainingImages(data)
    train_ids = [record.isic_id for record, _ in images]
    assert train_ids and not images.left_out
    repeated = next(line for line in lines[1:] if line.split(",")[0] == train_ids[0])
    csv.write_text("".join(lines) + repeated)
    images = TrainingImages(data)
    assert [record.isic_id for record, _ in images] == train_ids
    assert [(item.isic_id, item.field, item.reason) for item in images.left_out] == [
        (train_ids[0], "isic_id", DUPLICATE_REASON)]
