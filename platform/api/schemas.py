"""Request and response models of the HTTP API: every field typed and bounded (422 otherwise)."""

from __future__ import annotations

import enum
import math
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from dermground.platform.attributes import ATTRIBUTE_NAMES
from dermground.platform.metadata_fields import ANY_OF_FILTERS, EQUALS_FILTERS
from dermground.platform.records import Split
from dermground.platform.search_request import DEFAULT_B, SearchMode
from dermground.platform.store.schema import NUMERIC_FIELDS

# Enums built from the registry: an unknown attribute is a 422 naming the allowed values.
AttributeName = enum.Enum("AttributeName", {name: name for name in ATTRIBUTE_NAMES}, type=str)
RangeField = enum.Enum("RangeField", {name: name for name in NUMERIC_FIELDS}, type=str)

# Every id the reader ingests (a plain file name, platform/names.py): up to 200 characters, no
# separator or control character, not hidden.
ISIC_ID_PATTERN = r"^[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]{0,199}$"
# Hard ceilings; the configured settings.max_k / max_b (smaller) are checked per request.
K_CEILING = 10_000
B_CEILING = 1_000_000
_TEXT = Field(min_length=1, max_length=128)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: object, info: ValidationInfo) -> object:
        # pydantic's lax mode reads JSON true/false as 1/0 for an int or float field: `"k": true`
        # searched with k=1. A boolean where a number belongs is a mistake to name, not a number.
        if isinstance(value, bool) and info.field_name is not None \
                and _is_number(cls.model_fields[info.field_name].annotation):
            raise PydanticCustomError("number_type", "Input should be a number, not a boolean ({value})",
                                      {"value": str(value).lower()})
        return value


def _is_number(annotation: object) -> bool:
    """Whether a field's type is int, float or a Literal of ints (or one of them | None): never bool itself."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_number(arg) for arg in args)
    if origin is Literal:  # an equals filter's vocabulary of codes (target: 0 or 1)
        return all(isinstance(arg, int) and not isinstance(arg, bool) for arg in args)
    return annotation in (int, float)


class NumericRange(_Strict):
    """Inclusive bounds; either may be left out."""

    gte: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> NumericRange:
        if self.gte is None and self.lte is None:
            raise ValueError("give gte, lte or both")
        for bound in (self.gte, self.lte):
            if bound is not None and not math.isfinite(bound):
                raise ValueError("bounds must be finite numbers")
        if self.gte is not None and self.lte is not None and self.gte > self.lte:
            raise ValueError(f"gte ({self.gte:g}) is above lte ({self.lte:g}): the range matches no value")
        return self


class _FilterValues(_Strict):
    """The check every any_of filter's values pass (the fields themselves come from the registry)."""

    @field_validator(*ANY_OF_FILTERS, check_fields=False)
    @classmethod
    def _short_values(cls, values: list[str] | None) -> list[str] | None:
        if values is not None and any(not v or len(v) > 128 for v in values):
            raise ValueError("each value must be 1 to 128 characters")
        return values


def _filter_fields() -> dict[str, Any]:
    """The filter fields from the metadata-field registry: a list per any_of field (at most its cap),
    one of its vocabulary per equals field, numeric ranges."""
    fields: dict[str, Any] = {"split": (Split | None, None)}
    for name, cap in ANY_OF_FILTERS.items():
        fields[name] = (list[str] | None, Field(None, min_length=1, max_length=cap))
    for field in EQUALS_FILTERS:
        fields[field.name] = (Literal[field.vocabulary] | None, None)  # type: ignore[valid-type]
    fields["ranges"] = (dict[RangeField, NumericRange], Field(default_factory=dict))  # type: ignore[valid-type]
    return fields


SearchFilters = create_model("SearchFilters", __base__=_FilterValues, __module__=__name__,
                             __doc__="Payload filters (all ANDed). Lists mean 'any of'.", **_filter_fields())


class SearchParams(_Strict):
    """Everything about a search except the uploaded image (multipart form field `request`)."""

    mode: SearchMode = SearchMode.image
    attributes: list[AttributeName] = Field(default_factory=list, max_length=len(ATTRIBUTE_NAMES))  # type: ignore[valid-type]
    isic_id: str | None = Field(None, pattern=ISIC_ID_PATTERN)
    k: int = Field(10, ge=1, le=K_CEILING)
    b: int | None = Field(None, ge=1, le=B_CEILING, description=f"candidates for hierarchical/prefetch/multi-attribute (default {DEFAULT_B}, capped at DERMGROUND_MAX_B)")
    filters: SearchFilters = Field(default_factory=SearchFilters)
    exclude_query_patient: bool = False
    query_patient_id: str | None = Field(None, min_length=1, max_length=128)
    exclude_query_image: bool = True
    cache_vectors: bool = False


class SearchBody(SearchParams):
    """POST /search: an isic_id, or a base64-encoded image (JPEG/PNG/...)."""

    image_base64: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_query(self) -> SearchBody:
        if (self.image_base64 is None) == (self.isic_id is None):
            raise ValueError("give exactly one of image_base64 and isic_id")
        return self


class Hit(BaseModel):
    isic_id: str
    score: float
    attributes: dict[str, float | None]
    attribute_scores: dict[str, float]
    payload: dict[str, object]
    thumbnail_url: str


class SearchResult(BaseModel):
    mode: SearchMode
    attributes: list[str]
    query_isic_id: str | None
    query_patient_id: str | None
    query_attributes: dict[str, float | None]
    hits: list[Hit]
    model_ran: bool
    candidates: int
    reembedded: int
    cached: int
    seconds: float


class AttributeInfo(BaseModel):
    name: str
    isic_column: str
    label: str
    unit: str
    definition: str
    question: str
    decimals: int
    low: float
    high: float
    vector_name: str


class Answer(BaseModel):
    name: str
    label: str
    unit: str
    value: float | None  # the mean of the pooled answers (or the greedy answer's value)
    raw: str  # the greedy answer's text (the image as given)
    ok: bool
    spread: float | None = None  # standard deviation of the pooled answers: the model's uncertainty
    samples: int = 0  # pooled answers (samples x views) that parsed


class PredictResult(BaseModel):
    answers: list[Answer]
    seconds: float


class SqlBody(_Strict):
    query: str = Field(min_length=1, max_length=20_000)
    max_rows: int | None = Field(None, ge=1, le=1_000_000)


class SqlResult(BaseModel):
    columns: list[str]
    rows: list[list[object]]
    truncated: bool


class Example(BaseModel):
    isic_id: str
    patient_id: str | None
    split: str | None
    thumbnail_url: str
    attributes: dict[str, float | None]


class Health(BaseModel):
    status: Literal["ok"]
    collection: str
    points: int | None
    model_loaded: bool
    auth: Literal["keys", "open (loopback only)"]
    # The request limits this server checks (DERMGROUND_MAX_K / _MAX_B): the viewer's k and b boxes follow them.
    max_k: int | None = None
    max_b: int | None = None


class CollectionVersion(BaseModel):
    """One physical version behind a collection name (GET /collections)."""

    name: str
    version: str
    physical: str
    live: bool
    state: str
    created_at: str | None
    source: str | None
    adapter: str | None
    fingerprint: str | None
    dim: int | None
    points: int | None
    size_bytes: int | None
    note: str | None
