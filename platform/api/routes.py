"""The API's endpoints. Handlers are plain functions: FastAPI runs them in its thread pool, the
store is thread-safe and the model is serialised by EmbedderProvider."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from PIL import Image
from pydantic import ValidationError

from dermground.platform.api import schemas
from dermground.platform.api.errors import SEARCH_REQUEST_RULE, SQL_RULE, RefusedError
from dermground.platform.api.form_fields import single_form_values
from dermground.platform.api.images import (
    UploadError,
    UploadTooLargeError,
    decode_base64,
    decode_upload,
    read_upload_bytes,
)
from dermground.platform.api.security import auth_mode, require_read, require_sql
from dermground.platform.api.sql_answer import SQL_ANSWER_RULE, SqlAnswer, SqlAnswerTooLarge
from dermground.platform.api.throttle import client_key
from dermground.platform.api.viewer import STATIC_DIR
from dermground.platform.attributes import ATTRIBUTES, get_attribute
from dermground.platform.metadata_fields import ANY_OF_FILTERS, EQUALS_FILTERS
from dermground.platform.search import search
from dermground.platform.search_query import find_lesion
from dermground.platform.search_request import ModelUnavailableError, QueryNotFoundError, SearchError, SearchRequest
from dermground.platform.search_results import SearchResponse
from dermground.platform.settings import Settings
from dermground.platform.store import Range, SearchFilter, StoreError, VectorStore

router = APIRouter()
read = [Depends(require_read)]
_HIDDEN_PAYLOAD = {"image_ref"}  # server file paths stay on the server
IsicId = Annotated[str, Path(pattern=schemas.ISIC_ID_PATTERN)]


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> VectorStore:
    store = request.app.state.store
    if store is None:
        raise HTTPException(503, detail="the vector store is not open")
    return store


def _thumb_url(isic_id: str) -> str:
    return f"/images/{isic_id}?size=thumb"


# --- public --------------------------------------------------------------------------------------
@router.get("/", include_in_schema=False)
def viewer() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/health", response_model=schemas.Health, tags=["meta"])
def health(request: Request) -> schemas.Health:
    """Liveness and what is served (no key needed)."""
    store = request.app.state.store
    points = None
    if store is not None and store.describe() is not None:
        points = store.count()
    settings = _settings(request)
    return schemas.Health(status="ok", collection=settings.collection, points=points,
                          model_loaded=request.app.state.embedder._embedder is not None, auth=auth_mode(settings),
                          max_k=settings.max_k, max_b=settings.max_b)


@router.get("/attributes", response_model=list[schemas.AttributeInfo], tags=["meta"])
def attributes() -> list[schemas.AttributeInfo]:
    """The 16 attributes: names, labels, units, questions, plausible ranges."""
    return [schemas.AttributeInfo(**a.to_dict()) for a in ATTRIBUTES]


# --- read key ------------------------------------------------------------------------------------
@router.get("/examples", response_model=list[schemas.Example], dependencies=read, tags=["search"])
def examples(request: Request, n: Annotated[int, Query(ge=1, le=100)] = 12,
             split: Literal["train", "test"] | None = None) -> list[schemas.Example]:
    """A few stored lesions to query by isic_id (the viewer's picker)."""
    store = _store(request)
    if store.describe() is None:
        return []
    points, _ = store.scroll(SearchFilter(split=split), limit=n)
    return [schemas.Example(isic_id=str(p.payload.get("isic_id")), patient_id=p.payload.get("patient_id"),  # type: ignore[arg-type]
                            split=p.payload.get("split"), thumbnail_url=_thumb_url(str(p.payload.get("isic_id"))),  # type: ignore[arg-type]
                            attributes={a.name: p.payload.get(a.name) for a in ATTRIBUTES})  # type: ignore[misc]
            for p in points]


@router.post("/search", response_model=schemas.SearchResult, dependencies=read, tags=["search"])
def search_json(request: Request, body: schemas.SearchBody) -> schemas.SearchResult:
    """Search by an existing isic_id or a base64-encoded image (JSON body)."""
    settings = _settings(request)
    if body.image_base64 is None:
        return _run_search(request, body, None)
    with _model_work(request):
        image = _decode(lambda: decode_upload(decode_base64(body.image_base64 or "", settings.max_upload_bytes),
                                              settings.max_upload_bytes, settings.max_image_pixels),
                        field="image_base64")
        return _run_search(request, body, image)


@router.post("/search/upload", response_model=schemas.SearchResult, tags=["search"],
             dependencies=[*read, Depends(single_form_values("file", "request"))])
def search_upload(request: Request, file: Annotated[UploadFile, File(description="the query image")],
                  params: Annotated[str, Form(alias="request", max_length=100_000,
                                              description="SearchParams as JSON")] = "{}") -> schemas.SearchResult:
    """Search by an uploaded image (multipart: `file`, and the parameters as JSON in `request`)."""
    try:
        parsed = schemas.SearchParams.model_validate_json(params)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", "request", *e["loc"])} for e in exc.errors()]) from None
    if parsed.isic_id is not None:
        raise RefusedError(422, "an upload searches by the uploaded image: leave isic_id out", rule="one_query",
                           field="request.isic_id")
    with _model_work(request):
        image = _read_upload(request, file)
        return _run_search(request, parsed, image)


@router.get("/images/{isic_id}", dependencies=read, tags=["images"],
            responses={200: {"content": {"image/jpeg": {}}}})
def image(request: Request, isic_id: IsicId, size: Literal["thumb", "full"] = "thumb") -> Response:
    """A stored lesion's image as JPEG (thumbnail: longest side 160 px)."""
    store = _store(request)
    if store.describe() is None:
        raise HTTPException(404, detail=f"no lesion {isic_id!r}: the collection is empty")
    found = find_lesion(store, isic_id)  # also under the id's other Unicode normal form (NFC/NFD)
    if found is None:
        raise HTTPException(404, detail=f"no lesion {isic_id!r} in collection {store.collection!r}")
    try:
        data = request.app.state.thumbnails.get(str(found.payload.get("isic_id") or isic_id), size, found.payload,
                                                _settings(request).max_image_pixels)
    except (OSError, KeyError, ValueError) as exc:
        raise HTTPException(404, detail=f"the image of {isic_id!r} cannot be read on the server ({type(exc).__name__})") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.post("/predict", response_model=schemas.PredictResult, tags=["predict"],
             dependencies=[*read, Depends(single_form_values("file"))])
def predict(request: Request, file: Annotated[UploadFile, File(description="the lesion image")]) -> schemas.PredictResult:
    """The model's answer to each of the 16 questions for an uploaded image."""
    from dermground.platform.predict import predict_attributes

    with _model_work(request):
        image = _read_upload(request, file)
        started = time.perf_counter()
        try:
            settings = _settings(request)
            answers = request.app.state.embedder.run(lambda embedder: predict_attributes(
                embedder.backbone, [image], samples=settings.predict_samples, seed=settings.seed,
                views=settings.predict_views, pool=settings.predict_pool)[0])
        except ModelUnavailableError as exc:
            raise HTTPException(503, detail=str(exc)) from None
    return schemas.PredictResult(
        answers=[schemas.Answer(name=name, label=get_attribute(name).label, unit=get_attribute(name).unit,
                                value=p.value, raw=p.raw, ok=p.ok, spread=p.spread, samples=p.samples)
                 for name, p in answers.items()],
        seconds=time.perf_counter() - started)


# --- admin key -----------------------------------------------------------------------------------
@router.post("/sql", response_model=schemas.SqlResult, dependencies=[Depends(require_sql)], tags=["analysts"])
def sql(request: Request, body: schemas.SqlBody) -> schemas.SqlResult:
    """One read-only SELECT over the catalog views (the same guard as `dermground sql`)."""
    from dermground.platform.catalog import SqlRejected, run_readonly_sql
    from dermground.platform.catalog_files import MissingCatalogFile

    settings = _settings(request)
    max_rows = min(body.max_rows or settings.sql_max_rows, settings.sql_max_rows)
    answer = SqlAnswer(settings.sql_max_answer_bytes, max_rows, _json_cell)
    try:
        result = run_readonly_sql(settings.catalog_dir, body.query, max_rows=max_rows, timeout_s=settings.sql_timeout_s,
                                  check_row=answer.add)
    except SqlRejected as exc:  # the guard's refusal or DuckDB's error: the query is at fault
        raise RefusedError(400, str(exc), rule=SQL_RULE, field="query") from None
    except SqlAnswerTooLarge as exc:  # reading stopped at the cap: the query asks for too much
        raise RefusedError(400, str(exc), rule=SQL_ANSWER_RULE, field="query") from None
    except MissingCatalogFile as exc:  # the server's catalog is damaged, not the request
        raise HTTPException(503, detail=str(exc)) from None
    return schemas.SqlResult(columns=result.columns, rows=answer.rows, truncated=result.truncated)


# --- helpers -------------------------------------------------------------------------------------
def _json_cell(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, timedelta):  # in a list or struct: as DuckDB's text, like a top-level interval
        from dermground.platform.analyst import interval_text

        return interval_text(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):  # a list() or a struct: JSON arrays and objects, not Python's repr
        return [_json_cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_cell(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray | memoryview):  # a BLOB as DuckDB writes it, as `dermground sql` does
        from dermground.platform.sql_text import blob_text

        return blob_text(value)
    return str(value)


def _decode(work, field: str = "file") -> Image.Image:  # noqa: ANN001
    try:
        return work()
    except UploadTooLargeError as exc:
        raise RefusedError(413, str(exc), rule=exc.rule, field=field) from None
    except UploadError as exc:
        raise RefusedError(422, str(exc), rule=exc.rule, field=field) from None


def _model_work(request: Request):  # noqa: ANN202 - a context manager
    """One of this client's slots of model work (decoding included); 429 when it has none left."""
    keyed = auth_mode(_settings(request)) == "keys"
    return request.app.state.model_work.slot(client_key(request, keyed))


def _read_upload(request: Request, file: UploadFile) -> Image.Image:
    settings = _settings(request)
    return _decode(lambda: decode_upload(read_upload_bytes(file.file, settings.max_upload_bytes, file.size),
                                         settings.max_upload_bytes, settings.max_image_pixels))


def _search_filter(filters: schemas.SearchFilters) -> SearchFilter:
    any_of = {key: values for key in ANY_OF_FILTERS if (values := getattr(filters, key))}
    equals: dict[str, str | int] = {f.name: value for f in EQUALS_FILTERS
                                    if (value := getattr(filters, f.name)) is not None}
    ranges = {field.value: Range(gte=r.gte, lte=r.lte) for field, r in filters.ranges.items()}
    return SearchFilter(equals=equals, any_of=any_of, ranges=ranges, split=filters.split)


def _run_search(request: Request, params: schemas.SearchParams, image: Image.Image | None) -> schemas.SearchResult:
    search_request = SearchRequest(
        mode=params.mode, attributes=tuple(a.value for a in params.attributes), image=image,
        isic_id=params.isic_id if image is None else None, k=params.k, b=params.b,
        filter=_search_filter(params.filters), exclude_query_patient=params.exclude_query_patient,
        query_patient_id=params.query_patient_id, exclude_query_image=params.exclude_query_image,
        cache_vectors=params.cache_vectors)
    try:
        response = search(search_request, store=_store(request), embedder=request.app.state.embedder,
                          settings=_settings(request))
    except QueryNotFoundError as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except ModelUnavailableError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    except SearchError as exc:
        raise RefusedError(422, str(exc), rule=SEARCH_REQUEST_RULE, field=exc.field) from None
    except StoreError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return _result(response)


def _result(response: SearchResponse) -> schemas.SearchResult:
    hits = [schemas.Hit(isic_id=h.isic_id, score=h.score, attributes=h.attributes, attribute_scores=h.attribute_scores,
                        payload={k: v for k, v in h.payload.items() if k not in _HIDDEN_PAYLOAD},
                        thumbnail_url=_thumb_url(h.isic_id)) for h in response.hits]
    return schemas.SearchResult(
        mode=response.mode, attributes=list(response.attributes), query_isic_id=response.query_isic_id,
        query_patient_id=response.query_patient_id, query_attributes=response.query_attributes, hits=hits,
        model_ran=response.model_ran, candidates=response.candidates, reembedded=response.reembedded,
        cached=response.cached, seconds=response.seconds)



@router.get("/collections", response_model=list[schemas.CollectionVersion], dependencies=read, tags=["meta"])
def collections(request: Request) -> list[schemas.CollectionVersion]:
    """Every collection version: alias target (live), points, model fingerprint and adapter, creation
    time, size on disk. Versions this server does not have open show the count recorded when built."""
    from dermground.platform.store import open_collections

    try:
        with open_collections(_settings(request)) as versions:
            infos = versions.list(held=_open_stores(request.app.state.store), count=False)
    except StoreError as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return [schemas.CollectionVersion(**info.to_dict()) for info in infos]


def _open_stores(store: VectorStore | None) -> dict[str, VectorStore]:
    """The stores this server has open, by physical collection: counted through them, never opened twice.

    A LiveStore holds the version its alias points at now; a store handed to create_app is itself
    the one open collection."""
    from dermground.platform.store.live import LiveStore

    if isinstance(store, LiveStore):
        return store.held()
    return {store.collection: store} if store is not None else {}
