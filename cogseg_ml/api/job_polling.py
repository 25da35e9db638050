"""When to poll a job next: an adaptive schedule informed by observed job durations (pure).

The first poll of a job comes when a typical job would be done: the running mean of the
server-side durations (``statusTime - createdTime``) of jobs seen to finish, scaled by
``first_poll_factor`` (before any job has finished, ``PollConfig.initial_s``). A job not done by
then is polled again after a short interval that grows by ``growth`` up to ``max_interval_s``.
Durations include queueing, so the schedule follows the server's load.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cogseg_ml.config import PollConfig
from cogseg_ml.errors import JobTimeoutError, ValidationError

if TYPE_CHECKING:
    from cogseg_ml.api.results import SegmentationResult, SegmentRequest
    from cogseg_ml.api.wire_schema import SegmentJob

__all__ = ["PollSchedule", "WaitPlan", "checked_timeout"]


def checked_timeout(timeout: object, name: str = "timeout") -> float | None:
    """``timeout`` as seconds, or ``None`` (wait as long as it takes).

    Raises:
        ValidationError: anything but ``None`` or a finite number > 0 (``0`` would create a
            job only to give up on it; NaN would never time out).
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ValidationError(f"{name} must be None (no limit) or a finite number of seconds "
                              f"> 0, got {timeout!r}")
    return float(timeout)


@dataclass
class PollSchedule:
    """Adaptive poll delays shared by all jobs of one client (not thread-safe: one loop)."""

    config: PollConfig = field(default_factory=PollConfig)
    first_poll_factor: float = 1.15
    smoothing: float = 0.2
    estimate_s: float | None = None
    observed: int = 0

    def observe(self, duration_s: float) -> None:
        """Record the server-side duration of a finished job."""
        if duration_s < 0:
            return
        self.observed += 1
        if self.estimate_s is None:
            self.estimate_s = duration_s
        else:
            self.estimate_s += self.smoothing * (duration_s - self.estimate_s)

    def _clamp(self, s: float) -> float:
        return min(self.config.max_interval_s, max(self.config.min_interval_s, s))

    def first_delay(self) -> float:
        """Seconds from job creation to its first poll."""
        if self.estimate_s is None:
            return self._clamp(self.config.initial_s)
        return self._clamp(self.estimate_s * self.first_poll_factor)

    def next_delay(self, polls_so_far: int) -> float:
        """Seconds until the next poll of a job already polled ``polls_so_far`` times."""
        base = self.config.initial_s if self.estimate_s is None else 0.25 * self.estimate_s
        base = max(self.config.min_interval_s, base)
        return self._clamp(base * self.config.growth ** max(0, polls_so_far - 1))


class WaitPlan:
    """The waiting of one job, without the I/O (shared by the sync and async ``wait``)::

        plan = WaitPlan(schedule, job, timeout)
        while (delay := plan.next_delay()) is not None:
            sleep(delay)
            plan.update(retrieve_job(plan.job_id))
        return plan.result(request)
    """

    def __init__(self, schedule: PollSchedule, job: SegmentJob | int,
                 timeout: float | None, *, default_timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """
        Args:
            schedule: the client's poll schedule.
            job: the job (as created or last seen) or its id.
            timeout: seconds from now; ``None``: ``default_timeout``.
            default_timeout: the config's ``RetryConfig.job_timeout_s`` (``None``: no limit).
            clock: monotonic seconds (the session's, injectable in tests).
        """
        from cogseg_ml.api.wire_schema import SegmentJob

        self.schedule = schedule
        self.current = job if isinstance(job, SegmentJob) else None
        self.job_id = job.job_id if isinstance(job, SegmentJob) else int(job)
        self.limit = "the timeout given" if timeout is not None else "RetryConfig.job_timeout_s"
        self.timeout = timeout if timeout is not None else default_timeout
        self.clock = clock
        self.start = clock()
        self.polls = 0
        self._delay = schedule.first_delay()

    def next_delay(self) -> float | None:
        """Seconds to sleep before the next poll, or ``None`` when the job is terminal.

        Raises:
            JobTimeoutError: the timeout has passed.
        """
        if self.current is not None and self.current.status.is_terminal:
            return None
        if self.timeout is None:
            return self._delay
        left = self.timeout - (self.clock() - self.start)
        if left <= 0:
            last = self.current.status.value if self.current else "unknown"
            raise JobTimeoutError(f"job {self.job_id} still {last} {self.timeout:g} s after "
                                  f"waiting began: over the job timeout ({self.limit})",
                                  job_id=self.job_id, last_status=last if self.current else "")
        return min(self._delay, left)

    def update(self, job: SegmentJob) -> None:
        """Record a poll's answer."""
        self.current = job
        self.polls += 1
        self._delay = self.schedule.next_delay(self.polls)

    def result(self, request: SegmentRequest | None) -> SegmentationResult:
        """The terminal job's result (feeds its duration to the schedule)."""
        from cogseg_ml.api.results import result_from_job

        assert self.current is not None
        self.schedule.observe((self.current.status_time - self.current.created_time) / 1000)
        return result_from_job(self.current, request)
