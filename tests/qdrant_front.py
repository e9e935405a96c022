"""A stand-in Qdrant server for tests: Qdrant's REST API, served over HTTP on qdrant-client's local engine.

qdrant-client's local mode searches exactly and keeps no quantization config and no payload
indexes, so what a real server records about a collection (and what a search must read back
from it) cannot be seen there. This front answers the REST calls the server backend makes,
keeps what a real server keeps (a collection's quantization config, its payload indexes), and
records every request and the size of every answer. It stands in for the external server; none
of our code is replaced.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from qdrant_client import QdrantClient, models


_Server = TypeVar("_Server", bound=http.server.HTTPServer)


@dataclass
class Request:
    """One request the front answered: method, path (no query string), JSON body, its size, answer size."""

    method: str
    path: str
    body: dict[str, Any]
    body_bytes: int = 0
    answer_bytes: int = 0


class QdrantFront(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.engine = QdrantClient(location=":memory:")
        self.quantization: dict[str, dict[str, Any]] = {}  # collection -> its quantization_config (JSON)
        self.indexes: dict[str, dict[str, str]] = {}  # collection -> field -> index type
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        # Set: a reverse proxy's body limit in front of the server (nginx's client_max_body_size),
        # answered as nginx does, with 413 and an HTML page.
        self.proxy_body_limit: int | None = None
        # Set: the server's own request-size limit (service.max_request_size_mb), answered as Qdrant
        # does, with 400 "Payload error"; a refused request is not recorded.
        self.body_limit: int | None = None
        # False: a server older than Qdrant 1.16, which ignores collection metadata in requests.
        self.keeps_metadata = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def sent(self, method: str, suffix: str) -> list[Request]:
        """The requests of one kind so far, e.g. sent("POST", "/points/query")."""
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def collection_info(self, name: str) -> dict[str, Any]:
        info = self.engine.get_collection(name).model_dump(mode="json", exclude_none=True)
        if name in self.quantization:
            info["config"]["quantization_config"] = self.quantization[name]
        info["payload_schema"] = {field: {"data_type": kind, "points": 0}
                                  for field, kind in self.indexes.get(name, {}).items()}
        return info


def _model(cls: Any, body: dict[str, Any]) -> Any:
    return cls.model_validate(body)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: QdrantFront

    def _send(self, status: int, body: dict[str, Any]) -> int:
        data = json.dumps({**body, "time": 0.0}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return len(data)

    def _handle(self) -> None:
        path = self.path.split("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.server.proxy_body_limit is not None and length > self.server.proxy_body_limit:
            page = b"<html><head><title>413 Request Entity Too Large</title></head><body>nginx</body></html>"
            self.send_response(413)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if self.server.body_limit is not None and length > self.server.body_limit:  # Qdrant's answer, word for word
            self._send(400, {"status": {"error": f"Payload error: JSON payload ({length} bytes) is larger than "
                                                 f"allowed (limit: {self.server.body_limit} bytes)."}})
            return
        body = json.loads(raw) if length else {}
        request = Request(self.command, path, body, body_bytes=length)
        with self.server.lock:
            self.server.requests.append(request)
            try:
                result = self._route(self.command, path, body)
            except LookupError as exc:
                request.answer_bytes = self._send(404, {"status": {"error": f"Not found: {exc}"}})
                return
            except (ValueError, KeyError, TypeError) as exc:
                request.answer_bytes = self._send(400, {"status": {"error": f"Bad request: {exc}"}})
                return
            request.answer_bytes = self._send(200, {"result": result, "status": "ok"})

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

    def _route(self, method: str, path: str, body: dict[str, Any]) -> Any:  # noqa: PLR0911, C901 - one branch a route
        front, engine = self.server, self.server.engine
        if (method, path) == ("GET", "/collections"):
            return engine.get_collections().model_dump(mode="json")
        if (method, path) == ("GET", "/aliases"):
            return engine.get_aliases().model_dump(mode="json")
        if (method, path) == ("POST", "/collections/aliases"):
            operations = _model(models.ChangeAliasesOperation, body).actions
            return engine.update_collection_aliases(operations)
        match = re.fullmatch(r"/collections/([^/]+)(/.*)?", path)
        if match is None:
            raise LookupError(path)
        name, rest = match[1], match[2] or ""
        if rest == "/exists":
            return {"exists": engine.collection_exists(name)}
        if not engine.collection_exists(name) and not (method == "PUT" and rest == ""):
            raise LookupError(f"Collection `{name}` doesn't exist!")
        if rest == "" and method == "GET":
            return front.collection_info(name)
        if rest == "" and method == "PUT":
            create = _model(models.CreateCollection, body)
            engine.create_collection(name, vectors_config=create.vectors,
                                     metadata=create.metadata if front.keeps_metadata else None)
            if create.quantization_config is not None:
                front.quantization[name] = create.quantization_config.model_dump(mode="json", exclude_none=True)
            return True
        if rest == "" and method == "PATCH":
            if front.keeps_metadata:
                engine.update_collection(name, metadata=_model(models.UpdateCollection, body).metadata)
            return True
        if rest == "" and method == "DELETE":
            front.quantization.pop(name, None)
            front.indexes.pop(name, None)
            return engine.delete_collection(name)
        if rest == "/index" and method == "PUT":
            index = _model(models.CreateFieldIndex, body)
            front.indexes.setdefault(name, {})[index.field_name] = str(index.field_schema.value)
            return {"operation_id": 0, "status": "completed"}
        if rest == "/points" and method == "PUT":
            engine.upsert(name, points=_model(models.PointsList, body).points)
            return {"operation_id": 0, "status": "completed"}
        if rest == "/points/delete":
            engine.delete(name, points_selector=_model(models.PointIdsList, body))
            return {"operation_id": 0, "status": "completed"}
        if rest == "/points/payload":
            asked = _model(models.SetPayload, body)
            engine.set_payload(name, payload=asked.payload, points=asked.points)
            return {"operation_id": 0, "status": "completed"}
        if rest == "/points/vectors":
            engine.update_vectors(name, points=_model(models.UpdateVectors, body).points)
            return {"operation_id": 0, "status": "completed"}
        if rest == "/points" and method == "POST":
            asked = _model(models.PointRequest, body)
            records = engine.retrieve(name, ids=asked.ids, with_payload=asked.with_payload,
                                      with_vectors=asked.with_vector)
            return [r.model_dump(mode="json") for r in records]
        if rest == "/points/count":
            asked = _model(models.CountRequest, body)
            return engine.count(name, count_filter=asked.filter, exact=True).model_dump(mode="json")
        if rest == "/points/scroll":
            asked = _model(models.ScrollRequest, body)
            records, offset = engine.scroll(name, scroll_filter=asked.filter, limit=asked.limit or 10,
                                            offset=asked.offset, with_payload=asked.with_payload,
                                            with_vectors=asked.with_vector)
            return {"points": [r.model_dump(mode="json") for r in records], "next_page_offset": offset}
        if rest == "/points/query":
            asked = _model(models.QueryRequest, body)
            query = asked.query.nearest if isinstance(asked.query, models.NearestQuery) else asked.query
            prefetch = asked.prefetch
            if isinstance(prefetch, models.Prefetch) and isinstance(prefetch.query, models.NearestQuery):
                prefetch = prefetch.model_copy(update={"query": prefetch.query.nearest})
            response = engine.query_points(name, query=query, using=asked.using, prefetch=prefetch,
                                           query_filter=asked.filter, limit=asked.limit or 10,
                                           with_payload=asked.with_payload, with_vectors=asked.with_vector)
            return response.model_dump(mode="json")
        raise LookupError(f"{method} {path}")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@contextmanager
def served(server: _Server) -> Iterator[_Server]:
    """`server` (any stand-in HTTP server of the tests) answering on its own thread; shut down on exit."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def qdrant_front() -> Iterator[QdrantFront]:
    """A running front; shut down on exit."""
    with served(QdrantFront()) as front:
        yield front
