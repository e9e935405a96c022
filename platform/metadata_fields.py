"""The registry of lesion metadata fields: the ISIC columns a lesion carries beside the 16 attributes.

One declaration per field: its value type, whether it is stored (point payload and the catalog's
lesions rows) or only carried on `LesionRecord.metadata`, how searches filter on it, its fixed
vocabulary where ISIC has one, and what it means. The reader, the payload and its indexes
(platform/store/schema.py), the catalog's lesions columns and their descriptions, the consistency
check, the API's search filters and the CLI's `--filter` all derive from here; the attribute
registry (platform/attributes.py) does the same for the 16 measured values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FieldKind = Literal["text", "integer", "float"]
FilterKind = Literal["any_of", "equals"]


@dataclass(frozen=True)
class MetadataField:
    """One ISIC metadata column (its name is also the payload key and the catalog column)."""

    name: str
    kind: FieldKind  # "integer"/"float" are read as numbers; a stored "float" is a DOUBLE column
    description: str
    unit: str = ""
    stored: bool = True  # False: the reader carries it on the record, the payload and catalog do not
    filter: FilterKind | None = None  # any_of: a list of allowed values; equals: one value
    max_filter_values: int = 0  # most values one API request may list for an any_of filter
    vocabulary: tuple[str | int, ...] | None = None  # the values ISIC 2024 uses, where fixed
    enforced: bool = False  # True: a stored value outside the vocabulary refuses the record
    plausible: tuple[float, float] | None = None  # a number outside [low, high] refuses the record (a data error)

    @property
    def numeric(self) -> bool:
        return self.kind != "text"


# Stored fields first, in payload and catalog column order. Metadata is often absent in ISIC
# (age_approx empty, sex empty): an absent value is stored as null, never invented.
METADATA_FIELDS: tuple[MetadataField, ...] = (
    MetadataField("age_approx", "float", "Approximate age of the patient.", unit="years", plausible=(0.0, 120.0)),
    MetadataField("sex", "text", "Sex of the patient as recorded (male, female or empty).",
                  filter="any_of", max_filter_values=16, vocabulary=("male", "female")),
    MetadataField("anatom_site_general", "text",
                  "Body site of the lesion (e.g. posterior torso, lower extremity).",
                  filter="any_of", max_filter_values=32,
                  vocabulary=("anterior torso", "head/neck", "lower extremity", "posterior torso",
                              "upper extremity")),
    MetadataField("tbp_tile_type", "text", "Total-body-photography tile lighting: 3D: white or 3D: XP.",
                  filter="any_of", max_filter_values=16, vocabulary=("3D: white", "3D: XP")),
    MetadataField("target", "integer", "Histopathology label: 1 malignant, 0 benign.", unit="0/1",
                  filter="equals", vocabulary=(0, 1), enforced=True),
    MetadataField("image_type", "text", "Kind of image; SLICE-3D crops are all TBP close-up tiles.",
                  stored=False, vocabulary=("TBP tile: close-up",)),
    MetadataField("tbp_lv_location_simple", "text", "Body location of the lesion, coarse (e.g. Left Arm).",
                  stored=False),
    MetadataField("lesion_id", "text", "Identifier of a lesion with a histopathology record.", stored=False),
    MetadataField("iddx_1", "text", "First level of the diagnosis (Benign, Malignant, Indeterminate).",
                  stored=False),
)

_BY_NAME = {f.name: f for f in METADATA_FIELDS}
STORED_FIELDS: tuple[MetadataField, ...] = tuple(f for f in METADATA_FIELDS if f.stored)

# The patient is not metadata (every record must name one) but a search may filter on it too.
PATIENT_FILTER_MAX_VALUES = 256

# Search filters, in the order the API and the CLI list them: the any_of metadata filters, the
# patient, then the single-value ones. Field name -> the most values one request may list.
ANY_OF_FILTERS: dict[str, int] = {
    **{f.name: f.max_filter_values for f in METADATA_FIELDS if f.filter == "any_of"},
    "patient_id": PATIENT_FILTER_MAX_VALUES,
}
EQUALS_FILTERS: tuple[MetadataField, ...] = tuple(f for f in METADATA_FIELDS if f.filter == "equals")
FILTER_KEYS: tuple[str, ...] = (*ANY_OF_FILTERS, *(f.name for f in EQUALS_FILTERS))


def metadata_field(name: str) -> MetadataField:
    """Look a metadata field up by name."""
    found = _BY_NAME.get(name)
    if found is None:
        raise KeyError(f"unknown metadata field {name!r}; known: {', '.join(_BY_NAME)}")
    return found


def vocabulary(name: str) -> tuple[str | int, ...]:
    """The fixed values of a field (KeyError when ISIC gives it none)."""
    values = metadata_field(name).vocabulary
    if values is None:
        raise KeyError(f"metadata field {name!r} has no fixed vocabulary")
    return values
