"""Request guards of the segment service: body size limit and per-token rate limit.

Both are ASGI middleware in front of the routes. Tokens are never kept: the rate limiter
counts by a SHA-256 of the token.
"""

from __future__ import annotations

import hashlib
import math
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cogseg_ml.service.problems import ApiProblem, error_response

__all__ = ["BodyLimit", "RateLimit", "bearer_token", "token_hash"]


def bearer_token(headers: list[tuple[bytes, bytes]] | dict[str, str]) -> str | None:
    """The bearer token of a request's headers, or ``None``."""
    if isinstance(headers, dict):
        raw = headers.get("authorization", "")
    else:
        raw = next((v.decode("latin-1") for k, v in headers if k.lower() == b"authorization"),
                   "")
    scheme, _, token = raw.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_hash(token: str) -> str:
    """What the service remembers of a token (rate limits, access checks)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _gunzip(body: bytes, max_bytes: int) -> bytes | None:
    """A gzip body decompressed, ``None`` past ``max_bytes``; ValueError when not gzip."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise ValueError(str(exc)) from None
    if len(out) > max_bytes or d.unconsumed_tail:
        return None
    return out


class BodyLimit:
    """413 for a request body over ``max_bytes`` (read before the route sees it).

    A ``Content-Encoding: gzip`` body (what cognite-sdk sends by default, and CDF accepts) is
    decompressed here, its limit applying to the decompressed size; the routes see plain JSON.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = ApiProblem(413, f"Request body larger than {self.max_bytes} bytes")
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                await error_response(too_big)(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await error_response(too_big)(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        encoding = next((v.decode("latin-1").strip().lower() for k, v in scope["headers"]
                         if k == b"content-encoding"), "")
        if encoding == "gzip":
            try:
                plain = _gunzip(body, self.max_bytes)
            except ValueError as exc:
                await error_response(ApiProblem(400, f"Invalid gzip request body: {exc}"))(
                    scope, receive, send)
                return
            if plain is None:
                await error_response(too_big)(scope, receive, send)
                return
            body = plain
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope["headers"]
                                if k not in (b"content-encoding", b"content-length")] + [
                (b"content-length", str(len(body)).encode())]
        elif encoding not in ("", "identity"):
            await error_response(ApiProblem(415, f"Unsupported Content-Encoding {encoding!r}: "
                                                 "send gzip or none"))(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RateLimit:
    """Per-token token bucket on ``/api/`` paths: ``rate`` requests a second, bursts of
    ``burst``; over it a 429 with ``Retry-After`` (whole seconds, at least 1).

    Args:
        on_limited: called on each 429 (metrics).
        clock: seconds (monotonic), injectable for tests.
    """

    def __init__(self, app: ASGIApp, rate: float, burst: int, *,
                 on_limited: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic, max_tokens: int = 10_000) -> None:
        self.app = app
        self.rate = rate
        self.burst = float(burst)
        self.on_limited = on_limited
        self.clock = clock
        self.max_tokens = max_tokens
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait_s(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0 when allowed, else seconds to wait."""
        now = self.clock()
        level, last = self._buckets.get(key, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        if level >= 1.0:
            self._buckets[key] = (level - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (level, now)
            wait = (1.0 - level) / self.rate
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_tokens:
            self._buckets.popitem(last=False)
        return wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/") or self.rate <= 0:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        key = token_hash(token) if token else "anonymous"
        wait = self.wait_s(key)
        if wait > 0:
            self.on_limited()
            problem = ApiProblem(429, "Too many requests: this token's rate limit is "
                                      f"{self.rate:g} requests a second",
                                 headers={"Retry-After": str(max(1, math.ceil(wait)))})
            await error_response(problem)(scope, receive, send)
            return
        await self.app(scope, receive, send)
