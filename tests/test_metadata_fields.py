"""The metadata-field registry is the one declaration the payload, catalog, API and CLI derive from."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dermground.platform.api.schemas import SearchFilters
from dermground.platform.attributes import ATTRIBUTE_NAMES
from dermground.platform.catalog import TABLES
from dermground.platform.catalog_dictionary import describe_column
from dermground.platform.cli import cli
from dermground.platform.metadata_fields import (ANY_OF_FILTERS, EQUALS_FILTERS, FILTER_KEYS, METADATA_FIELDS,
                                                 STORED_FIELDS, metadata_field, vocabulary)
from dermground.platform.store.schema import PAYLOAD_INDEXES, PAYLOAD_KEYS, PayloadError, build_payload


def test_every_stored_field_is_a_payload_key_an_index_and_a_described_catalog_column() -> None:
    lesion_columns = TABLES["lesions"].names
    for field in STORED_FIELDS:
        assert field.name in PAYLOAD_KEYS and field.name in lesion_columns
        assert PAYLOAD_INDEXES[field.name] == {"text": "keyword"}.get(field.kind, field.kind)
        assert describe_column("lesions", field.name) == (field.unit, field.description)
    carried_only = {f.name for f in METADATA_FIELDS if not f.stored}
    assert carried_only and not carried_only & (set(PAYLOAD_KEYS) | set(lesion_columns))


def test_the_api_filters_are_the_registry_filter_fields_in_order() -> None:
    assert list(SearchFilters.model_fields) == ["split", *FILTER_KEYS, "ranges"]
    for name, cap in ANY_OF_FILTERS.items():
        assert cap > 0 and SearchFilters.model_fields[name].metadata  # the list length limit
    assert all(f.vocabulary for f in EQUALS_FILTERS)
    with pytest.raises(ValueError, match="target"):
        SearchFilters(target=2)
    with pytest.raises(ValueError, match="1 to 128 characters"):
        SearchFilters(sex=["x" * 129])


def test_an_enforced_vocabulary_refuses_the_record_and_an_open_one_keeps_the_value() -> None:
    record = {"isic_id": "I1", "patient_id": "P1", "split": "train", "image_ref": "/i.jpg",
              **{name: 1.0 for name in ATTRIBUTE_NAMES}}
    with pytest.raises(PayloadError, match="'target': must be 0 or 1, got '2'"):
        build_payload(record | {"target": "2"}, "fp")
    assert build_payload(record | {"sex": "unknown"}, "fp")["sex"] == "unknown"
    assert "unknown" not in vocabulary("sex")


def test_the_cli_lists_the_registry_filter_keys() -> None:
    result = CliRunner().invoke(cli, ["search", "--help"])
    assert result.exit_code == 0 and ", ".join(FILTER_KEYS) in " ".join(result.output.split())
    with pytest.raises(KeyError, match="known: age_approx"):
        metadata_field("colour")
