"""Request body limits as ASGI middleware: 413 on a declared or an actual body over the limit
(BodySizeLimit); 408 on a body that does not arrive in time and 503 beyond a number of bodies
still arriving at once (BodyReadLimits), so slow or never-finishing bodies cannot hold the server."""

from __future__ import annotations

import asyncio
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLargeError(HTTPException):
    rule = "body_limit"  # the error body's `rule` (platform/api/errors.py)

    def __init__(self, limit: int, image_bytes: int | None = None) -> None:
        detail = f"request body over the limit of {limit} bytes"
        if image_bytes is not None:  # the limit a user can act on: a body this large carries a larger image
            detail += (f", which holds one image of at most {image_bytes} bytes (DERMGROUND_MAX_UPLOAD_BYTES) as a "
                       "file or as base64, and the request's other fields: send a smaller image")
        super().__init__(413, detail=detail)


class BodySizeLimit:
    """Refuses bodies over `max_bytes`: by Content-Length up front, and by counting what arrives
    (a chunked body has no Content-Length). `image_bytes`, the image limit the body limit is made
    for, is named in the refusal."""

    def __init__(self, app: ASGIApp, max_bytes: int, image_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.image_bytes = image_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await _reply(send, 400, "invalid Content-Length header", rule="content_length")
                return
            if too_large:
                await _reply_error(send, BodyTooLargeError(self.max_bytes, self.image_bytes))
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes, self.image_bytes)
            return message

        await _run_answering(BodyTooLargeError, self.app, scope, counting_receive, send)


async def _run_answering(error: type[HTTPException], app: ASGIApp, scope: Scope, receive: Receive,
                         send: Send) -> None:
    """Run `app`; when it raises `error` before its response started, answer with the error's status,
    detail and rule (once a response has started, the connection can only be dropped)."""
    started = False

    async def tracking_send(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except error as exc:
        if not started:
            await _reply_error(send, exc)


async def _reply_error(send: Send, exc: HTTPException) -> None:
    await _reply(send, exc.status_code, exc.detail, rule=exc.rule)  # type: ignore[attr-defined]


async def _reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None, *,
                 rule: str) -> None:
    body = json.dumps({"detail": detail, "rule": rule}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyTimeoutError(HTTPException):
    rule = "body_timeout"

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, detail=f"the request body did not arrive within {timeout_s:g} s")


def _has_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers") or [])
    return b"transfer-encoding" in headers or headers.get(b"content-length", b"0").strip() not in (b"0", b"")


class BodyReadLimits:
    """Every request body must be complete within `timeout_s` of the request's start (408 otherwise),
    and at most `max_unfinished` bodies may be arriving at once (503 with Retry-After beyond)."""

    def __init__(self, app: ASGIApp, timeout_s: float, max_unfinished: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.max_unfinished = max_unfinished
        self.unfinished = 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        if self.unfinished >= self.max_unfinished:
            await _reply(send, 503, f"{self.max_unfinished} request bodies are still arriving: retry shortly",
                         [(b"retry-after", b"1")], rule="unfinished_bodies")
            return
        self.unfinished += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        finished = False

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                self.unfinished -= 1

        async def timed_receive() -> Message:
            if finished:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0.0))
            except TimeoutError:
                finish()
                raise BodyTimeoutError(self.timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                finish()
            return message

        try:
            await _run_answering(BodyTimeoutError, self.app, scope, timed_receive, send)
        finally:
            finish()
