"""A Qdrant server that is down, slow, refusing the key or not Qdrant at all: every path says so in
one StoreError naming the URL and the setting to fix (CLI: one line, exit 1; API: 503, never 500).

The "servers" are real sockets: a closed port, and a tiny HTTP server started here that answers
like a broken or foreign service (a stand-in for an external server, not a mock of our code).
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from dermground.platform.api import create_app
from dermground.platform.cli import cli
from dermground.platform.settings import Settings
from dermground.platform.store import StoreError, StoreUnavailableError, open_collections, open_store
from dermground.platform.store.server import ServerStore
from dermground.platform.store.server_client import COMPOSE_QDRANT_HOST, connect_server

API_KEY = "qdrant-key-never-shown-7f3a"
READ = "read-key-failures"
# What each stand-in answers: (status, body). "hang" never answers within the client's timeout.
ANSWERS: dict[str, tuple[int, bytes]] = {
    "500": (500, json.dumps({"status": {"error": "Service internal error: disk full"}, "time": 0}).encode()),
    "503": (503, b"upstream connect error"),
    "401": (401, b"Must provide an API key or an Authorization bearer token"),
    "403": (403, b"Invalid API key or JWT"),
    "not_qdrant": (200, b"<html><body>welcome to nginx</body></html>"),
    "wrong_path": (404, b"<html>404 page not found</html>"),
}


class _StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.mode = mode
        self.release = threading.Event()  # ends the "hang" answers at teardown

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Answer(http.server.BaseHTTPRequestHandler):
    server: _StandIn

    def _answer(self) -> None:
        if self.server.mode == "hang":
            self.server.release.wait(60)  # far past the client's 1 s timeout; released at teardown
            return
        status, body = ANSWERS[self.server.mode]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def stand_in(request: pytest.FixtureRequest) -> Iterator[_StandIn]:
    server = _StandIn(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


def _closed_port_url() -> str:
    with socket.socket() as sock:  # bound then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# How long a client waits for a stand-in that answers: long, because the stand-in is a thread of this
# busy process (with 1 s, a starved answer read as "did not answer within 1 s" and named the timeout
# setting instead of the one under test). Only the "hang" stand-in is meant to hit a timeout: 1 s.
ANSWER_TIMEOUT_S = 60


def _settings(home: Path, url: str, key: str | None = API_KEY, timeout_s: int = ANSWER_TIMEOUT_S) -> Settings:
    return Settings(home=home, qdrant_url=url, qdrant_api_key=key, qdrant_timeout_s=timeout_s, api_read_key=READ)


def _assert_says_what_to_do(message: str, url: str, setting: str) -> None:
    assert url in message, message
    assert setting in message, message
    assert API_KEY not in message, "the API key must never be printed"
    assert "\n" not in message, message


# (stand-in mode, the setting the message must name)
CASES = [("500", "log"), ("503", "log"), ("401", "DERMGROUND_QDRANT_API_KEY"), ("403", "DERMGROUND_QDRANT_API_KEY"),
         ("hang", "DERMGROUND_QDRANT_TIMEOUT_S"), ("not_qdrant", "DERMGROUND_QDRANT_URL"),
         ("wrong_path", "DERMGROUND_QDRANT_URL")]


@pytest.mark.parametrize(("stand_in", "setting"), CASES, indirect=["stand_in"], ids=[c[0] for c in CASES])
def test_a_failing_server_is_a_store_error_naming_url_and_setting(stand_in: _StandIn, setting: str,
                                                                  tmp_path: Path) -> None:
    settings = _settings(tmp_path, stand_in.url, timeout_s=1 if stand_in.mode == "hang" else ANSWER_TIMEOUT_S)
    with pytest.raises(StoreUnavailableError) as raised:
        open_store(settings, "lesions")
    _assert_says_what_to_do(str(raised.value), stand_in.url, setting)
    with open_collections(settings) as cols, pytest.raises(StoreUnavailableError) as listed:
        cols.list()
    _assert_says_what_to_do(str(listed.value), stand_in.url, setting)


def test_a_closed_port_or_a_tls_mismatch_says_which(tmp_path: Path) -> None:
    url = _closed_port_url()
    with pytest.raises(StoreUnavailableError) as refused:
        open_store(_settings(tmp_path, url), "lesions")
    _assert_says_what_to_do(str(refused.value), url, "DERMGROUND_QDRANT_URL")
    assert "refused" in str(refused.value).lower()

    plain = _StandIn("500")  # https:// to a plain-HTTP server: the TLS handshake fails
    thread = threading.Thread(target=plain.serve_forever, daemon=True)
    thread.start()
    try:
        tls_url = plain.url.replace("http://", "https://")
        with pytest.raises(StoreUnavailableError) as tls:
            open_store(_settings(tmp_path, tls_url), "lesions")
        _assert_says_what_to_do(str(tls.value), tls_url, "http://")
        assert "TLS" in str(tls.value)
    finally:
        plain.shutdown()
        plain.server_close()


def test_the_grpc_port_is_named(tmp_path: Path) -> None:
    import grpc  # qdrant-client's own dependency: a real gRPC server, as on Qdrant's port 6334

    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(StoreUnavailableError) as raised:
            open_store(_settings(tmp_path, url), "lesions")
        _assert_says_what_to_do(str(raised.value), url, "REST port (6333")
    finally:
        server.stop(None)


def test_a_url_without_a_port_says_which_port_was_tried(tmp_path: Path) -> None:
    # qdrant-client adds :6333 to a URL without a port, even https:// behind a proxy on 443.
    url = "https://127.0.0.2"  # nothing listens on 127.0.0.2:6333
    with pytest.raises(StoreUnavailableError) as raised:
        open_store(_settings(tmp_path, url), "lesions")
    assert "port 6333 was used" in str(raised.value) and "https://host:443" in str(raised.value)
    _assert_says_what_to_do(str(raised.value), url, "DERMGROUND_QDRANT_URL")
    with pytest.raises(StoreUnavailableError) as with_port:
        open_store(_settings(tmp_path, _closed_port_url()), "lesions")
    assert "6333" not in str(with_port.value)


@pytest.mark.parametrize("stand_in", ["401"], indirect=True)
def test_a_missing_key_is_named_as_missing(stand_in: _StandIn, tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="set DERMGROUND_QDRANT_API_KEY to the server's key"):
        open_store(_settings(tmp_path, stand_in.url, key=None), "lesions")


@pytest.mark.parametrize("port", ["", ":99999"], ids=["closed port", "port out of range"])
def test_credentials_in_the_url_are_not_shown(tmp_path: Path, port: str) -> None:
    url = _closed_port_url().replace("http://", "http://admin:hunter2@")
    url = url.rpartition(":")[0] + port if port else url
    with pytest.raises(StoreError) as raised:
        open_store(_settings(tmp_path, url), "lesions")
    assert "hunter2" not in str(raised.value) and "127.0.0.1" in str(raised.value)
    assert "DERMGROUND_QDRANT_URL" in str(raised.value)


@pytest.mark.parametrize("stand_in", ["401"], indirect=True)
def test_cli_says_one_line_and_exits_non_zero(stand_in: _StandIn, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DERMGROUND_QDRANT_URL", stand_in.url)
    monkeypatch.setenv("DERMGROUND_QDRANT_API_KEY", API_KEY)
    for command in (["collections", "list"], ["check"], ["search", "--id", "ISIC_0000001"]):
        result = CliRunner().invoke(cli, ["--home", str(tmp_path), *command])
        assert result.exit_code == 1, (command, result.output)
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
        lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and stand_in.url in lines[0] and "DERMGROUND_QDRANT_API_KEY" in lines[0], result.output
        assert API_KEY not in result.output


@pytest.mark.parametrize("stand_in", ["500", "401"], indirect=True)
def test_api_answers_503_with_a_reason_never_500(stand_in: _StandIn, tmp_path: Path) -> None:
    settings = _settings(tmp_path, stand_in.url)
    store = ServerStore("lesions", stand_in.url, api_key=API_KEY, timeout_s=1)  # opening sends no request
    requests = [("GET", "/health", None), ("GET", "/examples", None), ("GET", "/images/ISIC_0000001", None),
                ("POST", "/search", {"isic_id": "ISIC_0000001"}), ("GET", "/collections", None)]
    try:
        with TestClient(create_app(settings, store=store), headers={"X-API-Key": READ},
                        raise_server_exceptions=False) as api:
            for method, path, body in requests:
                response = api.request(method, path, json=body)
                assert response.status_code == 503, (path, response.status_code, response.text)
                detail = response.json()["detail"]
                assert stand_in.url in detail and API_KEY not in detail, (path, detail)
    finally:
        store.close()


def test_the_insecure_key_warning_is_silenced_for_the_compose_service_only() -> None:
    """docker/compose.yaml reaches Qdrant as http://qdrant:6333 on the compose network: the key never
    leaves that network, and qdrant-client's warning would show on every command. Any other http://
    URL with a key keeps the warning."""
    compose = yaml.safe_load((Path(__file__).parents[1] / "docker" / "compose.yaml").read_text())
    compose_url = compose["x-dermground-env"]["DERMGROUND_QDRANT_URL"]
    assert urlsplit(compose_url).hostname == COMPOSE_QDRANT_HOST
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        connect_server(compose_url, api_key=API_KEY, timeout_s=1).close()
        assert not [w for w in shown if "insecure connection" in str(w.message)]
        connect_server(_closed_port_url(), api_key=API_KEY, timeout_s=1).close()
        assert [w for w in shown if "insecure connection" in str(w.message)]
