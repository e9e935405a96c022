"""The FastAPI application: `create_app(settings)`.

The store is opened once for the process (the embedded engine is single-process) and the model is
loaded on first use. Errors come back as JSON with a reason and never with a stack trace.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from dermground.platform.api.errors import document_errors, error_content, unreadable_body, validation_content
from dermground.platform.api.images import ThumbnailCache
from dermground.platform.api.limits import BodyReadLimits, BodySizeLimit
from dermground.platform.api.routes import router
from dermground.platform.api.throttle import ClientWorkLimiter
from dermground.platform.api.viewer import STATIC_DIR
from dermground.platform.embedder_provider import EmbedderProvider, is_device_out_of_memory
from dermground.platform.names import check_collection_name
from dermground.platform.search_request import ModelUnavailableError
from dermground.platform.settings import Settings
from dermground.platform.store import CollectionMissingError, StoreError, StoreLockedError, VectorStore, open_live_store

log = logging.getLogger("dermground.api")
# A base64 image is 4/3 of its bytes, and the text around its characters can add an eighth more:
# lines as short as 64 characters (PEM, openssl) ending in CRLF, which a JSON string writes as the 4
# characters \r\n (6.25%), and encoders that escape '/' as '\/' (PHP's json_encode; 1 in 64 base64
# characters on average). The image's own limit is checked exactly once its base64 is decoded.
_BASE64_TEXT_ROOM = 9 / 8
# The rest of a JSON body is small: the other fields, a data: URL prefix.
_BODY_OVERHEAD = 64 * 1024


def body_limit(settings: Settings) -> int:
    """The largest request body accepted: one upload of max_upload_bytes as base64, wrapped in lines
    and escaped as JSON encoders do, plus the other fields."""
    return math.ceil((settings.max_upload_bytes + 2) // 3 * 4 * _BASE64_TEXT_ROOM) + _BODY_OVERHEAD


def _model_loader(settings: Settings):  # noqa: ANN202
    def load():  # noqa: ANN202
        from dermground.platform.model.loading import BackboneError, load_backbone_from_settings
        from dermground.platform.search_embedder import search_embedder

        try:
            return search_embedder(load_backbone_from_settings(settings), settings.search_embed_batch)
        except BackboneError as exc:
            raise ModelUnavailableError(f"the model could not be loaded: {exc}") from None

    return load


def _model_finder(settings: Settings):  # noqa: ANN202
    def find(fingerprint: str):  # noqa: ANN202 - a loader, or None
        from dermground.platform.collection_model import model_settings_for

        found = model_settings_for(settings, fingerprint)
        return _model_loader(found) if found is not None else None

    return find


def create_app(settings: Settings, *, store: VectorStore | None = None, backbone: object | None = None) -> FastAPI:
    """The API. `store` (already open) and `backbone` (already loaded) are used instead of opening
    the store from settings at startup and loading the model on first use; the caller owns them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = None
        if app.state.store is None:
            try:
                owned = app.state.store = open_live_store(settings)  # follows `collections switch`
            except StoreLockedError as exc:
                log.error("cannot start: %s", exc)
                raise RuntimeError(f"cannot start the API: {exc}") from None
        try:
            yield
        finally:
            if owned is not None:
                owned.close()

    check_collection_name(settings.collection)  # settings copied with model_copy skip their validators
    app = FastAPI(title="dermground", version="0.1.0", lifespan=lifespan,
                  description="Attribute-grounded retrieval of skin-lesion images. Send the API key in the "
                              "X-API-Key header (read key: search, predict, images, examples, collections; "
                              "analyst key: sql only; admin key: all of them). Every error body is ErrorBody: "
                              "detail, and the rule and field that refused the request where one did.")
    app.state.settings = settings
    app.state.store = store
    app.state.thumbnails = ThumbnailCache()
    if backbone is not None:
        from dermground.platform.search_embedder import search_embedder

        embedder = search_embedder(backbone, settings.search_embed_batch)  # type: ignore[arg-type]
        app.state.embedder = EmbedderProvider.of(embedder)
    else:
        # Follows the live version's adapter too: a switch to a re-embedded version needs no restart.
        app.state.embedder = EmbedderProvider(_model_loader(settings), find=_model_finder(settings))
    app.add_middleware(BodySizeLimit, max_bytes=body_limit(settings), image_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyReadLimits, timeout_s=settings.api_body_timeout_s,
                       max_unfinished=settings.api_max_unfinished_bodies)
    app.state.model_work = ClientWorkLimiter(settings.api_model_work_per_client)
    _install_error_handlers(app)
    document_errors(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_content(exc.errors()), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        unreadable = unreadable_body(exc)
        if unreadable is not None:
            return JSONResponse(unreadable[1], status_code=unreadable[0])
        return JSONResponse(error_content(exc), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RuntimeError)  # torch.OutOfMemoryError is one (torch is imported with the model only)
    async def device_out_of_memory(request: Request, exc: RuntimeError) -> JSONResponse:
        if not is_device_out_of_memory(exc):
            raise exc  # any other RuntimeError: the 500 handler below, as before
        # The request was too much for the GPU's free memory now (others' requests hold some):
        # the server is fine and a retry may fit; not the client's fault, so not a 4xx.
        log.warning("%s %s ran out of GPU memory: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "the model ran out of GPU memory on this request; retry in a moment, "
                                       "or ask for fewer candidates (b)"},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(CollectionMissingError)  # a RuntimeError too: the most specific handler wins
    async def collection_missing(request: Request, exc: CollectionMissingError) -> JSONResponse:
        # The served collection has no live version on the server (the store already followed the
        # alias once): the server is fine, the data is not there. Its message says what to do.
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(StoreError)  # CollectionMissingError keeps its own handler (the most specific wins)
    async def store_unavailable(request: Request, exc: StoreError) -> JSONResponse:
        # The vector store failed under any endpoint (a Qdrant server down, slow, refusing the key):
        # the request was fine, the store is not; its message names the URL and the setting to fix.
        log.warning("%s %s: the vector store failed: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.url.path)
        return JSONResponse({"detail": f"internal error (id {error_id}); the server log has the details"},
                            status_code=500)
