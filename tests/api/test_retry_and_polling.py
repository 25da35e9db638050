"""Pure decisions: which failures are retried, Retry-After parsing, the poll schedule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from cogseg_ml.api.job_polling import PollSchedule
from cogseg_ml.api.retry_policy import RetryableStatus, is_retryable, parse_retry_after
from cogseg_ml.config import PollConfig


def status(code: int) -> RetryableStatus:
    return RetryableStatus(httpx.Response(code), None)


@pytest.mark.parametrize("exc,read,create_safe,create_always", [
    (status(429), True, True, True),
    (status(503), True, True, True),
    (status(502), True, False, True),
    (status(504), True, False, True),
    (httpx.ConnectError("refused"), True, True, True),
    (httpx.ConnectTimeout("slow"), True, True, True),
    (httpx.PoolTimeout("busy"), True, True, True),
    (httpx.ReadTimeout("slow"), True, False, True),
    (httpx.RemoteProtocolError("dropped"), True, False, True),
    (httpx.ReadError("reset"), True, False, True),
    (ValueError("bug"), False, False, False),
])
def test_retry_rule(exc: BaseException, read: bool, create_safe: bool,
                    create_always: bool) -> None:
    assert is_retryable(exc, "read") is read
    assert is_retryable(exc, "create", "safe") is create_safe
    assert is_retryable(exc, "create", "always") is create_always


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(7.0)
    assert parse_retry_after(format_datetime(now - timedelta(seconds=9), usegmt=True),
                             now=now.timestamp()) == 0.0
    assert parse_retry_after("-4") == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


def test_poll_schedule_adapts_to_observed_durations() -> None:
    s = PollSchedule(PollConfig(initial_s=0.25, min_interval_s=0.05, max_interval_s=5.0,
                                growth=2.0))
    assert s.first_delay() == 0.25
    for _ in range(20):
        s.observe(2.0)
    assert s.first_delay() == pytest.approx(2.0 * s.first_poll_factor, rel=0.01)
    delays = [s.next_delay(n) for n in range(1, 8)]
    assert delays == sorted(delays) and delays[0] == pytest.approx(0.5)
    assert delays[-1] == 5.0  # capped
    s.observe(-1.0)  # nonsense is ignored
    assert s.observed == 20
    fast = PollSchedule()
    fast.observe(0.001)
    assert fast.first_delay() == fast.config.min_interval_s


ENV = {"COGNITE_PROJECT": "p", "COGNITE_BASE_URL": "https://segment.example.com",
       "COGNITE_TOKEN": "t"}


def test_the_longest_poll_interval_comes_from_the_environment() -> None:
    """``COGSEG_POLL_MAX_S`` caps the client's poll intervals (one's own segment service answers
    a poll in a millisecond); without it the default stays."""
    from cogseg_ml.config import CdfConfig

    assert CdfConfig.from_env(ENV).poll == PollConfig()
    assert CdfConfig.from_env({**ENV, "COGSEG_POLL_MAX_S": " "}).poll == PollConfig()  # unset
    cfg = CdfConfig.from_env({**ENV, "COGSEG_POLL_MAX_S": "0.5"})
    assert cfg.poll.max_interval_s == 0.5
    schedule = PollSchedule(cfg.poll)
    assert max(schedule.next_delay(n) for n in range(1, 30)) == 0.5
    schedule.observe(60.0)  # a job that took a minute: still polled every half second
    assert schedule.first_delay() == 0.5 and schedule.next_delay(10) == 0.5


@pytest.mark.parametrize("raw", ["soon", "0", "-1", "nan", "inf", "0.01"])
def test_a_bad_longest_poll_interval_is_refused_by_name(raw: str) -> None:
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.errors import ValidationError

    with pytest.raises(ValidationError) as info:
        CdfConfig.from_env({**ENV, "COGSEG_POLL_MAX_S": raw})
    assert "COGSEG_POLL_MAX_S" in str(info.value) and repr(raw) in str(info.value)
