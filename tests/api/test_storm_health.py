"""The storm rule of SessionHealth, with an injected clock: failures in a row within a window,
ended by any good answer; a long Retry-After counts at once; one WARNING per storm when
nobody listens; listeners hear every failure while it lasts. And the pipeline's hand-over
when the storm meets the file check (``until_storm``)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.health import VISION, SessionHealth, is_storm, storm_summary
from cogseg_ml.config import RetryConfig
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.errors import ApiUnavailableError
from cogseg_ml.prompts import FileRef, Prompt

HOST = "cdf.example:443"
STORM = 4  # RetryConfig.storm_failures, documented default


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def health() -> tuple[SessionHealth, Clock, list[ApiUnavailableError]]:
    clock = Clock()
    h = SessionHealth(RetryConfig(), clock=clock, wall=lambda: 1_700_000_000.0)
    heard: list[ApiUnavailableError] = []
    h.listen([(VISION, HOST)], heard.append)
    return h, clock, heard


def fail(h: SessionHealth, n: int, reason: str = "503 Service Unavailable", **kw: Any) -> None:
    for _ in range(n):
        h.failed(VISION, HOST, reason, **kw)


def test_failures_in_a_row_make_a_storm_that_listeners_hear() -> None:
    h, _, heard = health()
    fail(h, STORM - 1)
    assert heard == []
    fail(h, 1)
    assert len(heard) == 1 and is_storm(heard[0])
    err = heard[0]
    assert isinstance(err, ApiUnavailableError) and err.status_code is None
    assert storm_summary(err) == (f"CDF's Vision API at {HOST} failed {STORM} requests in a row "
                                  f"(503 Service Unavailable x{STORM})")
    assert "handed over" in str(err)
    fail(h, 2)  # every further failure while it lasts is heard (a run that started later)
    assert len(heard) == 3


def test_failures_older_than_the_window_do_not_count() -> None:
    h, clock, heard = health()
    fail(h, STORM - 1)
    clock.t += RetryConfig().storm_window_s + 0.1
    fail(h, STORM - 1)
    assert heard == []  # never STORM within the window
    fail(h, 1)
    assert len(heard) == 1


def test_a_good_answer_ends_the_run_of_failures() -> None:
    h, _, heard = health()
    fail(h, STORM - 1)
    h.succeeded(VISION, HOST)
    fail(h, STORM - 1)
    assert heard == []
    h.failed("CDF", HOST, "503 Service Unavailable")  # another service: its own count
    assert heard == []


def test_a_retry_after_longer_than_a_call_waits_is_a_storm_by_itself() -> None:
    h, _, heard = health()
    fail(h, 1, "429 Too Many Requests with Retry-After 3600 s", status=429, decisive=True)
    assert len(heard) == 1 and heard[0].status_code == 429  # type: ignore[attr-defined]
    assert "Retry-After 3600 s" in storm_summary(heard[0])


def test_one_warning_per_storm_when_nobody_listens(caplog: pytest.LogCaptureFixture) -> None:
    h = SessionHealth(RetryConfig(), clock=Clock())
    with caplog.at_level(logging.INFO, logger="cogseg_ml.api"):
        fail(h, 3 * STORM, attempt=(2, 10))
        h.succeeded(VISION, HOST)
        fail(h, STORM, attempt=None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 2, warnings
    assert "attempt 2/10 of this call next" in warnings[0] and "10 attempts" in warnings[0]
    assert "where the retry rule allows" in warnings[1]
    assert len(infos) == 1 and "answers again" in infos[0], infos


def test_a_listened_storm_is_logged_at_info_only(caplog: pytest.LogCaptureFixture) -> None:
    h, _, heard = health()
    with caplog.at_level(logging.INFO, logger="cogseg_ml.api"):
        fail(h, STORM)
    assert heard and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_until_storm_ends_the_file_check_and_every_request_at_once(make_emulator) -> None:
    """CDF itself storms (503 to files/byids): the file check of ``segment_many`` is cut
    short and each request ends with the storm's error, none sent to the Vision API."""
    emu = make_emulator(faults=[Fault("status", status=503, path_contains="/files/byids")])
    cfg = emu.config.with_options(retry=RetryConfig(backoff_base_s=0.01, max_backoff_s=0.05))
    reqs = [(FileRef(external_id="synthetic_00000.png"), Prompt.of([(0.1 + 0.05 * i, 0.5)]))
            for i in range(10)]
    with SegmentationClient(cfg) as client:
        outcomes = list(client.segment_many(reqs, until_storm=True))
    assert len(outcomes) == 10 and all(is_storm(o.error) for o in outcomes)
    byids = sum(1 for e in emu.requests if e.path.endswith("/files/byids"))
    assert STORM <= byids < RetryConfig().max_attempts
    assert not [e for e in emu.requests if "/context/vision/" in e.path]


def test_a_storm_is_a_typed_error_that_pickles() -> None:
    import pickle

    from cogseg_ml.api.health import is_storm, storm_error, storm_summary
    from cogseg_ml.errors import ApiStormError, ApiUnavailableError

    err = storm_error("storm", service="CDF's Vision API", host="h:1", failures=4,
                      reason="503 Service Unavailable x4", since=1.0, status_code=503)
    assert isinstance(err, ApiStormError) and isinstance(err, ApiUnavailableError)
    back = pickle.loads(pickle.dumps(err))
    assert is_storm(back) and back.failures == 4 and back.status_code == 503
    assert storm_summary(back) == ("CDF's Vision API at h:1 failed 4 requests in a row "
                                   "(503 Service Unavailable x4)")
    assert not is_storm(ApiUnavailableError("down"))
