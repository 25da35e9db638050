"""When to poll a job next: an adaptive schedule informed by observed job durations (pure).

The first poll of a job comes when a typical job would be done: the running mean of the
server-side durations (``statusTime - createdTime``) of jobs seen to finish, scaled by
``first_poll_factor`` (before any job has finished, ``PollConfig.initial_s``). A job not done by
then is polled again after a short interval that grows by ``growth`` up to ``max_interval_s``.
Durations include queueing, so the schedule follows the server's load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cogseg_ml.config import PollConfig

__all__ = ["PollSchedule"]


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
