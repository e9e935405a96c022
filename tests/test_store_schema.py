"""Collection schema: stable point ids, payload building and its errors, filter validation."""

from __future__ import annotations

import math

import pytest

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.store import PAYLOAD_INDEXES, PayloadError, Range, SearchFilter, build_payload, point_id


def _record(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {"isic_id": "ISIC_0015670", "patient_id": "IP_1", "split": "train",
                                 "image_ref": "hdf5:train-image.hdf5#ISIC_0015670", "age_approx": 60.0,
                                 "sex": "male", "anatom_site_general": "lower extremity",
                                 "tbp_tile_type": "3D: white", "target": 0}
    record |= {a.isic_column: 1.5 for a in ATTRIBUTES}  # the real ISIC spelling
    return record | overrides


def test_point_id_is_a_fixed_uuid5() -> None:
    # Golden value: changing the namespace would turn every re-ingest into duplicates.
    assert point_id("ISIC_0015670") == "8d93d566-e7ea-5359-a9ac-6908ecfc5ee8"
    assert point_id("ISIC_0015670") != point_id("ISIC_0015671")
    with pytest.raises(ValueError):
        point_id("")


def test_payload_uses_registry_names_and_keeps_missing_metadata_null() -> None:
    payload = build_payload(_record(age_approx=math.nan, sex=""), "fp1")
    assert payload["fingerprint"] == "fp1" and payload["isic_id"] == "ISIC_0015670"
    assert all(payload[a.name] == 1.5 for a in ATTRIBUTES)
    assert payload["age_approx"] is None and payload["sex"] is None and payload["target"] == 0
    assert not any(key.startswith("tbp_lv_") for key in payload)
    assert set(PAYLOAD_INDEXES) <= set(payload)


@pytest.mark.parametrize("overrides, field", [
    ({"tbp_lv_areaMM2": None}, "areaMM2"),
    ({"tbp_lv_deltaB": "n/a"}, "deltaB"),
    ({"tbp_lv_A": math.inf}, "A"),
    ({"patient_id": None}, "patient_id"),
    ({"age_approx": "old"}, "age_approx"),
    ({"target": 3}, "target"),
    ({"isic_id": ""}, "isic_id"),
])
def test_bad_record_names_record_and_field(overrides: dict, field: str) -> None:
    with pytest.raises(PayloadError) as info:
        build_payload(_record(**overrides), "fp1")
    assert info.value.field == field
    assert field in str(info.value)


def test_search_filter_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="cannot filter a range on 'colour'"):
        SearchFilter(ranges={"colour": Range(gte=1)})
    with pytest.raises(ValueError, match="cannot filter equals on 'areaMM2'"):
        SearchFilter(equals={"areaMM2": 3})
    with pytest.raises(ValueError, match="non-empty list"):
        SearchFilter(any_of={"sex": "male"})
    with pytest.raises(ValueError, match="at least one bound"):
        Range()
