"""Bearer authentication as an ``httpx.Auth`` flow, for the three credential kinds.

* :class:`~cogseg_ml.config.StaticToken`: sent as is; a 401 is final.
* :class:`~cogseg_ml.config.TokenProvider`: called for the first token and again after a 401.
* :class:`~cogseg_ml.config.ClientCredentials`: the token is fetched from the IdP (RFC 6749
  section 4.4), cached, fetched again when less than ``leeway_s`` of its life remains (the
  leeway capped at half the token's lifetime, so that short-lived tokens are still reused), and
  once more after a 401 (the request is then resent once). Concurrent callers share one fetch.

The token fetch does its own I/O, so the flow overrides ``sync_auth_flow`` and
``async_auth_flow`` (as httpx's documentation advises). Tokens and secrets are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator

import httpx
from pydantic import ValidationError as PydanticValidationError

from cogseg_ml.api.retry_policy import RequestNotSent
from cogseg_ml.api.wire_schema import TokenResponse
from cogseg_ml.config import ClientCredentials, Credentials, StaticToken, TokenProvider
from cogseg_ml.errors import ApiUnavailableError, AuthenticationError

__all__ = ["BearerAuth"]

_log = logging.getLogger("cogseg_ml.api.auth")


class TokenEndpointUnavailable(ApiUnavailableError, RequestNotSent):
    """The IdP could not be reached or answered 5xx/429 (the CDF request was not sent)."""


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer ...``; refreshes and resends once on 401 where it can."""

    def __init__(self, credentials: Credentials, *, timeout_s: float = 30.0,
                 verify: bool = True, token_transport: httpx.BaseTransport | None = None,
                 async_token_transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """
        Args:
            credentials: what to authenticate with.
            timeout_s, verify: for the token endpoint's HTTP clients.
            token_transport, async_token_transport: transports for the token endpoint's sync
                and async clients (default: httpx's network transports), e.g. for tests.
            clock: monotonic seconds, used for token expiry (``time.monotonic``).
        """
        self.credentials = credentials
        self._timeout = timeout_s
        self._verify = verify
        self._token_transport = token_transport
        self._async_token_transport = async_token_transport
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lifetime = 0.0
        self._sync_lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None
        self._sync_http: httpx.Client | None = None
        self._async_http: httpx.AsyncClient | None = None
        self.fetch_count = 0

    def __repr__(self) -> str:
        return f"BearerAuth({type(self.credentials).__name__})"

    @property
    def refreshable(self) -> bool:
        """Whether a 401 can be answered with a new token."""
        return not isinstance(self.credentials, StaticToken)

    def _fresh(self) -> bool:
        if self._token is None:
            return False
        if isinstance(self.credentials, ClientCredentials):
            # A leeway longer than the token's life would refetch on every request.
            leeway = min(self.credentials.leeway_s, self._lifetime / 2)
            return self._clock() < self._expires_at - leeway
        return True

    # --- token fetching ------------------------------------------------------------------------
    def _token_form(self, creds: ClientCredentials) -> dict[str, str]:
        form = {"grant_type": "client_credentials", "client_id": creds.client_id,
                "client_secret": creds.client_secret.reveal()}
        if creds.scopes:
            form["scope"] = " ".join(creds.scopes)
        if creds.audience:
            form["audience"] = creds.audience
        return form

    def _accept_token(self, response: httpx.Response) -> str:
        if response.status_code >= 500 or response.status_code == 429:
            raise TokenEndpointUnavailable(
                f"the token endpoint answered HTTP {response.status_code}",
                status_code=response.status_code)
        if response.status_code != 200:
            reason = ""
            try:
                body = response.json()
                if isinstance(body, dict) and isinstance(body.get("error"), str):
                    reason = f": {body['error']}"
            except ValueError:
                pass
            raise AuthenticationError(
                f"the token endpoint refused the client credentials{reason}; check the client "
                "id, secret and token URL", status_code=response.status_code)
        try:
            tok = TokenResponse.model_validate_json(response.content)
        except PydanticValidationError:
            raise AuthenticationError("the token endpoint's answer holds no usable access_token",
                                      status_code=response.status_code) from None
        self._token = tok.access_token
        self._lifetime = tok.expires_in
        self._expires_at = self._clock() + tok.expires_in
        self.fetch_count += 1
        _log.debug("obtained an access token valid for %.0f s", tok.expires_in)
        return tok.access_token

    def _sync_fetch(self) -> str:
        creds = self.credentials
        if isinstance(creds, StaticToken):
            return creds.token.reveal()
        if isinstance(creds, TokenProvider):
            self._token = creds.provider()
            self.fetch_count += 1
            return self._token
        if self._sync_http is None:
            self._sync_http = httpx.Client(timeout=self._timeout, verify=self._verify,
                                           transport=self._token_transport)
        try:
            resp = self._sync_http.post(creds.token_url, data=self._token_form(creds))
        except httpx.TransportError as exc:
            raise TokenEndpointUnavailable(
                f"the token endpoint cannot be reached ({type(exc).__name__})") from None
        return self._accept_token(resp)

    async def _async_fetch(self) -> str:
        creds = self.credentials
        if isinstance(creds, StaticToken):
            return creds.token.reveal()
        if isinstance(creds, TokenProvider):
            self._token = await asyncio.to_thread(creds.provider)
            self.fetch_count += 1
            return self._token
        if self._async_http is None:
            self._async_http = httpx.AsyncClient(timeout=self._timeout, verify=self._verify,
                                                 transport=self._async_token_transport)
        try:
            resp = await self._async_http.post(creds.token_url, data=self._token_form(creds))
        except httpx.TransportError as exc:
            raise TokenEndpointUnavailable(
                f"the token endpoint cannot be reached ({type(exc).__name__})") from None
        return self._accept_token(resp)

    def sync_token(self, stale: str | None = None) -> str:
        """A valid token; with ``stale``, a different one than that (after a 401)."""
        with self._sync_lock:
            if self._fresh() and self._token != stale:
                assert self._token is not None
                return self._token
            return self._sync_fetch()

    async def async_token(self, stale: str | None = None) -> str:
        """Async twin of :meth:`sync_token`."""
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            if self._fresh() and self._token != stale:
                assert self._token is not None
                return self._token
            return await self._async_fetch()

    # --- httpx flows ---------------------------------------------------------------------------
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response,
                                                                  None]:
        token = self.sync_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and self.refreshable:
            _log.debug("401 received; fetching a new token and resending once")
            request.headers["Authorization"] = f"Bearer {self.sync_token(stale=token)}"
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request,
                                                                               httpx.Response]:
        token = await self.async_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and self.refreshable:
            _log.debug("401 received; fetching a new token and resending once")
            request.headers["Authorization"] = f"Bearer {await self.async_token(stale=token)}"
            yield request

    def close(self) -> None:
        """Close the token endpoint's connection pool (sync side)."""
        if self._sync_http is not None:
            self._sync_http.close()
            self._sync_http = None

    async def aclose(self) -> None:
        """Close the token endpoint's connection pools."""
        self.close()
        if self._async_http is not None:
            await self._async_http.aclose()
            self._async_http = None
