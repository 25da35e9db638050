"""When to retry an HTTP call, and how long to wait: pure decisions, no I/O.

The loop itself is tenacity's (:func:`retrying_kwargs` builds its arguments); this module only
answers "is this failure worth another attempt?" and "how long until then?".

The rule for calls that create something (``POST /context/vision/segment``, ``POST
/annotations``): CDF has no idempotency key [ref 6.1, 8.7], so a retried create after the server
may have acted can start a second job. With ``create_retry="safe"`` (the default) such a call is
retried only when the request cannot have been acted on:

* HTTP 429: throttled requests are rejected before they are processed [ref 4];
* HTTP 503: "service unavailable", the server refused the request;
* the connection was never established (connect error, connect timeout, pool timeout).

It is *not* retried after 500/502/504, read or write timeouts, or a connection dropped
mid-response: the job may exist. ``create_retry="always"`` retries those too and accepts a
possible duplicate job (harmless to results, but it costs quota). Calls that only read (GET,
``/files/byids``, ``/files/downloadlink``, ``/annotations/list``) retry on all of the above
except 500, as the official SDK does.

Failing to connect at all (refused, a name that does not resolve, a connect timeout, also on
the way to the token endpoint) has a budget of its own, ``RetryConfig.connect_attempts`` with a
short wait (``connect_backoff_s``): nothing listens there, so the budget for answers (minutes by
default) would only delay the verdict. A call also stops as soon as its session has recognized
the host as down (see :mod:`cogseg_ml.api.health`).
"""

from __future__ import annotations

import email.utils
import os
import random
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

import httpx
from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from cogseg_ml.config import RetryConfig
from cogseg_ml.errors import RequestNotSent, RetryableStatus, TokenEndpointUnavailable

__all__ = [
    "CallKind",
    "RequestNotSent",
    "RetryableStatus",
    "describe_transport_error",
    "is_connect_failure",
    "is_retryable",
    "parse_retry_after",
    "retrying_kwargs",
    "stop_after_connect_failures",
    "stop_when",
]

CallKind = Literal["read", "create"]

#: Statuses retried for reads (the SDK's status_forcelist).
READ_RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Statuses that prove the server did not act on the request.
NOT_ACTED_STATUSES = frozenset({429, 503})

_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_ACTED = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError,
                httpx.ReadError, httpx.WriteError)
#: No connection could be made: nothing listens, the name does not resolve, or no answer to
#: the connection attempt (a pool timeout is our own pool being busy, not the host).
CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout)


def is_connect_failure(exc: BaseException | None) -> bool:
    """Whether ``exc`` means no connection could be made (to CDF or to the token endpoint)."""
    if isinstance(exc, TokenEndpointUnavailable):
        return exc.unreachable
    return isinstance(exc, CONNECT_FAILURES)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date.

    Returns ``None`` for a missing or unreadable value; never a negative number.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        now_dt = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
        return max(0.0, (when - now_dt).total_seconds())
    if secs != secs or secs in (float("inf"), float("-inf")):
        return None
    return max(0.0, secs)


def is_retryable(exc: BaseException, kind: CallKind, create_retry: str = "safe") -> bool:
    """Whether a failed attempt of a call of ``kind`` may be tried again."""
    blind = kind == "read" or create_retry == "always"
    if isinstance(exc, RetryableStatus):
        if exc.status_code in NOT_ACTED_STATUSES:
            return True
        return blind and exc.status_code in READ_RETRY_STATUSES
    if isinstance(exc, (_NEVER_SENT, RequestNotSent)):
        return True
    if isinstance(exc, _MAYBE_ACTED):
        return blind
    return False


def describe_transport_error(exc: BaseException) -> str:
    """``"ConnectError: Connection refused"``: the error's kind and the operating system's
    reason where one is in its causes, never a URL (a download URL is a credential)."""
    detail = ""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # the deepest OS error says most
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror) and cause.strerror:
            detail = f"the name does not resolve ({cause.strerror})"
        elif isinstance(cause, OSError) and isinstance(cause.errno, int) and cause.errno > 0:
            detail = os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    if not detail:
        text = " ".join(str(exc).split())
        detail = ("see the cause" if "http" in text.lower() else
                  (text[:120] + "...") if len(text) > 120 else text or "no detail")
    return f"{type(exc).__name__}: {detail}"


class stop_after_connect_failures(stop_base):
    """Stop once a call has failed to connect ``attempts`` times (one instance per call)."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        self._failed: set[int] = set()  # attempt numbers that failed to connect

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if is_connect_failure(exc):
            self._failed.add(retry_state.attempt_number)
        return len(self._failed) >= self.attempts


class stop_when(stop_base):
    """Stop when ``predicate()`` holds (e.g. the session has recognized the host as down)."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate()


class _FullJitterOrRetryAfter(wait_base):
    """Honour the server's Retry-After (capped); otherwise full jitter on an exponential cap
    (with the short ``connect_backoff_s`` base after a failure to connect)."""

    def __init__(self, cfg: RetryConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RetryableStatus) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, self.cfg.max_backoff_s)
        n = retry_state.attempt_number - 1
        base = self.cfg.connect_backoff_s if is_connect_failure(exc) else self.cfg.backoff_base_s
        cap = min(self.cfg.max_backoff_s, base * (2**n))
        return self.rng.uniform(min(0.05, cap), max(cap, 0.05))


def retrying_kwargs(cfg: RetryConfig, kind: CallKind,
                    before_sleep: Callable[[RetryCallState], Any] | None = None, *,
                    give_up: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Arguments for ``tenacity.Retrying``/``AsyncRetrying`` for one call.

    ``give_up``: stop retrying as soon as it returns true (checked after each failure).
    """
    stop = (stop_after_attempt(cfg.max_attempts) | stop_after_delay(cfg.total_timeout_s)
            | stop_after_connect_failures(cfg.connect_attempts))
    if give_up is not None:
        stop = stop | stop_when(give_up)
    return {
        "stop": stop,
        "wait": _FullJitterOrRetryAfter(cfg),
        "retry": retry_if_exception(lambda e: is_retryable(e, kind, cfg.create_retry)),
        "reraise": True,
        "before_sleep": before_sleep,
    }
