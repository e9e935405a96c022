"""Model work bounded per client: beyond a few uploads in flight, 429 with Retry-After.

The model runs one request at a time (EmbedderProvider), so one client with many uploads in flight
would make every other client wait behind it. A client is its API key when keys are configured
(the key is what identifies a caller), else its address.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Request

from dermground.platform.api.errors import RefusedError
from dermground.platform.api.security import API_KEY_HEADER

RULE_RATE = "rate_limit"


def client_key(request: Request, keyed: bool) -> str:
    """Who is asking: a digest of the API key when keys are configured, else the client's address."""
    given = request.headers.get(API_KEY_HEADER)
    if keyed and given:
        return "key:" + hashlib.sha256(given.encode("utf-8")).hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "unknown")


class ClientWorkLimiter:
    """At most `per_client` slots of model work per client; `slot()` refuses the next with a 429."""

    def __init__(self, per_client: int) -> None:
        if per_client < 1:
            raise ValueError(f"per_client must be at least 1, got {per_client}")
        self.per_client = per_client
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()
        self._typical_s = 1.0  # moving average of a slot's duration: the Retry-After estimate

    def in_flight(self, client: str) -> int:
        with self._lock:
            return self._in_flight.get(client, 0)

    def retry_after_s(self) -> int:
        """Whole seconds until a slot is likely free (at least 1)."""
        return max(1, math.ceil(self._typical_s))

    @contextmanager
    def slot(self, client: str) -> Iterator[None]:
        """Hold one slot of `client` for the block; RefusedError(429) when all its slots are taken."""
        with self._lock:
            held = self._in_flight.get(client, 0)
            if held >= self.per_client:
                wait = self.retry_after_s()
                raise RefusedError(429, f"this client already has {held} uploads in the model (the limit is "
                                        f"{self.per_client}): retry after {wait} s",
                                   rule=RULE_RATE, headers={"Retry-After": str(wait)})
            self._in_flight[client] = held + 1
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            with self._lock:
                left = self._in_flight[client] - 1
                if left:
                    self._in_flight[client] = left
                else:
                    del self._in_flight[client]
                self._typical_s = 0.8 * self._typical_s + 0.2 * seconds
