"""HTTP limits against hostile clients: bodies that never finish (408), too many unfinished bodies
at once (503 + Retry-After), model work bounded per client (429 + Retry-After); the server stays up."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.requests import Request

from dermground.platform.api import create_app
from dermground.platform.api.errors import ErrorBody
from dermground.platform.api.throttle import ClientWorkLimiter, client_key
from dermground.platform.settings import Settings

READ = "read-key-limits"
DEADLINE_S = 60  # how long a test waits for an answer before it fails


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A real uvicorn server (raw sockets need one) with short body limits and no collection."""
    settings = Settings(home=tmp_path_factory.mktemp("limits"), api_body_timeout_s=1.0, api_max_unfinished_bodies=2)
    # Port 0: bound by the server itself, so no other process can take it between a pick and the bind.
    instance = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE_S
    while not instance.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield instance.servers[0].sockets[0].getsockname()[1]
    instance.should_exit = True
    thread.join(timeout=DEADLINE_S)


def _post(port: int, body: bytes, declared: int | None = None) -> socket.socket:
    """A connection that sends a POST /search with `body` under a Content-Length of `declared`
    (more than len(body): the rest never comes)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.sendall(f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body) if declared is None else declared}\r\n\r\n".encode() + body)
    return sock


def _stalled(port: int) -> socket.socket:
    return _post(port, b'{"k": 3, ', declared=1000)


def _response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body or b"{}")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _health(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        return _response(sock)[0]


def test_a_body_that_never_finishes_gets_408_and_the_server_stays_up(server: int) -> None:
    with _stalled(server) as sock:
        status, _, body = _response(sock)
    assert status == 408
    assert "did not arrive" in ErrorBody.model_validate(body).detail and body["rule"] == "body_timeout"
    assert _health(server) == 200


def test_too_many_unfinished_bodies_get_503_with_retry_after(server: int) -> None:
    held = [_stalled(server), _stalled(server)]
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:  # until the server has taken both stalled bodies in (a few ms)
            with _post(server, b'{"k": 3}') as sock:
                status, headers, body = _response(sock)
            if status == 503 or time.monotonic() > deadline:
                break
        assert status == 503 and headers.get("retry-after") == "1"
        assert "still arriving" in ErrorBody.model_validate(body).detail and body["rule"] == "unfinished_bodies"
        assert [_response(sock)[0] for sock in held] == [408, 408]
    finally:
        for sock in held:
            sock.close()
    with _post(server, b'{"k": 3}') as sock:  # a complete body is served again (no such query: 422)
        status, _, body = _response(sock)
    assert status == 422 and "isic_id" in json.dumps(body)
    assert _health(server) == 200


def test_model_work_is_bounded_per_client_with_429_and_retry_after(search_collection, tiny_backbone) -> None:
    settings = Settings(home=search_collection["home"], api_read_key=READ, api_model_work_per_client=1)
    app = create_app(settings, backbone=tiny_backbone)
    upload = {"file": ("q.jpg", search_collection["records"][0].image_bytes(), "image/jpeg")}
    me = client_key(Request({"type": "http", "headers": [(b"x-api-key", READ.encode())],
                             "client": ("testclient", 50000)}), keyed=True)
    with TestClient(app) as client:
        with app.state.model_work.slot(me):  # this client's one slot is busy
            refused = client.post("/predict", headers={"X-API-Key": READ}, files=upload)
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert ErrorBody.model_validate(refused.json()).rule == "rate_limit"
            assert client.post("/search/upload", headers={"X-API-Key": READ}, files=upload).status_code == 429
            # Work without the model is not bounded, and another client is not slowed by this one.
            by_id = client.post("/search", headers={"X-API-Key": READ},
                                json={"isic_id": search_collection["records"][1].isic_id, "k": 2})
            assert by_id.status_code == 200
            other = ClientWorkLimiter(1)
            assert other.in_flight(me) == 0
        served = client.post("/search/upload", headers={"X-API-Key": READ}, files=upload,
                             data={"request": json.dumps({"k": 2})})
        assert served.status_code == 200, served.text
        assert app.state.model_work.in_flight(me) == 0


def test_client_keys() -> None:
    def request(key: str | None, host: str) -> Request:
        headers = [(b"x-api-key", key.encode())] if key else []
        return Request({"type": "http", "headers": headers, "client": (host, 1)})

    assert client_key(request("a", "1.1.1.1"), keyed=True) == client_key(request("a", "2.2.2.2"), keyed=True)
    assert client_key(request("a", "1.1.1.1"), keyed=True) != client_key(request("b", "1.1.1.1"), keyed=True)
    assert client_key(request("a", "1.1.1.1"), keyed=False) == client_key(request("b", "1.1.1.1"), keyed=False)
    assert READ not in client_key(request(READ, "1.1.1.1"), keyed=True)
    with pytest.raises(ValueError):
        ClientWorkLimiter(0)
