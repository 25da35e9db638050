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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from cogseg_ml.config import RetryConfig
from cogseg_ml.errors import ApiRetiredError, AuthenticationError, CdfUnreachableError

__all__ = ["CDF", "DOWNLOADS", "TOKEN_ENDPOINT", "HealthKey", "Service", "SessionHealth"]

_log = logging.getLogger("cogseg_ml.api")

Service = Literal["CDF", "the token endpoint", "the download host"]
CDF: Service = "CDF"
TOKEN_ENDPOINT: Service = "the token endpoint"
DOWNLOADS: Service = "the download host"
HealthKey = tuple[Service, str]  # (what, "host:port")

_HINTS: dict[str, str] = {
    CDF: "check base_url (the cluster URL) and the network",
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


class SessionHealth:
    """Outages and refused credentials seen by one session (thread-safe).

    Args:
        retry: supplies ``connect_attempts`` and ``unreachable_cooldown_s``.
        clock: monotonic seconds (for the cool-down).
        wall: seconds since the epoch (for the ``since`` users are shown).
    """

    def __init__(self, retry: RetryConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.threshold = retry.connect_attempts
        self.cooldown_s = retry.unreachable_cooldown_s
        self.clock = clock
        self.wall = wall
        self._watch: dict[HealthKey, _Watch] = {}
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
        """``host`` answered (any status): it is reachable, whatever it said."""
        with self._lock:
            w = self._watch.pop((service, host), None)
        if w is not None and w.outage is not None:
            _log.info("%s at %s answers again", service, host)

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
