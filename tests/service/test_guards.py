"""The service's request guards on a one-route app: body limit (gzip too) and per-token rate
limit answered with 429 and Retry-After."""

from __future__ import annotations

import gzip

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from cogseg_ml.service.guards import BodyLimit, RateLimit


async def echo(request: Request) -> Response:
    return JSONResponse({"n": len(await request.body()),
                         "encoding": request.headers.get("content-encoding")})


def app(limit: int = 100, rate: float = 1.0, burst: int = 2,
        clock: list[float] | None = None) -> TestClient:
    now = clock if clock is not None else [0.0]
    inner = Starlette(routes=[Route("/api/x", echo, methods=["POST"])])
    return TestClient(BodyLimit(RateLimit(inner, rate, burst, clock=lambda: now[0]), limit))


def test_bodies_over_the_limit_are_413_gzip_counted_decompressed() -> None:
    client = app(limit=100, rate=0)
    assert client.post("/api/x", content=b"x" * 100).json()["n"] == 100
    big = client.post("/api/x", content=b"x" * 101)
    assert big.status_code == 413 and big.json()["error"]["code"] == 413
    small = client.post("/api/x", content=gzip.compress(b"y" * 90),
                        headers={"content-encoding": "gzip"})
    assert small.json() == {"n": 90, "encoding": None}
    bomb = client.post("/api/x", content=gzip.compress(b"y" * 10_000),
                       headers={"content-encoding": "gzip"})
    assert bomb.status_code == 413
    bad = client.post("/api/x", content=b"not gzip", headers={"content-encoding": "gzip"})
    assert bad.status_code == 400 and "gzip" in bad.json()["error"]["message"]


def test_each_token_has_its_own_rate_and_429_says_when_to_retry() -> None:
    clock = [0.0]
    client = app(rate=0.5, burst=2, clock=clock)
    a = {"Authorization": "Bearer token-a"}
    b = {"Authorization": "Bearer token-b"}
    assert [client.post("/api/x", headers=a).status_code for _ in range(2)] == [200, 200]
    limited = client.post("/api/x", headers=a)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"  # one request back at 0.5/s
    assert client.post("/api/x", headers=b).status_code == 200
    clock[0] = 2.0
    assert client.post("/api/x", headers=a).status_code == 200
