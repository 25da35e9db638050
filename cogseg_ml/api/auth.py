"""Bearer authentication as an ``httpx.Auth`` flow, for the three credential kinds.

* :class:`~cogseg_ml.config.StaticToken`: sent as is; a 401 is final.
* :class:`~cogseg_ml.config.TokenProvider`: called for the first token and again after a 401.
* :class:`~cogseg_ml.config.ClientCredentials`: the token is fetched from the IdP (RFC 6749
  section 4.4), cached, fetched again when less than ``leeway_s`` of its life remains (the
  leeway capped at half the token's lifetime, so that short-lived tokens are still reused), and
  once more after a 401 (the request is then resent once). Concurrent callers share one fetch.

The token fetch does its own I/O, so the flow overrides ``sync_auth_flow`` and
``async_auth_flow`` (as httpx's documentation advises). Tokens and secrets are never logged.

What goes wrong is said plainly: a token endpoint that cannot be reached or answers 5xx is
:class:`~cogseg_ml.errors.TokenEndpointUnavailable` naming its host; one that refuses the client
credentials is an :class:`~cogseg_ml.errors.AuthenticationError` naming the client id (never the
secret); a token provider that raises, or returns something that is not a token, is an
``AuthenticationError`` carrying its message, before any request is sent. With a
:class:`~cogseg_ml.api.health.SessionHealth`, an unreachable token endpoint and refused
credentials are recognized once for the whole session; the first failed token request (5xx,
429, an answer dropped or timed out) and a token request unanswered after
``RetryConfig.stall_s`` are said at once in a WARNING, and ``RetryConfig.token_attempts``
failures in a row make the token endpoint down for the session.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

import httpx
from pydantic import ValidationError as PydanticValidationError

from cogseg_ml.api.health import TOKEN_ENDPOINT, SessionHealth
from cogseg_ml.api.retry_policy import describe_transport_error
from cogseg_ml.api.wire_schema import TokenResponse
from cogseg_ml.config import ClientCredentials, Credentials, StaticToken, TokenProvider
from cogseg_ml.errors import AuthenticationError, TokenEndpointUnavailable, status_text

__all__ = ["BearerAuth", "TokenEndpointUnavailable", "host_of", "provider_name"]

_log = logging.getLogger("cogseg_ml.api.auth")

#: What a token endpoint's ``error`` code (RFC 6749 section 5.2) says was refused.
_REFUSED = {
    "invalid_client": "client id {cid!r} with its client secret",
    "unauthorized_client": "client id {cid!r} for the client-credentials grant",
    "invalid_scope": "the scopes {scopes} for client id {cid!r}",
}


def host_of(url: str | httpx.URL) -> str:
    """``host:port`` (or just the host on the scheme's default port) of a URL."""
    u = httpx.URL(url)
    return f"{u.host}:{u.port}" if u.port else u.host


def provider_name(creds: TokenProvider) -> str:
    """How a token provider is named in messages (its function's name)."""
    fn = creds.provider
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def _no_token(creds: TokenProvider, value: Any) -> AuthenticationError:
    kind = ("None" if value is None else f"a {type(value).__name__}"
            if not isinstance(value, str) else "a blank string" if value else "an empty string")
    return AuthenticationError(
        f"the token provider {provider_name(creds)} returned {kind}, not a token: it must "
        "return the bearer token as a non-empty string")


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer ...``; refreshes and resends once on 401 where it can."""

    def __init__(self, credentials: Credentials, *, timeout_s: float = 30.0,
                 verify: bool = True, token_transport: httpx.BaseTransport | None = None,
                 async_token_transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 connect_timeout_s: float | None = None,
                 health: SessionHealth | None = None) -> None:
        """
        Args:
            credentials: what to authenticate with.
            timeout_s, verify: for the token endpoint's HTTP clients.
            token_transport, async_token_transport: transports for the token endpoint's sync
                and async clients (default: httpx's network transports), e.g. for tests.
            clock: monotonic seconds, used for token expiry (``time.monotonic``).
            connect_timeout_s: how long connecting to the token endpoint may take.
            health: the session's record of outages and refused credentials, if any.
        """
        self.credentials = credentials
        self.health = health
        self._timeout = httpx.Timeout(timeout_s, connect=min(connect_timeout_s or timeout_s,
                                                             timeout_s))
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

    def _token_host(self) -> str:
        assert isinstance(self.credentials, ClientCredentials)
        return host_of(self.credentials.token_url)

    def _before_fetch(self) -> None:
        """Fail at once where the session already knows the answer."""
        if self.health is not None:
            self.health.check_credentials()
            if isinstance(self.credentials, ClientCredentials):
                self.health.check(TOKEN_ENDPOINT, self._token_host())

    def _stall_s(self) -> float | None:
        """After how long an unanswered token request is said (``RetryConfig.stall_s``)."""
        return self.health.retry.stall_s if self.health is not None else None

    def _waiting(self, waited_s: float) -> None:
        """A token request has had no answer for ``waited_s``: the session says so."""
        if self.health is not None:
            self.health.token_waiting(self._token_host(), waited_s,
                                      self._timeout.read or waited_s)

    def _not_reached(self, exc: httpx.TransportError) -> TokenEndpointUnavailable:
        """The error for a token request that got no answer (recorded in the session)."""
        host = self._token_host()
        reason = describe_transport_error(exc)
        unreachable = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
        what = f"{'cannot be reached' if unreachable else 'did not answer'} ({reason})"
        if self.health is not None:
            if unreachable:
                self.health.failed_to_connect(TOKEN_ENDPOINT, host, reason)
            elif not isinstance(exc, httpx.PoolTimeout):  # a pool timeout is ours, not its
                self.health.token_failed(host, what)
        return TokenEndpointUnavailable(f"the token endpoint at {host} {what}", host=host,
                                        reason=what, unreachable=unreachable)

    def _provided(self, creds: TokenProvider, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _no_token(creds, value)
        self._token = value
        self.fetch_count += 1
        return value

    def _provider_failed(self, creds: TokenProvider, exc: Exception) -> AuthenticationError:
        return AuthenticationError(
            f"the token provider {provider_name(creds)} failed: {type(exc).__name__}: {exc}")

    def _accept_token(self, response: httpx.Response) -> str:
        creds = self.credentials
        assert isinstance(creds, ClientCredentials)
        host = self._token_host()
        if response.status_code >= 500 or response.status_code == 429:
            what = f"answered {status_text(response.status_code)}"
            if self.health is not None:
                self.health.token_failed(host, what)
            raise TokenEndpointUnavailable(f"the token endpoint at {host} {what}", host=host,
                                           reason=what, status_code=response.status_code)
        if self.health is not None:  # it answers, and not with a failure of its own
            self.health.answered(TOKEN_ENDPOINT, host)
        if response.status_code != 200:
            err = self._refusal(creds, host, response)
            if self.health is not None:
                self.health.refuse(err)
            raise err
        try:
            tok = TokenResponse.model_validate_json(response.content)
        except PydanticValidationError:
            raise AuthenticationError(f"the token endpoint at {host} answered without a usable "
                                      "access_token", status_code=response.status_code) from None
        self._token = tok.access_token
        self._lifetime = tok.expires_in
        self._expires_at = self._clock() + tok.expires_in
        self.fetch_count += 1
        _log.debug("obtained an access token valid for %.0f s", tok.expires_in)
        return tok.access_token

    @staticmethod
    def _refusal(creds: ClientCredentials, host: str,
                 response: httpx.Response) -> AuthenticationError:
        code, detail = "", ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            err = body.get("error")
            code = err if isinstance(err, str) else ""
            desc = body.get("error_description")
            if isinstance(desc, str) and desc.strip():
                flat = " ".join(desc.split())
                detail = f" ({flat[:200]}{'...' if len(flat) > 200 else ''})"
        what = _REFUSED.get(code, "the client credentials of client id {cid!r}").format(
            cid=creds.client_id, scopes=" ".join(creds.scopes) or "(none)")
        return AuthenticationError(
            f"the token endpoint at {host} refused {what}{f' ({code})' if code else ''}{detail}; "
            "check the client id, the client secret (has it expired?), the scopes and the "
            "token URL", status_code=response.status_code)

    def _sync_fetch(self) -> str:
        creds = self.credentials
        if isinstance(creds, StaticToken):
            return creds.token.reveal()
        if isinstance(creds, TokenProvider):
            try:
                value = creds.provider()
            except Exception as exc:
                raise self._provider_failed(creds, exc) from exc
            return self._provided(creds, value)
        self._before_fetch()
        if self._sync_http is None:
            self._sync_http = httpx.Client(timeout=self._timeout, verify=self._verify,
                                           transport=self._token_transport)
        stall = self._stall_s()
        timer = (threading.Timer(stall, self._waiting, args=(stall,)) if stall is not None
                 else None)
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            resp = self._sync_http.post(creds.token_url, data=self._token_form(creds))
        except httpx.TransportError as exc:
            # Not chained: the request it carries holds the client secret in its body.
            raise self._not_reached(exc) from None
        finally:
            if timer is not None:
                timer.cancel()
        return self._accept_token(resp)

    async def _async_fetch(self) -> str:
        creds = self.credentials
        if isinstance(creds, StaticToken):
            return creds.token.reveal()
        if isinstance(creds, TokenProvider):
            try:
                value = await asyncio.to_thread(creds.provider)
            except Exception as exc:
                raise self._provider_failed(creds, exc) from exc
            return self._provided(creds, value)
        self._before_fetch()
        if self._async_http is None:
            self._async_http = httpx.AsyncClient(timeout=self._timeout, verify=self._verify,
                                                 transport=self._async_token_transport)
        stall = self._stall_s()
        timer = (asyncio.get_running_loop().call_later(stall, self._waiting, stall)
                 if stall is not None else None)
        try:
            resp = await self._async_http.post(creds.token_url, data=self._token_form(creds))
        except httpx.TransportError as exc:
            raise self._not_reached(exc) from None  # the request holds the secret: not chained
        finally:
            if timer is not None:
                timer.cancel()
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
