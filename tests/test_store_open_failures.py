"""open_store whose first request fails (a wrong API key): it closes the client it made instead of
leaving it, and its connection pool, to whoever keeps the error.

The server is a real socket answering like Qdrant with a wrong key (401), over HTTP/1.1 with
keep-alive as Qdrant's server does.
"""

from __future__ import annotations

import gc
import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from dermground.platform.settings import Settings
from dermground.platform.store import StoreUnavailableError, open_store
from tests.qdrant_front import served


class _KeyRefusingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Refuse)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Refuse(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the connection lives until the client closes it
    server: _KeyRefusingServer

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"Must provide an API key or an Authorization bearer token"
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def refusing_server() -> Iterator[_KeyRefusingServer]:
    with served(_KeyRefusingServer()) as server:
        yield server


def test_open_store_that_cannot_resolve_its_alias_closes_its_client(refusing_server, tmp_path) -> None:
    settings = Settings(home=tmp_path, qdrant_url=refusing_server.url, qdrant_api_key="wrong-key", qdrant_timeout_s=5)
    before = {id(c) for c in gc.get_objects() if isinstance(c, httpx.Client)}
    with pytest.warns(UserWarning), pytest.raises(StoreUnavailableError) as raised:
        open_store(settings, "lesions")
    assert "DERMGROUND_QDRANT_API_KEY" in str(raised.value)
    # The error (kept here, as a caller's log keeps it) holds open_store's frame and the store in it:
    # its client (a connection pool, sockets on a keep-alive server) must be closed, not left to the GC.
    # qdrant-client's version check runs on a thread of its own with a short-lived client of its own
    # (httpx.get): let it finish (its request has the 5 s timeout) so that only the store's client is judged.
    for thread in threading.enumerate():
        if getattr(getattr(thread, "_target", None), "__name__", "") == "_check_compatibility":
            thread.join(30)
    made = [c for c in gc.get_objects() if isinstance(c, httpx.Client) and id(c) not in before]
    assert made, "open_store made a client"
    assert all(c.is_closed for c in made), "open_store left its Qdrant client open behind the error"
