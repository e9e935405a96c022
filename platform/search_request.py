"""What a search asks for: the mode, the request, its checks, and the errors a search raises."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from PIL import Image

from dermground.platform.attributes import ATTRIBUTE_NAMES, get_attribute
from dermground.platform.settings import Settings
from dermground.platform.store import SearchFilter

DEFAULT_B = 200


class SearchMode(str, enum.Enum):
    """How the top-k is found (see dermground.platform.search_modes)."""

    image = "image"
    image_text = "image_text"
    hierarchical = "hierarchical"
    prefetch = "prefetch"


class SearchError(ValueError):
    """A search request that cannot be served as asked; the message says why and what to do, `field`
    names the request field at fault when one is (the API's 422 carries it)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class QueryNotFoundError(SearchError):
    """The query isic_id is not in the collection."""


class ModelUnavailableError(SearchError):
    """The query needs the model (an uploaded image, or vectors the store lacks) and none fits."""


@dataclass(frozen=True)
class SearchRequest:
    """One search. Exactly one of `image` / `isic_id`; attributes needed by every mode but image.

    `filter` restricts the candidates (metadata equality/in, numeric ranges, split);
    `exclude_query_patient` drops the query's patient (known from the payload for an isic_id,
    or given as `query_patient_id` for an upload); `exclude_query_image` drops the query point
    itself when searching by isic_id.
    """

    mode: SearchMode = SearchMode.image
    attributes: tuple[str, ...] = ()
    image: Image.Image | None = None
    isic_id: str | None = None
    k: int = 10
    b: int | None = None  # None: DEFAULT_B, capped at settings.max_b
    filter: SearchFilter = field(default_factory=SearchFilter)
    exclude_query_patient: bool = False
    query_patient_id: str | None = None
    exclude_query_image: bool = True
    cache_vectors: bool = False


def validate_request(request: SearchRequest, settings: Settings) -> tuple[str, ...]:
    """The request's canonical attribute names, or a SearchError saying what to change."""
    if (request.image is None) == (request.isic_id is None):
        raise SearchError("give exactly one query: an image or an isic_id")
    for what, text in _request_texts(request):
        _require_unicode(what, text)
    if not 1 <= request.k <= settings.max_k:
        raise SearchError(f"k must be between 1 and {settings.max_k} (DERMGROUND_MAX_K), got {request.k}", field="k")
    if request.b is not None and not 1 <= request.b <= settings.max_b:
        raise SearchError(f"b must be between 1 and {settings.max_b} (DERMGROUND_MAX_B), got {request.b}", field="b")
    if request.b is not None and request.b < request.k and request.mode in (SearchMode.hierarchical,
                                                                             SearchMode.prefetch):
        # The mode ranks only the b image-nearest candidates: fewer than k would come back, without a word.
        raise SearchError(f"mode {request.mode.value!r} ranks the b image-nearest candidates, so b must be at "
                          f"least k: got b={request.b} and k={request.k}; raise b or lower k", field="b")
    names: list[str] = []
    for name in request.attributes:
        try:
            canonical = get_attribute(name).name
        except KeyError as exc:
            raise SearchError(str(exc.args[0]), field="attributes") from None
        if canonical not in names:
            names.append(canonical)
    if request.mode is SearchMode.image and names:
        raise SearchError("mode 'image' ranks by h_im and takes no attributes; use image_text, hierarchical "
                          "or prefetch to search by an attribute", field="attributes")
    if request.mode is not SearchMode.image and not names:
        raise SearchError(f"mode {request.mode.value!r} needs at least one attribute; known: {', '.join(ATTRIBUTE_NAMES)}",
                          field="attributes")
    return tuple(names)


def _request_texts(request: SearchRequest) -> list[tuple[str, str]]:
    """(what, text) of every text of a request that reaches the store."""
    flt = request.filter
    texts = [("isic_id", request.isic_id), ("query_patient_id", request.query_patient_id), ("split", flt.split)]
    texts += [(f"filter {key}", value) for key, value in flt.equals.items()]
    texts += [(f"filter {key}", value) for key, values in flt.any_of.items() for value in values]
    texts += [("excluded patient_id", value) for value in flt.exclude_patient_ids]
    return [(what, text) for what, text in texts if isinstance(text, str)]


def _require_unicode(what: str, text: str) -> None:
    """SearchError naming `what` when `text` holds a lone surrogate: a JSON escape such as "\\ud800",
    or a shell argument's bytes that were not UTF-8. No stored text can match it, and the store's
    filter (UTF-8 on the wire) fails on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SearchError(f"{what} {ascii(text)[:80]} is not valid Unicode text: {ascii(text[exc.start])} is a lone "
                          "surrogate (bytes that are not UTF-8); send it as UTF-8 text") from None
