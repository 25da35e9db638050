"""The API first, a local model when the API is unavailable, and back again.

:class:`FallbackBackend` sends jobs to the primary (the API) in chunks. A job that fails with
:class:`~cogseg_ml.errors.ApiUnavailableError` opens the :class:`CircuitBreaker`: that job is
retried on the fallback (a local model), and so is everything else until ``cooldown_s`` has
passed. Before the first chunk, and whenever the breaker is half-open, one short request (a
single attempt with a short timeout, the primary's ``probe``) asks whether the API answers at
all: a refused connection or a timeout opens the breaker at once, instead of after a whole
chunk's retry budget (minutes with the default :class:`~cogseg_ml.config.RetryConfig`).
An outage that starts in the middle of a chunk costs the connect budget once, not a retry
budget per job: the API client's session recognizes the unreachable host and fails the rest of
the chunk at once (:class:`~cogseg_ml.errors.CdfUnreachableError`), and the fallback takes
those jobs over. Likewise an API that answers, but only with failures (a *storm*: 4 failed
requests in a row across the session's jobs, 500/502/503/504, timeouts, requests unanswered
after ``RetryConfig.stall_s``, or a 429 whose Retry-After is longer than a call would wait; see
:mod:`cogseg_ml.api.health`): the primary's jobs queued and in flight end at once
(:func:`~cogseg_ml.api.health.storm_error`, through ``run_until_storm`` where the primary has
it), the fallback does them, and the breaker opens: one WARNING per switch, the API probed
again after ``cooldown_s``. With default settings the switch takes well under a second for
answers that are failures and about ``stall_s`` (3 s) for requests that get no answer.
Results keep their provenance (the backend's name and model version are in their cache keys),
so a later API run replaces local masks rather than being answered by them.

A retired Vision API (:class:`~cogseg_ml.errors.ApiRetiredError`: the segment endpoint itself
is gone) is not an outage to wait out: the backend switches to the fallback for good, says so
in one WARNING (what happened and how to run local-only), and never probes or tries the
primary again (:attr:`FallbackBackend.retired`). The jobs that met the retirement are done by
the fallback, as is every job after them.

Modes: ``"prefer-api"`` (the above), ``"prefer-local"`` (local first, the API only for what the
local model cannot do), ``"api-only"`` (no fallback; outages are errors).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cogseg_ml.api.health import is_storm, storm_summary
from cogseg_ml.backends.base import BackendJob, BackendOutcome, SegmentationBackend
from cogseg_ml.errors import ApiRetiredError, ApiUnavailableError, ValidationError

__all__ = ["CircuitBreaker", "FallbackBackend"]

_log = logging.getLogger("cogseg_ml.backends.fallback")
Mode = Literal["prefer-api", "prefer-local", "api-only"]


@dataclass
class CircuitBreaker:
    """Closed (use the primary), open (skip it) until ``cooldown_s`` passes, then half-open."""

    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    opened_at: float | None = field(default=None)
    trips: int = 0

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """Whether the primary may be tried now."""
        return self.state != "open"

    def failure(self, reason: object = None) -> None:
        """The primary is unavailable: open (again) now."""
        if self.opened_at is None:
            self.trips += 1
            _log.warning("API unavailable (%s): switching to the local model; the API is tried "
                         "again in %.0f s", reason or "jobs failed", self.cooldown_s)
        self.opened_at = self.clock()

    def success(self) -> None:
        """The primary answered: close."""
        if self.opened_at is not None:
            _log.warning("API available again: switching back")
        self.opened_at = None


class FallbackBackend:
    """Primary backend with a fallback behind a circuit breaker.

    Args:
        primary: usually :class:`~cogseg_ml.backends.api_backend.ApiBackend`.
        fallback: usually :class:`~cogseg_ml.backends.local_sam.LocalSamBackend`.
        mode: ``"prefer-api"``, ``"prefer-local"`` or ``"api-only"``.
        cooldown_s: how long to stay on the fallback before probing the primary again.
        chunk_size: jobs sent to the primary at once (the breaker is consulted per chunk).

    Attributes:
        retired: the :class:`~cogseg_ml.errors.ApiRetiredError` that switched this backend to
            the fallback for good (``None`` while the primary is in use).
    """

    def __init__(self, primary: SegmentationBackend, fallback: SegmentationBackend | None, *,
                 mode: Mode = "prefer-api", cooldown_s: float = 30.0,
                 chunk_size: int = 64, breaker: CircuitBreaker | None = None) -> None:
        if mode not in ("prefer-api", "prefer-local", "api-only"):
            raise ValidationError(f"mode must be prefer-api, prefer-local or api-only, got "
                                  f"{mode!r}")
        if fallback is None and mode != "api-only":
            raise ValidationError(f"mode {mode!r} needs a fallback backend")
        self.primary = primary
        self.fallback = fallback
        self.mode = mode
        self.chunk_size = chunk_size
        self.breaker = breaker or CircuitBreaker(cooldown_s=cooldown_s)
        first = fallback if mode == "prefer-local" and fallback is not None else primary
        self.name = first.name
        self.model_version = first.model_version
        self.probe_timeout_s = 5.0
        self._verified = False  # the primary answered a probe or a job since the last trip
        self.retired: ApiRetiredError | None = None

    def __repr__(self) -> str:
        state = "retired" if self.retired is not None else self.breaker.state
        return (f"FallbackBackend(primary={self.primary!r}, fallback={self.fallback!r}, "
                f"mode={self.mode!r}, breaker={state!r})")

    def identities(self) -> list[tuple[str, str]]:
        """The preferred backend first (its keys decide what is already done)."""
        ids = [(self.primary.name, self.primary.model_version)]
        if self.fallback is not None:
            fb = (self.fallback.name, self.fallback.model_version)
            ids = [fb] + ids if self.mode == "prefer-local" else ids + [fb]
        return ids

    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        """See :class:`~cogseg_ml.backends.base.SegmentationBackend` (read in chunks)."""
        if self.mode == "prefer-local":
            yield from self._prefer_local(jobs)
            return
        it = iter(jobs)
        while chunk := list(itertools.islice(it, self.chunk_size)):
            if self.mode == "api-only":
                yield from self.primary.run(chunk)
            elif self.retired is None and self.breaker.allow() and self._reachable(chunk):
                yield from self._primary_chunk(chunk)
            else:
                assert self.fallback is not None
                yield from self.fallback.run(chunk)

    def _prefer_local(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        """The fallback first; what it cannot do goes to the primary (unless retired)."""
        assert self.fallback is not None
        retry = []
        for out in self.fallback.run(jobs):
            if out.error is None or self.retired is not None:
                yield out
            else:
                retry.append(out)
        if not retry:
            return
        if self.retired is not None:  # recognized while the fallback ran: its answers stand
            yield from retry
            return
        for out in self.primary.run([o.job for o in retry]):
            if isinstance(out.error, ApiRetiredError):
                self._retire(out.error)
            yield out

    def _retire(self, error: ApiRetiredError) -> None:
        """The primary's endpoint is gone: the fallback for good, said once."""
        if self.retired is not None:
            return
        self.retired = error
        fb = self.fallback
        assert fb is not None  # only the modes with a fallback listen for it
        _log.warning("%s. Switching to the local model (%s %s) for good: the API is not tried "
                     "or probed again", error, fb.name, fb.model_version)

    def _reachable(self, chunk: Sequence[BackendJob]) -> bool:
        """Probe the primary when its state is unknown (first use, half-open)."""
        probe = getattr(self.primary, "probe", None)
        if probe is None or (self._verified and self.breaker.state == "closed"):
            return True
        try:
            probe(chunk[0], timeout_s=self.probe_timeout_s)
        except ApiUnavailableError as exc:
            self._verified = False
            self.breaker.failure(exc)
            return False
        self._verified = True
        return True

    def _primary_chunk(self, chunk: Sequence[BackendJob]) -> Iterator[BackendOutcome]:
        unavailable: list[BackendJob] = []
        why: ApiUnavailableError | None = None  # a storm's account, else the first failure's
        run = getattr(self.primary, "run_until_storm", self.primary.run)
        for out in run(chunk):
            if isinstance(out.error, ApiRetiredError):
                self._retire(out.error)
            if isinstance(out.error, ApiUnavailableError):
                unavailable.append(out.job)
                if why is None or (is_storm(out.error) and not is_storm(why)):
                    why = out.error
            else:
                yield out
        assert self.fallback is not None
        if self.retired is not None:
            if unavailable:
                yield from self.fallback.run(unavailable)
            return
        if unavailable and not is_storm(why):  # jobs answered before the storm was named
            storm = getattr(self.primary, "storm", None)
            why = (storm() if callable(storm) else None) or why
        if unavailable:
            self._verified = False
            self.breaker.failure(storm_summary(why) if is_storm(why) else
                                 f"{len(unavailable)} jobs could not reach it: {why}")
            yield from self.fallback.run(unavailable)
        else:
            self.breaker.success()
