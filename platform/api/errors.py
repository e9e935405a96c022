"""One error body for every refusal, and an OpenAPI document that lists every status it can take.

Every 4xx/5xx answer of the API is `ErrorBody`: `detail` (a sentence, or for a request that fails
validation a list of {loc, msg, type, field}), `rule` when a named check refused the input (the
image gate's rule, `rate_limit`, `validation`, ...) and `field` when one request field is at fault
(every 422 names both). `document_errors(app)` makes the OpenAPI document say so, per operation,
for each status that operation can answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


# The rule of a 422 whose request does not fit its schema (a missing field, a number out of range, ...).
VALIDATION_RULE = "validation"
# The rule of a 422 whose request fits its schema but not the search (b below k, an unknown attribute, ...).
SEARCH_REQUEST_RULE = "search_request"
# The rule of a 400 whose SQL the read-only guard refuses or DuckDB cannot run (POST /sql).
SQL_RULE = "sql"
# Where pydantic puts a field: the part of the request, then the field's path inside it.
_REQUEST_PARTS = ("body", "query", "path", "header", "cookie")


class ValidationIssue(BaseModel):
    """One reason a request failed validation: where (loc, and as a dotted field) and what (msg, type)."""

    loc: list[str | int]
    msg: str
    type: str
    field: str | None = Field(None, description="the request field at fault, dotted (filters.ranges.areaMM2.gte)")


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: str | list[ValidationIssue] = Field(description="what was wrong and what to do")
    rule: str | None = Field(None, description="the named check that refused the input, when one did "
                                               "(image gate: empty, byte_limit, format, pixel_limit, decode, "
                                               "aspect_ratio, min_side; base64; rate_limit; body_limit, "
                                               "body_timeout, unfinished_bodies, content_length, multipart; "
                                               "validation: the request does not fit its schema; "
                                               "one_query, search_request; repeated_field: a form "
                                               "field sent twice; sql: a query POST /sql refuses; "
                                               "sql_answer_limit: its answer is over the byte cap)")
    field: str | None = Field(None, description="the request field at fault, when one is (every 422 names it "
                                                "where the request has one; dotted for nested fields)")


class RefusedError(HTTPException):
    """An HTTPException whose body also names the rule that refused the request (and the field, if one)."""

    def __init__(self, status_code: int, detail: str, *, rule: str, headers: dict[str, str] | None = None,
                 field: str | None = None) -> None:
        super().__init__(status_code, detail=detail, headers=headers)
        self.rule = rule
        self.field = field


def error_content(exc: HTTPException) -> dict[str, object]:
    """The ErrorBody of an HTTPException (with its rule and field when it is a RefusedError)."""
    body: dict[str, object] = {"detail": exc.detail}
    for key in ("rule", "field"):
        value = getattr(exc, key, None)
        if value is not None:
            body[key] = value
    return body


def field_of(loc: Sequence[str | int]) -> str:
    """A validation issue's field, dotted and without the request part: ("body", "filters", "k") -> "filters.k".

    The upload form's SearchParams keep their form field: ("body", "request", "k") -> "request.k". A
    body that is not JSON at all (loc: body and a character position) names the part, "body"."""
    path = list(loc)
    part = str(path.pop(0)) if path and path[0] in _REQUEST_PARTS else "body"
    if not path or (len(path) == 1 and isinstance(path[0], int)):
        return part
    return ".".join(str(p) for p in path)


def validation_content(errors: Sequence[Mapping[str, Any]]) -> dict[str, object]:
    """The ErrorBody of a request that fails validation: every issue (never its input: it may be 10 MB of
    base64), the rule `validation` and the first issue's field."""
    issues = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", ""),
               "field": field_of(e.get("loc", ()))} for e in errors]
    body: dict[str, object] = {"detail": issues, "rule": VALIDATION_RULE}
    if issues:
        body["field"] = issues[0]["field"]
    return body


# FastAPI's answer to a body that its JSON reader raised on with anything but a JSONDecodeError.
_UNPARSED_BODY = "There was an error parsing the body"
# The rule of a 400 whose multipart body cannot be split into its parts (no boundary, cut short, ...).
MULTIPART_RULE = "multipart"


def unreadable_body(exc: HTTPException) -> tuple[int, dict[str, object]] | None:
    """(status, ErrorBody) of a body that cannot be read at all, else None.

    A JSON body that is not UTF-8, nested deeper than the reader recurses or holding a number of more
    than 4300 digits is not JSON, like `{nope`: 422 `validation` naming the field `body` and what is
    wrong (FastAPI said only "There was an error parsing the body", with no rule). A multipart body
    that cannot be split into parts: 400 `multipart`, field `body`, with the parser's reason."""
    from starlette.formparsers import MultiPartException

    cause = exc.__cause__
    if exc.status_code == 400 and exc.detail == _UNPARSED_BODY and cause is not None:
        issue = {"loc": ("body",), "msg": _unreadable_json(cause), "type": "json_invalid"}
        return 422, validation_content([issue])
    if exc.status_code == 400 and isinstance(exc.__context__, MultiPartException):
        return 400, {"detail": f"the multipart body cannot be read: {exc.detail} Send multipart/form-data with the "
                               "boundary its Content-Type names (curl -F does)",
                     "rule": MULTIPART_RULE, "field": "body"}
    return None


def _unreadable_json(cause: BaseException) -> str:
    """Why a JSON body could not be read, and what to send instead."""
    if isinstance(cause, UnicodeDecodeError):
        return (f"the body is not UTF-8 text (byte 0x{cause.object[cause.start]:02x} at position {cause.start}): "
                "send the JSON encoded as UTF-8")
    if isinstance(cause, RecursionError):
        return "the JSON is nested too deeply to read: no request nests more than a few levels"
    # The reason's first clause: a number's digit limit goes on to name a Python call, the server's business.
    return f"the body cannot be read as JSON: {str(cause).split(';')[0] or type(cause).__name__}"


_REASONS = {
    400: "Bad request: a malformed header or body, or an SQL query the guard refuses",
    401: "Missing or wrong API key (X-API-Key)",
    403: "The endpoint is disabled on this server (no admin key configured)",
    404: "Not found: no such lesion, or its image cannot be read",
    408: "The request body did not arrive in time",
    413: "The request body or the image is over the size limit",
    422: "The request or the image fails validation (the body names the rule, and the field where one is at fault)",
    429: "Too much model work in flight for this client: retry after Retry-After seconds",
    500: "Internal error (the body carries an id for the server log)",
    503: "The vector store or the model is not available, the GPU has no room for the request now, "
         "or the server is at its connection limit",
}
# Statuses every operation can answer: the body-size and body-time limits act before routing.
_COMMON = (400, 408, 413, 422, 500)
# What each operation adds (by method and path template).
_EXTRA: dict[tuple[str, str], tuple[int, ...]] = {
    ("get", "/health"): (503,),  # the Qdrant server is unavailable, or the collection has no live version
    ("get", "/attributes"): (),
    ("get", "/examples"): (503,),
    ("post", "/search"): (404, 429, 503),
    ("post", "/search/upload"): (404, 429, 503),
    ("get", "/images/{isic_id}"): (404, 503),
    ("post", "/predict"): (429, 503),
    ("post", "/sql"): (403,),
    ("get", "/collections"): (503,),
}
_PROTECTED_EXTRA = (401,)


def operation_statuses(method: str, path: str, protected: bool) -> tuple[int, ...]:
    """Every error status an operation can answer, sorted."""
    extra = _EXTRA.get((method, path), (404, 503))  # an operation not in the table: assume the most
    return tuple(sorted({*_COMMON, *extra, *(_PROTECTED_EXTRA if protected else ())}))


def document_errors(app: FastAPI) -> None:
    """Make app.openapi() list, per operation, every error status with ErrorBody as its body."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        defs = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(defs.pop("$defs", {}))
        components["ErrorBody"] = defs
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                for status in operation_statuses(method, path, protected="security" in operation):
                    responses[str(status)] = {"description": _REASONS[status],
                                              "content": {"application/json": {"schema": ref}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
