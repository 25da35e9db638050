"""An httpx transport that counts what the client really sent, and helpers for dead addresses."""

from __future__ import annotations

import socket
import threading
from collections import Counter

import httpx


class CountingTransport(httpx.AsyncBaseTransport):
    """The network transport, counting requests (each one a connection attempt when nothing
    listens) per ``host:port`` and how each ended (a status or an exception's name)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: Counter[str] = Counter()
        self.ended: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        where = f"{request.url.host}:{request.url.port}"
        with self._lock:
            self.sent[where] += 1
        try:
            resp = await self.inner.handle_async_request(request)
        except Exception as exc:
            with self._lock:
                self.ended[(where, type(exc).__name__)] += 1
            raise
        with self._lock:
            self.ended[(where, str(resp.status_code))] += 1
        return resp

    def failed_connects(self, where: str) -> int:
        """Requests to ``where`` that ended because no connection could be made."""
        return self.ended[(where, "ConnectError")] + self.ended[(where, "ConnectTimeout")]

    async def aclose(self) -> None:
        await self.inner.aclose()


def dead_port() -> int:
    """A loopback port nothing listens on (bound once to get it, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
