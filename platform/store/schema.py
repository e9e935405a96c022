"""The collection schema: point ids, vector names, payload fields and payload indexes.

Backend-neutral: both stores (embedded and server) build the same points from the same records.
The payload is a record's identity, the 16 attributes (platform/attributes.py) and the stored
metadata fields (platform/metadata_fields.py); its keys and indexes derive from those registries.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Literal

from dermground.platform.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, get_attribute
from dermground.platform.metadata_fields import STORED_FIELDS

# Fixed forever: changing it would change every point id and turn re-ingest into duplicates.
POINT_ID_NAMESPACE = uuid.UUID("6f1c3f0e-5d2a-5b7e-9a41-2c8d0b7e4a13")

IMAGE_VECTOR = "image"
ATTRIBUTE_VECTORS: tuple[str, ...] = tuple(a.vector_name for a in ATTRIBUTES)
DEFAULT_VECTOR_NAMES: tuple[str, ...] = (IMAGE_VECTOR, *ATTRIBUTE_VECTORS)

# Bump when the payload layout or the store metadata changes incompatibly.
SCHEMA_VERSION = 1

_REQUIRED_TEXT = ("patient_id", "split", "image_ref")
# Every key of a point's payload (optional metadata is present, as null when absent).
PAYLOAD_KEYS: tuple[str, ...] = (
    "isic_id", *_REQUIRED_TEXT, "fingerprint", *ATTRIBUTE_NAMES, *(f.name for f in STORED_FIELDS),
)

KEYWORD_FIELDS: tuple[str, ...] = (
    "isic_id", "patient_id", "split", *(f.name for f in STORED_FIELDS if f.kind == "text"), "fingerprint",
)
INTEGER_FIELDS: tuple[str, ...] = tuple(f.name for f in STORED_FIELDS if f.kind == "integer")
FLOAT_FIELDS: tuple[str, ...] = (*(f.name for f in STORED_FIELDS if f.kind == "float"), *ATTRIBUTE_NAMES)
NUMERIC_FIELDS: tuple[str, ...] = INTEGER_FIELDS + FLOAT_FIELDS

IndexKind = Literal["keyword", "integer", "float"]
PAYLOAD_INDEXES: dict[str, IndexKind] = (
    {name: "keyword" for name in KEYWORD_FIELDS}
    | {name: "integer" for name in INTEGER_FIELDS}
    | {name: "float" for name in FLOAT_FIELDS}
)


class PayloadError(ValueError):
    """A record cannot become a point; names the record and the field (for quarantine)."""

    def __init__(self, isic_id: str, field: str, reason: str) -> None:
        super().__init__(f"record {isic_id!r}, field {field!r}: {reason}")
        self.isic_id = isic_id
        self.field = field
        self.reason = reason


def point_id(isic_id: str) -> str:
    """The point id of a lesion: uuid5 of its isic_id (re-ingest overwrites, never duplicates)."""
    if not isinstance(isic_id, str) or not isic_id.strip():
        raise ValueError(f"isic_id must be a non-empty string, got {isic_id!r}")
    return str(uuid.uuid5(POINT_ID_NAMESPACE, isic_id))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _number(isic_id: str, field: str, value: object) -> float:
    try:
        if isinstance(value, str) and "_" in value:  # float() reads '4_0' as 40; a CSV reader sees text
            raise ValueError(value)
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PayloadError(isic_id, field, f"not a number: {value!r}") from None
    if not math.isfinite(number):
        raise PayloadError(isic_id, field, f"not a finite number: {value!r}")
    return number


def _attribute_value(record: Mapping[str, object], name: str) -> object:
    attribute = get_attribute(name)
    if name in record:
        return record[name]
    return record.get(attribute.isic_column)


def build_payload(record: Mapping[str, object], fingerprint: str) -> dict[str, object]:
    """The payload of one lesion from a record (registry or ISIC column names accepted).

    Raises PayloadError naming the record and the field when a value is missing or malformed.
    """
    isic_id = record.get("isic_id")
    if not isinstance(isic_id, str) or not isic_id.strip():
        raise PayloadError(str(isic_id), "isic_id", "missing or not a string")
    payload: dict[str, object] = {"isic_id": isic_id, "fingerprint": fingerprint}
    for field in _REQUIRED_TEXT:
        value = record.get(field)
        if _missing(value):
            raise PayloadError(isic_id, field, "missing")
        payload[field] = str(value)
    for name in ATTRIBUTE_NAMES:
        value = _attribute_value(record, name)
        if _missing(value):
            raise PayloadError(isic_id, name, "missing ground-truth value")
        payload[name] = _number(isic_id, name, value)
    # Metadata is often absent in ISIC (age_approx NaN, sex empty): stored as null, never invented.
    for field in STORED_FIELDS:
        value = record.get(field.name)
        if _missing(value):
            payload[field.name] = None
        elif field.kind == "text":
            payload[field.name] = str(value)
        else:
            number = _number(isic_id, field.name, value)
            if field.enforced and number not in (field.vocabulary or ()):
                allowed = " or ".join(str(v) for v in field.vocabulary or ())
                raise PayloadError(isic_id, field.name, f"must be {allowed}, got {value!r}")
            payload[field.name] = int(number) if field.kind == "integer" else number
    return payload
