"""What a session has learned about CDF being usable at all: outages, refused credentials and
a retired Vision API.

One :class:`SessionHealth` belongs to each async client, so to each
:class:`~cogseg_ml.api.session.SegmentationSession`: every call of every user of the session
sees it. It turns "each request spends its own retry budget" into "the session finds out once":

* A host where nothing listens (connection refused, a name that does not resolve, a connect
  timeout) is counted as unreachable when one call has spent its connect budget
  (``RetryConfig.connect_attempts``) or the session's calls together have failed to connect
  that many times in a row. The token endpoint counts as down as well when a call spent its
  whole retry budget on it (5xx/429).
* Refused credentials are remembered: the token endpoint refusing the client id and secret, or
  CDF answering 401 to a static token, at once; CDF answering 401 to refreshable credentials
  (after a fresh token was had) once two different tokens were refused in a row, with no
  request accepted between (one token can be revoked at the wrong moment, and every request
  in flight with it is then refused).

From then on every request of the session fails at once (:class:`CdfUnreachableError`, or the
remembered :class:`AuthenticationError`) without being sent, for
``RetryConfig.unreachable_cooldown_s``; then requests are tried again, and any answer from the
host ends the outage. One WARNING on the ``cogseg_ml.api`` logger says so per outage, not one
per request. The clock is injectable (``clock``), so tests need no sleeps.

A *storm* is a service that answers, but only with failures: ``RetryConfig.storm_failures``
(4) failed requests in a row across all the session's calls to it (500/502/503/504, timeouts,
answers dropped mid-way, requests of the Vision API still without an answer after
``RetryConfig.stall_s``), each within ``RetryConfig.storm_window_s`` (10 s), with no good answer
between; a 429 whose Retry-After asks for more than the longest wait of a call
(``RetryConfig.max_backoff_s``) is one by itself. CDF's Vision API (the segment routes) is
watched apart from the rest of CDF, which may work on. A storm does not stop requests: who
watches for it decides (:meth:`SessionHealth.listen`; the fallback backend's pipeline hands its
queued and in-flight jobs to the local model at once, :func:`storm_error`); with nobody
watching, calls keep their retry budget and one WARNING says so when the storm is recognized,
one INFO when the service answers again. Failures older than the window do not count, so
the first requests after a pause probe the service again.

The token endpoint has a budget of its own: ``RetryConfig.token_attempts`` (5) failed token
requests in a row (5xx, 429, answers dropped or timed out) across the session, then it counts
as down like an unreachable host. Its first failure is said at once in a WARNING (what failed,
and that the session retries: "attempt 2/5"), as is a token request still unanswered after
``RetryConfig.stall_s``.

A retired Vision API (:class:`~cogseg_ml.errors.ApiRetiredError`: the segment endpoint answered
404 or 410 for the route) is remembered for the session's lifetime, with no cool-down: an
endpoint that is gone does not come back, so it is never asked again; every segmentation call
of the session fails at once with it (files and annotations are not affected). It is logged at
INFO only: whoever handles the error says what happens next (the fallback backend warns once,
the command line says it once).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeGuard

from cogseg_ml.config import RetryConfig
from cogseg_ml.errors import (
    ApiRetiredError,
    ApiStormError,
    ApiUnavailableError,
    AuthenticationError,
    CdfUnreachableError,
)

__all__ = ["CDF", "DOWNLOADS", "TOKEN_ENDPOINT", "VISION", "HealthKey", "Service",
           "SessionHealth", "is_storm", "storm_error", "storm_summary"]

_log = logging.getLogger("cogseg_ml.api")

Service = Literal["CDF", "CDF's Vision API", "the token endpoint", "the download host"]
CDF: Service = "CDF"
VISION: Service = "CDF's Vision API"  # its segment routes: storms are watched apart from CDF's
TOKEN_ENDPOINT: Service = "the token endpoint"
DOWNLOADS: Service = "the download host"
HealthKey = tuple[Service, str]  # (what, "host:port")

_HINTS: dict[str, str] = {
    CDF: "check base_url (the cluster URL) and the network",
    VISION: "check base_url (the cluster URL) and the network",
    TOKEN_ENDPOINT: "check the token URL and the network",
    DOWNLOADS: "check the network",
}


@dataclass
class _Watch:
    """One host's record: connection failures in a row, and the outage once recognized."""

    failures: int = 0
    outage: CdfUnreachableError | None = None
    down_at: float = 0.0  # clock() when the outage was (last) confirmed
    state: str = "unreachable"  # or "unavailable": it answers, but only with failures
    warned: bool = False
    failing: int = 0  # token requests that failed in a row (5xx, 429, dropped, timed out)
    failing_said: bool = False
    waiting_said: bool = False


def storm_error(message: str, *, service: str, host: str, failures: int, reason: str,
                since: float, status_code: int | None = None) -> ApiStormError:
    """The error of a job handed over because its service storms (see :func:`is_storm`)."""
    return ApiStormError(message, service=service, host=host, failures=failures,
                         reason=reason, since=since, status_code=status_code)


def is_storm(error: object) -> TypeGuard[ApiStormError]:
    """Whether ``error`` says its job was handed over because the service storms."""
    return isinstance(error, ApiStormError)


def storm_summary(error: ApiUnavailableError) -> str:
    """``"CDF's Vision API at host:port failed 4 requests in a row (503 Service Unavailable
    x4)"``, for a storm's error (see :func:`is_storm`); else the error's text."""
    if not is_storm(error):
        return str(error)
    return _storm_text(error.service, error.host, error.failures, error.reason)


def _storm_text(service: str, host: str, failures: int, reason: str) -> str:
    return (f"{service} at {host} failed {failures} request"
            f"{'s in a row' if failures > 1 else ''} ({reason})")


@dataclass
class _Storm:
    """One service's failed requests since its last good answer."""

    times: deque[float] = field(default_factory=deque)  # clock() of those within the window
    reasons: Counter[str] = field(default_factory=Counter)
    status: int | None = None  # the last failing status, if any
    since: float | None = None  # wall() when the storm was recognized
    said: bool = False

    def describe(self) -> str:
        """``"503 Service Unavailable x5"``, the commonest reasons first."""
        return ", ".join(f"{r} x{n}" if n > 1 else r for r, n in self.reasons.most_common(3))

    @property
    def count(self) -> int:
        """Failed requests in a row."""
        return sum(self.reasons.values())


StormListener = Callable[[ApiUnavailableError], None]


class SessionHealth:
    """Outages and refused credentials seen by one session (thread-safe).

    Args:
        retry: supplies ``connect_attempts``, ``unreachable_cooldown_s``, the storm rule
            (``storm_failures``, ``storm_window_s``) and ``token_attempts``.
        clock: monotonic seconds (for the cool-down, the storm window, and job timeouts).
        wall: seconds since the epoch (for the ``since`` users are shown).
    """

    def __init__(self, retry: RetryConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.threshold = retry.connect_attempts
        self.cooldown_s = retry.unreachable_cooldown_s
        self.retry = retry
        self.clock = clock
        self.wall = wall
        self._watch: dict[HealthKey, _Watch] = {}
        self._storms: dict[HealthKey, _Storm] = {}
        self._listeners: list[tuple[frozenset[HealthKey], StormListener]] = []
        self._refused: tuple[float, AuthenticationError] | None = None
        self._refused_tokens: set[int] = set()  # hashes of tokens refused since an accept
        self._retired: ApiRetiredError | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        down = [f"{s} at {h}" for (s, h), w in self._watch.items() if w.outage is not None]
        return (f"SessionHealth(down={down}, credentials_refused={self._refused is not None}, "
                f"vision_api_retired={self._retired is not None})")

    # --- a retired Vision API ------------------------------------------------------------------
    @property
    def retired(self) -> ApiRetiredError | None:
        """The retirement this session recognized (for its lifetime), else ``None``."""
        return self._retired

    def retire(self, error: ApiRetiredError) -> ApiRetiredError:
        """The segment endpoint is gone: remember it (the first one seen is kept) and return
        the error to raise."""
        with self._lock:
            first = self._retired is None
            if first:
                self._retired = error
            kept = self._retired
        assert kept is not None
        if first:
            _log.info("%s", kept)
        return copy.copy(kept)

    def check_retired(self) -> None:
        """Raise the remembered :class:`ApiRetiredError` (a segmentation call is not sent)."""
        retired = self._retired
        if retired is not None:
            raise copy.copy(retired)

    # --- questions -----------------------------------------------------------------------------
    def _active(self, key: HealthKey) -> CdfUnreachableError | None:
        w = self._watch.get(key)
        if w is None or w.outage is None or self.clock() - w.down_at >= self.cooldown_s:
            return None
        return w.outage

    def is_down(self, keys: Iterable[HealthKey]) -> bool:
        """Whether any of the hosts is in a recognized outage (within its cool-down)."""
        with self._lock:
            return any(self._active(k) is not None for k in keys)

    @property
    def outage(self) -> CdfUnreachableError | None:
        """The outage in force (the earliest, if several hosts are down), else ``None``."""
        with self._lock:
            active = [o for o in (self._active(k) for k in self._watch) if o is not None]
        return min(active, key=lambda o: o.since) if active else None

    def check(self, service: Service, host: str) -> None:
        """Raise :class:`CdfUnreachableError` at once while ``host`` is known to be down."""
        with self._lock:
            outage = self._active((service, host))
            if outage is None:
                return
            w = self._watch[(service, host)]
            left, state = self.cooldown_s - (self.clock() - w.down_at), w.state
        when = time.strftime("%H:%M:%S", time.localtime(outage.since))
        raise CdfUnreachableError(
            f"{service} at {host} is {state} since {when} ({outage.reason}); "
            f"requests fail at once for up to {max(left, 0.0):.0f} s more, until it answers "
            f"again: {_HINTS[service]}", host=host, service=service, since=outage.since,
            reason=outage.reason)

    def check_credentials(self) -> None:
        """Raise the remembered :class:`AuthenticationError` while it is in force."""
        with self._lock:
            refused = self._refused
            if refused is None:
                return
            if self.clock() - refused[0] >= self.cooldown_s:
                self._refused = None
                return
        raise copy.copy(refused[1])

    # --- what happened -------------------------------------------------------------------------
    def failed_to_connect(self, service: Service, host: str, reason: str) -> None:
        """A connection to ``host`` could not be made; enough in a row make an outage."""
        with self._lock:
            w = self._watch.setdefault((service, host), _Watch())
            w.failures += 1
            tripped = w.failures >= self.threshold
        if tripped:
            self.give_up(service, host, reason)

    def give_up(self, service: Service, host: str, reason: str, *,
                unreachable: bool = True) -> CdfUnreachableError:
        """A call gave up on ``host`` (or enough calls failed): it is down from now on.

        Returns the error for the caller to raise. The first time in an outage, logs one
        WARNING.
        """
        with self._lock:
            w = self._watch.setdefault((service, host), _Watch())
            w.failures = max(w.failures, self.threshold)
            w.down_at = self.clock()
            if w.outage is None:
                w.state = "unreachable" if unreachable else "unavailable"
                w.outage = CdfUnreachableError(
                    f"{service} at {host} is {w.state}: {reason}; {_HINTS[service]}",
                    host=host, service=service, since=self.wall(), reason=reason)
            outage, warn, state = w.outage, not w.warned, w.state
            w.warned = True
        if warn:
            _log.warning("%s at %s is %s (%s): its requests now fail at once for %.0f s "
                         "instead of each waiting out its retries; %s", service, host, state,
                         reason, self.cooldown_s, _HINTS[service])
        return copy.copy(outage)

    def answered(self, service: Service, host: str) -> None:
        """``host`` answered (any status): it is reachable, whatever it said.

        For the token endpoint, call it only for answers that are not failures of its own
        (not 5xx or 429): it also ends a run of failed token requests.
        """
        with self._lock:
            w = self._watch.pop((service, host), None)
        if w is not None and (w.outage is not None or w.failing_said or w.waiting_said):
            _log.info("%s at %s answers again", service, host)

    # --- storms --------------------------------------------------------------------------------
    def listen(self, keys: Collection[HealthKey], listener: StormListener) -> Callable[[], None]:
        """Call ``listener(error)`` on every failed request to one of ``keys`` while that
        service storms (from the thread that recorded it). Returns the function that stops
        it. While anyone listens for a service, its storm is logged at INFO only: the
        listener says what it does about it."""
        entry = (frozenset(keys), listener)
        with self._lock:
            self._listeners.append(entry)

        def stop() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return stop

    def failed(self, service: Service, host: str, reason: str, *, status: int | None = None,
               attempt: tuple[int, int] | None = None, decisive: bool = False) -> None:
        """A request to ``service`` failed: a 5xx, a timeout, an answer dropped, no answer
        yet after ``stall_s``, or (``decisive``) a 429 asking for a longer wait than a call
        makes. Enough in a row make a storm (see the module docstring).

        Args:
            reason: what happened, in a few words (``"503 Service Unavailable"``).
            status: the HTTP status, if there was an answer.
            attempt: ``(next attempt, attempts in all)`` of the call, when it will retry.
            decisive: a storm by itself.
        """
        key = (service, host)
        with self._lock:
            s = self._storms.setdefault(key, _Storm())
            now = self.clock()
            s.times.append(now)
            while s.times and now - s.times[0] > self.retry.storm_window_s:
                s.times.popleft()
            s.reasons[reason] += 1
            if status is not None:
                s.status = status
            if not decisive and len(s.times) < self.retry.storm_failures:
                return
            if s.since is None:
                s.since = self.wall()
            listeners = [fn for keys, fn in self._listeners if key in keys]
            say, s.said = not s.said, True
            what = _storm_text(service, host, s.count, s.describe())
            error = storm_error(f"{what}; the job was handed over at once instead of waiting "
                                "out its retries", service=service, host=host, failures=s.count,
                                reason=s.describe(), since=s.since, status_code=s.status)
        if say and listeners:
            _log.info("%s: its jobs are handed over at once", what)
        elif say:
            r = self.retry
            _log.warning("%s; retrying%s, each call gives up after %d attempts or %.0f s",
                         what, f": attempt {attempt[0]}/{attempt[1]} of this call next"
                         if attempt else " where the retry rule allows", r.max_attempts,
                         r.total_timeout_s)
        for fn in listeners:
            fn(error)

    def storm(self, keys: Iterable[HealthKey]) -> ApiStormError | None:
        """The storm of the first of ``keys`` that storms now (recognized, not yet ended by a
        good answer), as the error its jobs get; ``None`` when none does."""
        with self._lock:
            for service, host in keys:
                s = self._storms.get((service, host))
                if s is not None and s.since is not None:
                    return storm_error(
                        f"{_storm_text(service, host, s.count, s.describe())}; the job was "
                        "handed over at once", service=service, host=host, failures=s.count,
                        reason=s.describe(), since=s.since, status_code=s.status)
        return None

    def succeeded(self, service: Service, host: str) -> None:
        """``service`` gave an answer that is not a failure: any storm of it is over."""
        if (service, host) not in self._storms:  # the common case: nothing to end
            return
        with self._lock:
            s = self._storms.pop((service, host), None)
        if s is not None and s.said:
            _log.info("%s at %s answers again (after %d failed requests in a row)", service,
                      host, s.count)

    # --- the token endpoint --------------------------------------------------------------------
    def token_failed(self, host: str, reason: str) -> None:
        """A token request failed (5xx, 429, an answer dropped or timed out): said at the
        first; after ``token_attempts`` in a row the token endpoint is down (see
        :meth:`give_up`)."""
        budget = self.retry.token_attempts
        with self._lock:
            w = self._watch.setdefault((TOKEN_ENDPOINT, host), _Watch())
            w.failing += 1
            n = w.failing
            say = not w.failing_said and n < budget
            w.failing_said = w.failing_said or say
        if n >= budget:
            self.give_up(TOKEN_ENDPOINT, host, f"{reason}, {n} times in a row",
                         unreachable=False)
        elif say:
            _log.warning("%s at %s %s; retrying (attempt %d/%d): after %d failed token "
                         "requests in a row the session stops asking for %.0f s", TOKEN_ENDPOINT,
                         host, reason, n + 1, budget, budget, self.cooldown_s)

    def token_waiting(self, host: str, waited_s: float, timeout_s: float) -> None:
        """A token request has had no answer for ``waited_s``: say so, once per episode."""
        with self._lock:
            w = self._watch.setdefault((TOKEN_ENDPOINT, host), _Watch())
            say, w.waiting_said = not w.waiting_said, True
        if say:
            _log.warning("%s at %s has not answered in %g s; waiting up to %g s (the request "
                         "timeout), then retrying (up to %d failed token requests in a row)",
                         TOKEN_ENDPOINT, host, waited_s, timeout_s, self.retry.token_attempts)

    def refuse(self, error: AuthenticationError, *, token: str | None = None,
               confirmations: int = 1) -> None:
        """The credentials were refused. Once ``confirmations`` different tokens were refused
        in a row (with no request accepted between; without ``token``, each refusal counts),
        the session's requests fail with ``error`` for the cool-down instead of each asking
        again. Only a hash of the token is kept."""
        with self._lock:
            self._refused_tokens.add(hash(token) if token is not None
                                     else len(self._refused_tokens))
            if len(self._refused_tokens) >= confirmations:
                remembered = copy.copy(error)
                remembered.session_wide = error.session_wide = True
                self._refused = (self.clock(), remembered)

    def accepted(self) -> None:
        """An authenticated request was accepted: the refusals so far were flukes."""
        if self._refused_tokens:
            with self._lock:
                self._refused_tokens.clear()
