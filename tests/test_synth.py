"""The synthetic generator: determinism, read-back, ranges, split, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dermground.ingest.synth import generate_dataset
from dermground.platform import isic_format as fmt
from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.cli import cli
from dermground.platform.metadata_fields import vocabulary
from dermground.platform.records import LesionRecord, RejectedRecord, assign_split, read_records


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = generate_dataset(out, patients=30, images=300, seed=11, progress=False, workers=2)
    assert summary.images == 300 and summary.patients == 30
    assert sum(summary.split_counts.values()) == 300
    return out


def test_same_seed_gives_byte_identical_files_whatever_the_workers(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_dataset(again, patients=30, images=300, seed=11, progress=False, workers=1)
    assert _digest(again) == _digest(dataset)
    other = tmp_path / "other"
    generate_dataset(other, patients=30, images=300, seed=12, progress=False, workers=1)
    assert _digest(other)[fmt.METADATA_FILE] != _digest(dataset)[fmt.METADATA_FILE]


def test_folder_layout_is_deterministic_and_matches_hdf5_bytes(dataset: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        generate_dataset(out, patients=5, images=40, seed=11, layout="folder", progress=False, workers=1)
    assert _digest(first) == _digest(second)
    assert len(list((first / fmt.IMAGE_FOLDER).glob("*.jpg"))) == 40


def test_read_back_with_no_rejects_and_plausible_values(dataset: Path) -> None:
    records = list(read_records(dataset, check_images=True))
    rejected = [r for r in records if isinstance(r, RejectedRecord)]
    assert rejected == []
    assert len(records) == 300
    lesions = [r for r in records if isinstance(r, LesionRecord)]
    for attribute in ATTRIBUTES:
        values = np.array([r.attributes[attribute.name] for r in lesions])
        assert values.min() >= attribute.low and values.max() <= attribute.high, attribute.name
        assert values.std() > 0, f"{attribute.name} does not vary"
    assert lesions[0].load_image().size == (128, 128)
    assert {r.metadata["anatom_site_general"] for r in lesions} <= set(vocabulary("anatom_site_general"))
    assert all(r.metadata["age_approx"] % 5 == 0 for r in lesions)


def test_generative_factors_vary_independently(dataset: Path) -> None:
    lesions = [r for r in read_records(dataset) if isinstance(r, LesionRecord)]
    table = {name: np.array([r.attributes[name] for r in lesions])
             for name in ("areaMM2", "norm_border", "deltaL", "Bext", "stdLExt", "norm_color")}
    names = list(table)
    corr = np.corrcoef(np.stack([table[n] for n in names]))
    off_diagonal = np.abs(corr[~np.eye(len(names), dtype=bool)])
    assert off_diagonal.max() < 0.5, dict(zip(names, corr.round(2).tolist()))


def test_no_patient_on_both_sides(dataset: Path) -> None:
    sides: dict[str, set[str]] = {}
    for r in read_records(dataset):
        assert isinstance(r, LesionRecord)
        sides.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in sides.values())
    assert {"train", "test"} <= set().union(*sides.values())
    train = list(read_records(dataset, split="train"))
    assert train and all(r.split == "train" for r in train)


def test_split_is_stable_and_follows_the_fraction() -> None:
    ids = [f"IP_{i:07d}" for i in range(4000)]
    assert [assign_split(i) for i in ids] == [assign_split(i) for i in ids]
    share = sum(assign_split(i, 0.3) == "test" for i in ids) / len(ids)
    assert 0.27 < share < 0.33
    assert all(assign_split(i, 0.0) == "train" for i in ids[:50])


def test_cli_writes_a_data_set_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--patients", "4", "--images", "20", "--seed", "3", "--workers", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "20 images of 4 patients" in result.output and "areaMM2" in result.output
    assert (out / fmt.HDF5_FILE).is_file()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert CliRunner().invoke(cli, [*args, "--overwrite"]).exit_code == 0


def test_cli_refusal_to_overwrite_speaks_cli_and_names_the_command_to_replace(tmp_path: Path) -> None:
    """It said "pass overwrite=True" (the Python API's words) and then "Use --overwrite or another --out."."""
    import re
    import shlex

    out = tmp_path / "taken dir"
    args = ["synth", "--out", str(out), "--patients", "2", "--images", "4", "--size", "64", "--workers", "1"]
    generate_dataset(out, patients=2, images=4, seed=0, size=64, progress=False, workers=1)
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "overwrite=True" not in refused.output and "Use --overwrite" not in refused.output
    assert fmt.METADATA_FILE in refused.output and "or give another --out" in refused.output
    suggested = shlex.split(re.search(r"`([^`]+)`", refused.output).group(1))
    assert suggested == ["dermground", *args, "--overwrite"]  # the user's options, quoted, plus --overwrite
    assert CliRunner().invoke(cli, suggested[1:]).exit_code == 0


def test_cli_writes_the_smallest_size_it_accepts(tmp_path: Path) -> None:
    """--size 32 stopped with "could not write the data set: zero-size array to reduction operation
    maximum" when a lesion of a few pixels had no contour to take its Feret widths from."""
    out = tmp_path / "small"
    args = ["synth", "--out", str(out), "--patients", "2", "--images", "4", "--seed", "0", "--size", "32"]
    result = CliRunner().invoke(cli, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    records = list(read_records(out))
    assert len(records) == 4 and all(isinstance(r, LesionRecord) for r in records)


def test_overwriting_an_hdf5_data_set_with_the_folder_layout_reads_the_new_images(tmp_path: Path) -> None:
    """The old train-image.hdf5 stayed next to the new train-image/ folder, and readers (which take the
    HDF5 file first) gave the new rows the old data set's images under the same ids."""
    from PIL import Image

    out = tmp_path / "data"
    generate_dataset(out, patients=2, images=3, seed=1, size=64, progress=False, workers=1)
    generate_dataset(out, patients=2, images=3, seed=2, size=64, layout="folder", progress=False, workers=1,
                     overwrite=True)
    records = [r for r in read_records(out) if isinstance(r, LesionRecord)]
    assert len(records) == 3
    for record in records:
        written = Image.open(out / fmt.IMAGE_FOLDER / f"{record.isic_id}.jpg").convert("RGB")
        assert np.array_equal(np.asarray(record.load_image()), np.asarray(written)), record.isic_id
    assert not (out / fmt.HDF5_FILE).exists()


def test_cli_out_under_a_file_is_refused_with_a_next_step(tmp_path: Path) -> None:
    """It said only "could not write the data set: [Errno 20] Not a directory: '...'"."""
    (tmp_path / "a-file").write_text("not a folder")
    refused = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path / "a-file" / "data"), "--images", "2"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "cannot write there (Not a directory)" in refused.output
    assert "pass a folder on a writable disk" in refused.output
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_more_patients_than_images_builds_only_the_patients_that_get_one(tmp_path: Path) -> None:
    """--patients 2000000 --images 2 built all two million patients first (over a minute, 360 MB);
    the data set is the same as with as many patients as images."""
    many = generate_dataset(tmp_path / "many", patients=10**9, images=2, seed=4, size=64, progress=False, workers=1)
    generate_dataset(tmp_path / "few", patients=2, images=2, seed=4, size=64, progress=False, workers=1)
    assert many.patients == 2 and _digest(tmp_path / "many") == _digest(tmp_path / "few")
