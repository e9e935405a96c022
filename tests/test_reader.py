"""The ISIC-format reader: column validation, poisoned rows, both layouts, image decoding."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dermground.platform import isic_format as fmt
from dermground.platform.image_sources import load_image_bytes
from dermground.platform.images import ImageRejected, decode_image
from dermground.platform.records import (LesionRecord, MissingColumnsError, RejectedRecord, count_records,
                                         detect_layout, read_records)
from dermground.ingest.synth import generate_dataset


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reader") / "clean"
    generate_dataset(out, patients=6, images=12, seed=5, layout="folder", progress=False, workers=1)
    return out


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / fmt.METADATA_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(folder: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    with open(folder / fmt.METADATA_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _poison(clean: Path, target: Path, layout: str) -> dict[str, str]:
    """Copy the clean set, break six rows in six ways; return isic_id -> expected field."""
    shutil.copytree(clean, target)
    rows = _rows(target)
    ids = [r["isic_id"] for r in rows]
    jpeg = (target / fmt.IMAGE_FOLDER / f"{ids[0]}.jpg").read_bytes()
    images = {i: (target / fmt.IMAGE_FOLDER / f"{i}.jpg").read_bytes() for i in ids}
    images[ids[0]] = jpeg[: len(jpeg) // 2]  # truncated
    images[ids[1]] = b""  # empty
    images[ids[2]] = bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8))  # noise
    del images[ids[3]]  # missing image
    rows[4]["tbp_lv_areaMM2"] = "nan"
    rows[5]["tbp_lv_deltaB"] = "dark"
    rows[6]["isic_id"] = ""
    _write_rows(target, rows, list(fmt.METADATA_COLUMNS))
    shutil.rmtree(target / "train-image")
    if layout == "folder":
        (target / fmt.IMAGE_FOLDER).mkdir(parents=True)
        for isic_id, data in images.items():
            (target / fmt.IMAGE_FOLDER / f"{isic_id}.jpg").write_bytes(data)
    else:
        with h5py.File(target / fmt.HDF5_FILE, "w") as h5:
            for isic_id, data in images.items():
                # Mimic the real file's scalar bytes strings (our writer uses opaque data);
                # HDF5 has no empty string type, so empty bytes are an empty uint8 array.
                value = np.bytes_(data) if data else np.zeros(0, dtype=np.uint8)
                h5.create_dataset(isic_id, data=value)
    return {ids[0]: "image", ids[1]: "image", ids[2]: "image", ids[3]: "image",
            ids[4]: "tbp_lv_areaMM2", ids[5]: "tbp_lv_deltaB", "": "isic_id"}


@pytest.mark.parametrize("layout", ["folder", "hdf5"])
def test_poisoned_rows_are_rejected_with_reasons_and_others_survive(clean: Path, tmp_path: Path,
                                                                     layout: str) -> None:
    expected = _poison(clean, tmp_path / layout, layout)
    assert detect_layout(tmp_path / layout) == layout
    records = list(read_records(tmp_path / layout, check_images=True))
    rejected = {r.isic_id: r for r in records if isinstance(r, RejectedRecord)}
    assert {k: r.field for k, r in rejected.items()} == expected
    assert "nan" in rejected[next(k for k, f in expected.items() if f == "tbp_lv_areaMM2")].reason.lower()
    assert all(r.reason for r in rejected.values())
    good = [r for r in records if isinstance(r, LesionRecord)]
    assert len(good) == 12 - 7
    for record in good:
        assert record.load_image().mode == "RGB"
        assert set(record.attributes) == set(fmt.ATTRIBUTE_COLUMNS.values())


def test_without_image_check_only_missing_images_are_caught(clean: Path, tmp_path: Path) -> None:
    _poison(clean, tmp_path / "lazy", "hdf5")
    rejected = [r for r in read_records(tmp_path / "lazy") if isinstance(r, RejectedRecord)]
    assert sorted(r.field for r in rejected) == ["image", "isic_id", "tbp_lv_areaMM2", "tbp_lv_deltaB"]


def test_missing_columns_are_named(clean: Path, tmp_path: Path) -> None:
    target = tmp_path / "cols"
    shutil.copytree(clean, target)
    columns = [c for c in fmt.METADATA_COLUMNS if c not in ("patient_id", "tbp_lv_norm_border")]
    _write_rows(target, _rows(clean), columns)
    with pytest.raises(MissingColumnsError, match="patient_id, tbp_lv_norm_border") as info:
        next(read_records(target))
    assert info.value.missing == ["patient_id", "tbp_lv_norm_border"]


def test_missing_data_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dermground synth"):
        next(read_records(tmp_path))


def test_decode_image_guards() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert decode_image(data).size == (300, 200)
    with pytest.raises(ImageRejected, match="^pixel_limit: "):
        decode_image(data, max_pixels=300 * 200 - 1)
    with pytest.raises(ImageRejected, match="^empty: "):
        decode_image(b"")
    with pytest.raises(ImageRejected, match="^format: "):
        decode_image(b"\x00" * 64)
    with pytest.raises(ImageRejected, match="^decode: "):
        decode_image(data[: len(data) // 2])


def test_helpers(clean: Path) -> None:
    assert count_records(clean) == 12
    first = next(read_records(clean))
    assert load_image_bytes(first.image_ref)[:2] == b"\xff\xd8"  # a JPEG
    assert Path(first.image_ref).is_absolute()
