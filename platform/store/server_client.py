"""A qdrant-client for a Qdrant server URL whose failures are StoreErrors naming the URL and what to fix.

qdrant-client reports a server that is down, slow, misconfigured or refusing the key with its own
types (ResponseHandlingException around an httpx error, UnexpectedResponse with the status): they
would reach the CLI as a traceback and the API as a 500. `connect_server` returns a client whose
every call turns them into StoreUnavailableError (or StoreError for a request the server refused),
with the URL (without credentials), the setting to change and never the API key. A 404 that is
Qdrant's own answer ("collection doesn't exist") passes through unchanged: store/server.py turns it
into CollectionMissingError, which the live store follows.
"""

from __future__ import annotations

import functools
import json
import ssl
import warnings
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import ValidationError
from qdrant_client import QdrantClient
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from dermground.platform.store.base import StoreError, StoreUnavailableError

URL_SETTING = "DERMGROUND_QDRANT_URL"
KEY_SETTING = "DERMGROUND_QDRANT_API_KEY"
TIMEOUT_SETTING = "DERMGROUND_QDRANT_TIMEOUT_S"
MAX_REQUEST_SETTING = "DERMGROUND_QDRANT_MAX_REQUEST_MB"
DEFAULT_PORT = 6333  # what qdrant-client adds to a URL without a port
_SERVER_TEXT_LIMIT = 200
# The Qdrant service's name in docker/compose.yaml (its URL there: http://qdrant:6333).
COMPOSE_QDRANT_HOST = "qdrant"
_INSECURE_KEY_WARNING = "Api key is used with an insecure connection"

# qdrant-client's background version check warns (two lines, with a file path) whenever it cannot
# reach the server; the failed request itself now says why, in one line.
warnings.filterwarnings("ignore", message="Failed to obtain server version", category=UserWarning)


def shown_url(url: str) -> str:
    """The URL as it may appear in a message or a log: no user:password, no query string."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL: say only that
        return "<the configured URL>"
    host = parts.netloc.rpartition("@")[2]  # a port that does not parse is shown as given
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def connect_server(url: str, *, api_key: str | None, timeout_s: int) -> QdrantClient:
    """A client for the Qdrant server at `url` whose calls raise StoreErrors (see the module doc)."""
    try:
        with warnings.catch_warnings():
            if _is_compose_service(url):
                warnings.filterwarnings("ignore", message=_INSECURE_KEY_WARNING, category=UserWarning)
            client = QdrantClient(url=url, api_key=api_key, timeout=timeout_s)
    except Exception as exc:  # qdrant-client raises many types for a malformed URL
        reason = str(exc).replace(url, shown_url(url))  # its message may repeat the URL, credentials and all
        raise StoreError(f"cannot use Qdrant URL {shown_url(url)!r} ({reason}): set {URL_SETTING} to the server's "
                         "http(s)://host:port (6333 is Qdrant's REST port), or unset it for the embedded store") from None
    return cast(QdrantClient, _TranslatingClient(client, shown_url(url), timeout_s, api_key is not None,
                                                 names_port=_names_port(url)))


def _is_compose_service(url: str) -> bool:
    """Whether `url` is docker/compose.yaml's Qdrant service: plain http to the host `qdrant`, a name
    only Docker's DNS on the compose network resolves, so the key never crosses a network of its own.
    Every other http:// URL with a key keeps qdrant-client's warning."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme == "http" and parts.hostname == COMPOSE_QDRANT_HOST


def _names_port(url: str) -> bool:
    """Whether the URL says its port (qdrant-client uses 6333 when it does not, even for https://)."""
    try:
        return urlsplit(url if "//" in url else f"//{url}").port is not None
    except ValueError:
        return True  # a port that does not parse: that is the message


class _TranslatingClient:
    """Delegates to a QdrantClient; a failed call raises a StoreError instead of qdrant-client's error."""

    def __init__(self, client: QdrantClient, url: str, timeout_s: int, has_key: bool, names_port: bool = True) -> None:
        self._qdrant = client
        self._url = url
        self._timeout_s = timeout_s
        self._has_key = has_key
        # A URL without a port reaches port 6333, not 80/443: say so where the server was not found.
        self._port_note = "" if names_port else (
            f" (the URL names no port, so port {DEFAULT_PORT} was used: write the port, e.g. https://host:443 "
            "for a server behind a proxy)")

    def __getattr__(self, name: str) -> Any:
        if name == "_qdrant":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        attribute = getattr(self._qdrant, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            except (ResponseHandlingException, UnexpectedResponse, ResourceExhaustedResponse, httpx.HTTPError,
                    json.JSONDecodeError) as exc:  # the last: a 200 that is not JSON (another service)
                translated = self.translate(exc)
                if translated is None:
                    raise
                raise translated from exc

        return call

    def translate(self, exc: Exception) -> StoreError | None:
        """The StoreError that says what went wrong with the server and what to do; None to let it through."""
        translated = self._translate(exc)
        if translated is not None and self._port_note and not isinstance(exc, UnexpectedResponse | ResourceExhaustedResponse):
            return type(translated)(f"{translated}{self._port_note}")  # not found where it was looked for
        return translated

    def _translate(self, exc: Exception) -> StoreError | None:
        url = self._url
        if isinstance(exc, ResourceExhaustedResponse):
            return StoreUnavailableError(f"Qdrant at {url} is over its rate limit ({exc.message}): "
                                         f"retry in {exc.retry_after_s} s")
        if isinstance(exc, UnexpectedResponse):
            return self._status_error(exc)
        source = exc.source if isinstance(exc, ResponseHandlingException) else exc
        if isinstance(source, ValidationError | json.JSONDecodeError):
            return StoreUnavailableError(
                f"the server at {url} does not answer like Qdrant's REST API: set {URL_SETTING} to the Qdrant "
                "server's http(s)://host:port (6333 is Qdrant's REST port, 6334 is gRPC)")
        if isinstance(source, httpx.TimeoutException):
            return StoreUnavailableError(
                f"Qdrant at {url} did not answer within {self._timeout_s} s ({type(source).__name__}): check that the "
                f"server is up and not overloaded, or raise {TIMEOUT_SETTING}")
        if isinstance(source, httpx.ConnectError) and _is_tls_failure(source):
            return StoreUnavailableError(
                f"TLS with Qdrant at {url} failed ({_first_line(source)}): use http:// in {URL_SETTING} if the server "
                "has no TLS, or give it a certificate this machine trusts")
        if isinstance(source, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return StoreError(f"cannot use Qdrant URL {url!r} ({_first_line(source)}): set {URL_SETTING} to the "
                              "server's http(s)://host:port")
        if isinstance(source, httpx.RemoteProtocolError):  # e.g. Qdrant's gRPC port, which speaks only HTTP/2
            return StoreUnavailableError(
                f"the server at {url} broke off the answer ({_first_line(source)}): set {URL_SETTING} to Qdrant's "
                "REST port (6333; 6334 is gRPC), else check the server's log")
        if isinstance(source, httpx.TransportError | OSError):
            return StoreUnavailableError(
                f"cannot reach Qdrant at {url} ({_first_line(source)}): start the server or fix {URL_SETTING} "
                "(unset it to use the embedded store)")
        return None

    def _status_error(self, exc: UnexpectedResponse) -> StoreError | None:
        url, status = self._url, exc.status_code
        said = _server_text(exc.content)
        answer = f"{status} {exc.reason_phrase}".strip() + (f": {said}" if said else "")
        if status in (401, 403):
            fix = (f"set {KEY_SETTING} to the server's key" if not self._has_key else
                   f"{KEY_SETTING} is not this server's key: set it to the one the server was started with")
            return StoreUnavailableError(f"Qdrant at {url} refused the request ({status} {exc.reason_phrase}): {fix}")
        if status is not None and status >= 500:
            return StoreUnavailableError(f"Qdrant at {url} failed ({answer}): check the server's log, then retry")
        if status == 400 and said is not None and "larger than allowed" in said:
            return StoreError(f"Qdrant at {url} refused a write as too large ({said}): set {MAX_REQUEST_SETTING} "
                              "to the server's service.max_request_size_mb")
        if status == 413:  # a reverse proxy's body limit (nginx: client_max_body_size, 1 MB by default)
            return StoreError(f"the server at {url} refused a request as too large ({status} {exc.reason_phrase}): set "
                              f"{MAX_REQUEST_SETTING} to the smallest body limit on the way to Qdrant (a proxy's, "
                              "e.g. nginx's client_max_body_size, or Qdrant's service.max_request_size_mb), "
                              "or raise that limit")
        if status == 404 and _is_qdrant_body(exc.content):
            return None  # Qdrant's own "not found" (a collection): store/server.py reads it
        if status == 404:
            return StoreUnavailableError(
                f"the server at {url} answered {answer}, not as Qdrant's REST API does: set {URL_SETTING} to the "
                "Qdrant server's http(s)://host:port, without a path")
        return StoreError(f"Qdrant at {url} refused the request ({answer})")


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "SSL" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _is_qdrant_body(content: bytes) -> bool:
    try:
        body = json.loads(content)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("status"), dict)


def _server_text(content: bytes) -> str | None:
    """Qdrant's error sentence from a response body, else the body's first line (both shortened)."""
    try:
        body = json.loads(content)
        text = str(body["status"]["error"])
    except (ValueError, KeyError, TypeError):
        text = content.decode("utf-8", "replace").strip().splitlines()[0] if content.strip() else ""
    if not text:
        return None
    return text if len(text) <= _SERVER_TEXT_LIMIT else text[:_SERVER_TEXT_LIMIT - 3] + "..."


__all__ = ["connect_server", "shown_url"]
