"""A job that never finishes (stuck Queued or Running) fails with JobTimeoutError after
``RetryConfig.job_timeout_s`` (documented default: 900 s) instead of holding the caller forever.

The session's clock is injected: it moves a minute each time it is read, so the default
limit passes within a few polls and no test waits for it. ``asyncio.wait_for`` only guards
against the old behaviour (waiting forever); no assertion is about elapsed time.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from cogseg_ml.api.client import AsyncSegmentationClient
from cogseg_ml.config import PollConfig, RetryConfig
from cogseg_ml.errors import JobTimeoutError, ValidationError
from cogseg_ml.prompts import FileRef, Prompt

DEFAULT = 900.0
FAST_POLLS = PollConfig(initial_s=0.01, min_interval_s=0.01, max_interval_s=0.02)
GUARD_S = 60  # the old behaviour waited forever; this ends such a test as a failure


class Minutes:
    """A monotonic clock that moves 60 s every time it is read."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.t += 60.0
        return self.t


def test_the_job_timeout_has_a_documented_default_and_is_checked() -> None:
    assert RetryConfig().job_timeout_s == DEFAULT
    assert RetryConfig(job_timeout_s=None).job_timeout_s is None  # wait as long as it takes
    assert RetryConfig(job_timeout_s=5).job_timeout_s == 5
    for bad in (0, -1, math.nan, math.inf, "600", True):
        with pytest.raises(ValidationError, match="job_timeout_s"):
            RetryConfig(job_timeout_s=bad)  # type: ignore[arg-type]


def stuck(make_emulator: Any) -> Any:
    """An emulator whose jobs never end (the first 8 stay Running, the rest Queued)."""
    emu = make_emulator(concurrency=8)
    emu.jobs.end_limit = 0
    return emu


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=GUARD_S))


def test_segment_many_fails_each_stuck_job_with_a_typed_error_after_the_default(
        make_emulator) -> None:
    emu = stuck(make_emulator)
    cfg = emu.config.with_options(poll=FAST_POLLS)
    reqs = [(FileRef(external_id="synthetic_00000.png"), Prompt.of([(0.1 + 0.05 * i, 0.5)]))
            for i in range(10)]

    async def main() -> list[Any]:
        async with AsyncSegmentationClient(cfg) as client:
            client.health.clock = Minutes()
            return [o async for o in client.segment_many(reqs, check_files=False)]

    outcomes = run(main())
    assert len(outcomes) == 10
    errors = [o.error for o in outcomes]
    assert all(isinstance(e, JobTimeoutError) for e in errors), errors
    assert {e.last_status for e in errors} <= {"Queued", "Running"}  # type: ignore[union-attr]
    assert "Running" in {e.last_status for e in errors}  # type: ignore[union-attr]
    assert all(o.job_id is not None and o.job_id == o.error.job_id  # type: ignore[union-attr]
               for o in outcomes)
    msg = str(errors[0])
    assert "900 s" in msg and "job_timeout_s" in msg, msg


def test_segment_and_wait_fail_a_stuck_job_after_the_default(make_emulator) -> None:
    emu = stuck(make_emulator)
    cfg = emu.config.with_options(poll=FAST_POLLS)

    async def main() -> tuple[JobTimeoutError, JobTimeoutError]:
        async with AsyncSegmentationClient(cfg) as client:
            client.health.clock = Minutes()
            with pytest.raises(JobTimeoutError) as one:
                await client.segment("synthetic_00000.png", points=[(0.5, 0.5)])
            job = await client.create_job("synthetic_00000.png", points=[(0.5, 0.5)])
            with pytest.raises(JobTimeoutError) as two:
                await client.wait(job)
            return one.value, two.value

    one, two = run(main())
    assert one.last_status == "Running" and two.last_status == "Running"
    assert "900 s" in str(one) and "900 s" in str(two)


def test_a_configured_job_timeout_is_used(make_emulator) -> None:
    emu = stuck(make_emulator)
    cfg = emu.config.with_options(poll=FAST_POLLS, retry=RetryConfig(job_timeout_s=120))
    clock = Minutes()

    async def main() -> JobTimeoutError:
        async with AsyncSegmentationClient(cfg) as client:
            client.health.clock = clock
            with pytest.raises(JobTimeoutError) as info:
                await client.segment("synthetic_00000.png", points=[(0.5, 0.5)],
                                     check_file=False)
            return info.value

    err = run(main())
    assert "120 s" in str(err) and err.last_status == "Running"
