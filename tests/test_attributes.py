"""The attribute registry: 16 attributes, answer formatting and strict parsing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dermground.platform.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, get_attribute, resolve_attributes
from dermground.platform.cli import cli

PAPER_TABLE_1 = [
    "areaMM2", "minorAxisMM", "norm_color", "radial_color_std_max", "deltaB", "deltaL", "deltaLB",
    "stdLExt", "clin_size_long_diam_mm", "perimeterMM", "norm_border", "area_perim_ratio",
    "A", "Aext", "B", "Bext",
]


def test_registry_is_the_papers_table_1() -> None:
    assert list(ATTRIBUTE_NAMES) == PAPER_TABLE_1
    assert len({a.question for a in ATTRIBUTES}) == 16, "questions must differ"
    for a in ATTRIBUTES:
        expected = a.name if a.name == "clin_size_long_diam_mm" else f"tbp_lv_{a.name}"
        assert a.isic_column == expected
        assert a.low < a.high and a.question.endswith("?")
        assert a.vector_name == f"q_{a.name}"


def test_attributes_are_frozen() -> None:
    with pytest.raises(AttributeError):
        ATTRIBUTES[0].decimals = 5  # type: ignore[misc]


def test_format_and_parse_roundtrip() -> None:
    area = get_attribute("tbp_lv_areaMM2")
    assert area.format_value(1.26) == "1.3"
    assert area.parse_value(area.format_value(12.34)) == 12.3
    delta = get_attribute("deltaB")
    assert delta.format_value(-0.001) == "0.00"
    assert delta.parse_value("-3.25") == -3.25


@pytest.mark.parametrize("junk", ["", "44444444", "1.2.3", "abc", "12 mm", "nan", "inf", "1e5", "9999"])
def test_parse_rejects_junk_and_out_of_range(junk: str) -> None:
    assert get_attribute("norm_border").parse_value(junk) is None


def test_unknown_attribute_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="areaMM2"):
        get_attribute("colour")
    assert resolve_attributes(None) == ATTRIBUTES
    assert [a.name for a in resolve_attributes(["B", "A"])] == ["B", "A"]


def test_attributes_command_json_and_table() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["attributes", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["name"] for d in data] == PAPER_TABLE_1
    assert {"isic_column", "question", "decimals", "low", "high", "unit", "label"} <= set(data[0])
    table = runner.invoke(cli, ["attributes"])
    assert table.exit_code == 0 and "perimeterMM" in table.output
