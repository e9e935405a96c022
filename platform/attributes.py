"""The registry of the 16 quantitative attributes (paper Table 1).

The single source of truth for data generation, prompts, answer formatting and parsing, the
payload schema, API enums, evaluation and plots.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

# A strict number: optional sign, digits, optional fraction. Anything else is not an answer.
_NUMBER = re.compile(r"^\s*(-?\d{1,6}(?:\.\d{1,6})?)\s*$")


@dataclass(frozen=True)
class Attribute:
    """One quantitative lesion attribute and its question/answer format."""

    name: str  # SLICE-3D column name, e.g. "areaMM2"
    isic_column: str  # ISIC 2024 metadata spelling, e.g. "tbp_lv_areaMM2"
    label: str
    unit: str
    definition: str
    question: str  # Q(a)
    decimals: int  # digits after the point in the answer y_a
    low: float  # plausible range: rejects garbage predictions, never clips data
    high: float

    @property
    def vector_name(self) -> str:
        """Name of this attribute's named vector in Qdrant."""
        return f"q_{self.name}"

    def format_value(self, value: float) -> str:
        """y_a: the answer text for a value, e.g. 1.234 -> "1.23"."""
        if not math.isfinite(value):
            raise ValueError(f"{self.name}: cannot format non-finite value {value!r}")
        text = f"{value:.{self.decimals}f}"
        return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text

    def parse_value(self, text: str) -> float | None:
        """Parse an answer; None when it is not a number or outside the plausible range."""
        match = _NUMBER.match(text)
        if match is None:
            return None
        value = float(match.group(1))
        return value if self.low <= value <= self.high else None

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"vector_name": self.vector_name}


def _tbp(name: str) -> str:
    return f"tbp_lv_{name}"


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("areaMM2", _tbp("areaMM2"), "Area", "mm²", "Lesion area.",
              "What is the area of the lesion in mm²?", 1, 0.0, 400.0),
    Attribute("minorAxisMM", _tbp("minorAxisMM"), "Minor axis", "mm", "Smallest lesion diameter.",
              "What is the smallest diameter of the lesion in mm?", 2, 0.0, 30.0),
    Attribute("norm_color", _tbp("norm_color"), "Colour variation", "0-10", "Color variation.",
              "How much does the colour vary within the lesion, from 0 to 10?", 2, 0.0, 10.0),
    Attribute("radial_color_std_max", _tbp("radial_color_std_max"), "Colour asymmetry", "LAB",
              "Color asymmetry within lesion.",
              "What is the colour asymmetry within the lesion?", 2, 0.0, 40.0),
    Attribute("deltaB", _tbp("deltaB"), "B contrast", "LAB",
              "Average B (LAB) contrast (inside vs outside lesion).",
              "What is the average B contrast between the inside and outside of the lesion?", 2,
              -40.0, 60.0),
    Attribute("deltaL", _tbp("deltaL"), "L contrast", "LAB",
              "Average L (LAB) contrast (inside vs outside lesion).",
              "What is the average L contrast between the inside and outside of the lesion?", 2,
              -40.0, 80.0),
    Attribute("deltaLB", _tbp("deltaLB"), "Contrast to surround", "LAB",
              "L (LAB) contrast between lesion and immediate surrounding skin.",
              "What is the contrast between the lesion and its immediate surrounding skin?", 2,
              0.0, 100.0),
    Attribute("stdLExt", _tbp("stdLExt"), "L spread outside", "LAB",
              "Standard deviation of L (LAB) outside lesion.",
              "What is the standard deviation of L outside the lesion?", 2, 0.0, 40.0),
    Attribute("clin_size_long_diam_mm", "clin_size_long_diam_mm", "Longest diameter", "mm",
              "Maximum diameter of lesion.",
              "What is the longest diameter of the lesion in mm?", 2, 0.0, 40.0),
    Attribute("perimeterMM", _tbp("perimeterMM"), "Perimeter", "mm", "Perimeter of lesion.",
              "What is the perimeter of the lesion in mm?", 1, 0.0, 300.0),
    Attribute("norm_border", _tbp("norm_border"), "Border irregularity", "0-10",
              "Lesion border irregularity.",
              "How irregular is the border of the lesion, from 0 to 10?", 2, 0.0, 10.0),
    Attribute("area_perim_ratio", _tbp("area_perim_ratio"), "Border jaggedness", "ratio",
              "Lesion border jaggedness; ratio between lesion perimeter and area.",
              "What is the border jaggedness of the lesion?", 2, 0.0, 300.0),
    Attribute("A", _tbp("A"), "A inside", "LAB", "A (LAB) inside lesion.",
              "What is the mean A value inside the lesion?", 2, -60.0, 90.0),
    Attribute("Aext", _tbp("Aext"), "A outside", "LAB", "A (LAB) outside lesion.",
              "What is the mean A value outside the lesion?", 2, -60.0, 90.0),
    Attribute("B", _tbp("B"), "B inside", "LAB", "B (LAB) inside lesion.",
              "What is the mean B value inside the lesion?", 2, -60.0, 90.0),
    Attribute("Bext", _tbp("Bext"), "B outside", "LAB", "B (LAB) outside lesion.",
              "What is the mean B value outside the lesion?", 2, -60.0, 90.0),
)

ATTRIBUTE_NAMES: tuple[str, ...] = tuple(a.name for a in ATTRIBUTES)
_BY_NAME = {a.name: a for a in ATTRIBUTES}
_BY_ISIC = {a.isic_column: a for a in ATTRIBUTES}


def get_attribute(name: str) -> Attribute:
    """Look an attribute up by registry name or ISIC column name."""
    found = _BY_NAME.get(name) or _BY_ISIC.get(name)
    if found is None:
        raise KeyError(f"unknown attribute {name!r}; known: {', '.join(ATTRIBUTE_NAMES)}")
    return found


def resolve_attributes(names: list[str] | tuple[str, ...] | None) -> tuple[Attribute, ...]:
    """Attributes for a list of names; all 16 (in registry order) when None or empty."""
    if not names:
        return ATTRIBUTES
    return tuple(get_attribute(n) for n in names)
