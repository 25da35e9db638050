"""Client-credentials tokens shorter-lived than the leeway: cached for half their life.

The token endpoint is an ``httpx.MockTransport`` and time is an injected clock: no sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import pytest

from cogseg_ml.api.auth import BearerAuth
from cogseg_ml.config import ClientCredentials

SECRET = "s3cr3t-never-shown"
TOKEN_URL = "https://idp.example.com/oauth2/token"


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """Issues ``tok-1``, ``tok-2``, ... valid for ``expires_in`` seconds; counts requests."""

    def __init__(self, expires_in: float) -> None:
        self.expires_in = expires_in
        self.requests = 0
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        assert form["grant_type"] == ["client_credentials"]
        assert form["client_secret"] == [SECRET]
        self.requests += 1
        return httpx.Response(200, json={"access_token": f"tok-{self.requests}",
                                         "token_type": "Bearer",
                                         "expires_in": self.expires_in})


def make_auth(expires_in: float, leeway_s: float = 30.0) -> tuple[BearerAuth, TokenEndpoint,
                                                                   Clock]:
    endpoint, clock = TokenEndpoint(expires_in), Clock()
    creds = ClientCredentials(TOKEN_URL, "client-id", SECRET, leeway_s=leeway_s)  # type: ignore[arg-type]
    auth = BearerAuth(creds, token_transport=endpoint.transport,
                      async_token_transport=endpoint.transport, clock=clock)
    return auth, endpoint, clock


def _sync(auth: BearerAuth) -> Callable[[], str]:
    return auth.sync_token


def _async(auth: BearerAuth) -> Callable[[], str]:
    return lambda: asyncio.run(auth.async_token())


@pytest.mark.parametrize("flavour", [_sync, _async], ids=["sync", "async"])
def test_short_lived_token_is_reused_for_half_its_life(
        flavour: Callable[[BearerAuth], Callable[[], str]]) -> None:
    auth, endpoint, clock = make_auth(expires_in=4)  # 4 s tokens, 30 s default leeway
    token = flavour(auth)
    start = clock.now
    assert [token() for _ in range(20)] == ["tok-1"] * 20
    for dt in (0.5, 1.0, 1.5, 1.99):
        clock.now = start + dt
        assert token() == "tok-1"
    assert endpoint.requests == 1 and auth.fetch_count == 1
    clock.now = start + 2.01  # past half the lifetime: a new token
    assert token() == "tok-2"
    assert [token() for _ in range(10)] == ["tok-2"] * 10
    assert endpoint.requests == 2
    clock.now = start + 3.9
    assert token() == "tok-2"
    clock.now = start + 4.02
    assert token() == "tok-3"
    assert endpoint.requests == 3 and auth.fetch_count == 3


@pytest.mark.parametrize("flavour", [_sync, _async], ids=["sync", "async"])
def test_leeway_below_half_the_lifetime_is_kept(
        flavour: Callable[[BearerAuth], Callable[[], str]]) -> None:
    auth, endpoint, clock = make_auth(expires_in=3600)  # the usual hour, 30 s leeway
    token = flavour(auth)
    start = clock.now
    assert token() == "tok-1"
    clock.now = start + 3569
    assert token() == "tok-1"
    clock.now = start + 3571
    assert token() == "tok-2"
    assert endpoint.requests == 2


def test_stale_token_after_401_is_still_replaced_within_its_life() -> None:
    auth, endpoint, _ = make_auth(expires_in=4)
    assert auth.sync_token() == "tok-1"
    assert auth.sync_token(stale="tok-1") == "tok-2"
    assert auth.sync_token() == "tok-2"
    assert endpoint.requests == 2


def test_requests_through_the_flow_share_one_token_per_half_life() -> None:
    auth, endpoint, clock = make_auth(expires_in=4)
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200, json={})

    with httpx.Client(transport=httpx.MockTransport(api), auth=auth) as http:
        start = clock.now
        for i in range(84):
            clock.now = start + i * 0.05  # 84 requests over 4.15 s
            http.get("https://api.example.com/x")
    assert len(seen) == 84
    assert endpoint.requests == 3  # at 0 s, past 2 s and past 4 s: not one per request
    assert seen[0] == "Bearer tok-1" and seen[-1] == "Bearer tok-3"


def test_tokens_and_secret_stay_out_of_logs_and_repr(caplog: pytest.LogCaptureFixture) -> None:
    auth, _, clock = make_auth(expires_in=4)
    with caplog.at_level(logging.DEBUG, logger="cogseg_ml"):
        auth.sync_token()
        clock.now += 3
        auth.sync_token()
    text = caplog.text + repr(auth) + str(auth)
    assert "obtained an access token" in caplog.text
    for secret in (SECRET, "tok-1", "tok-2"):
        assert secret not in text
