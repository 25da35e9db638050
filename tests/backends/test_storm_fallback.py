"""A Vision API that answers nothing but failures: the session recognizes the storm across its
jobs, and FallbackBackend hands every queued and in-flight job to the local model at once.

Counts, not times: how many requests reached the emulator's segment routes before the
hand-over (a storm is a handful of failures in a row, not a retry budget per job), and how
many WARNINGs were logged. The breaker's clock is injected; no test sleeps.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.backends.base import BackendJob, BackendOutcome
from cogseg_ml.backends.fallback import CircuitBreaker, FallbackBackend
from cogseg_ml.config import RetryConfig
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.errors import ApiUnavailableError
from cogseg_ml.prompts import FileRef, Prompt
from tests.box_backend import BoxBackend

#: The default budget for answers, with short waits so that a test of the old behaviour (each
#: job spending its own budget) ends in seconds; the storm rule does not depend on the waits.
QUICK = {"backoff_base_s": 0.01, "max_backoff_s": 0.05}
STORM = 4  # RetryConfig.storm_failures, documented default
JOBS = 9
#: What may reach the segment routes before the hand-over: the jobs' first requests (sent
#: together) and, at most, as many again already retried when the storm was recognized.
BOUND = 2 * JOBS
SEGMENT = "/context/vision/segment"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def nine_jobs(images: list[SyntheticImage]) -> list[BackendJob]:
    """Nine prompts on three images; the files already checked (as the labeler does)."""
    return [BackendJob(SegmentRequest(FileRef(external_id=im.name), Prompt(box=o.box()),
                                      tag=(im.name, i)),
                       im.height, im.width, f"{im.name}-{i}", lambda: b"", file_checked=True)
            for im in images[:3] for i, o in enumerate(im.objects)]


def segment_requests(emu: Emulator, method: str | None = None) -> int:
    return sum(1 for e in emu.requests
               if SEGMENT in e.path and (method is None or e.method == method))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("cogseg_ml") and r.levelno >= logging.WARNING]


def fallback(cfg: Any, clock: Clock | None = None, **kw: Any
             ) -> tuple[FallbackBackend, ApiBackend, BoxBackend]:
    api = ApiBackend(cfg)
    local = BoxBackend()
    fb = FallbackBackend(api, local, breaker=CircuitBreaker(cooldown_s=30, clock=clock or Clock()),
                         **kw)
    return fb, api, local


def test_the_storm_rule_has_documented_defaults() -> None:
    retry = RetryConfig()
    assert (retry.storm_failures, retry.storm_window_s, retry.stall_s) == (STORM, 10.0, 3.0)


STORMS = {
    "503": Fault("status", status=503, path_contains=SEGMENT),
    "500": Fault("status", status=500, path_contains=SEGMENT),
    "502": Fault("status", status=502, path_contains=SEGMENT),
    "504": Fault("status", status=504, path_contains=SEGMENT),
    # Retry-After beyond the longest wait of one call (max_backoff_s): a storm by itself.
    "429-retry-after-30": Fault("status", status=429, retry_after="30", path_contains=SEGMENT),
}


@pytest.mark.parametrize("kind", list(STORMS))
@pytest.mark.parametrize("phase", ["POST", "GET"])
def test_a_storm_hands_every_job_to_the_local_model_after_a_few_requests(
        make_emulator, images, caplog: pytest.LogCaptureFixture, kind: str, phase: str) -> None:
    """POST: the storm meets the jobs' creation; GET: the jobs were created and the storm
    meets their polls (the jobs are in flight)."""
    emu = make_emulator()
    f = STORMS[kind]
    emu.set_faults(Fault(f.kind, status=f.status, retry_after=f.retry_after,
                         path_contains=SEGMENT, methods=frozenset({phase})))
    fb, api, local = fallback(emu.config.with_options(retry=RetryConfig(**QUICK)))
    with caplog.at_level(logging.INFO):
        outs = list(fb.run(nine_jobs(images)))
    api.close()
    assert len(outs) == JOBS and local.jobs == JOBS
    assert all(o.result is not None and o.result.backend == "box-model" for o in outs)
    if phase == "GET":
        assert segment_requests(emu, "POST") == JOBS  # created once each, then handed over
    assert segment_requests(emu, phase) <= BOUND, Counter(
        (e.method, e.status) for e in emu.requests)
    said = warnings(caplog)
    assert len(said) == 1, said  # one switch, one WARNING
    assert "local model" in said[0] and str(f.status) in said[0], said
    # Five failures in a row, or one 429 asking to wait longer than a call would.
    assert ("Retry-After 30 s" if f.status == 429 else "in a row") in said[0], said
    assert fb.breaker.state == "open"


class _PathCounting(httpx.AsyncBaseTransport):
    """The network transport, counting how requests to the segment routes ended."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.ended: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            resp = await self.inner.handle_async_request(request)
        except Exception as exc:
            if SEGMENT in request.url.path:
                with self._lock:
                    self.ended[type(exc).__name__] += 1
            raise
        if SEGMENT in request.url.path:
            with self._lock:
                self.ended[str(resp.status_code)] += 1
        return resp

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Watching(BoxBackend):
    """The local model, noting how the segment requests had ended when jobs reached it."""

    def __init__(self, transport: _PathCounting) -> None:
        super().__init__()
        self.transport = transport
        self.seen: Counter[str] | None = None

    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        if self.seen is None:
            self.seen = Counter(self.transport.ended)
        yield from super().run(jobs)


def test_requests_that_get_no_answer_hand_the_jobs_over_before_they_time_out(
        make_emulator, images, caplog: pytest.LogCaptureFixture) -> None:
    """A server that stops answering: the jobs go to the local model once ``stall_s`` has
    passed for enough requests, while the requests themselves (timeout 5 s, answer after 2 s)
    are still waiting: none of them had ended when the local model got the jobs."""
    emu = make_emulator()
    emu.set_faults(Fault("delay", delay_s=2.0, path_contains=SEGMENT))
    transport = _PathCounting()
    cfg = emu.config.with_options(timeout_s=5.0, retry=RetryConfig(stall_s=0.2, **QUICK))
    api = ApiBackend(SegmentationClient(cfg, transport=transport))
    local = _Watching(transport)
    fb = FallbackBackend(api, local, breaker=CircuitBreaker(cooldown_s=30, clock=Clock()))
    with caplog.at_level(logging.INFO):
        outs = list(fb.run(nine_jobs(images)))
    api.close()
    assert len(outs) == JOBS and local.jobs == JOBS
    assert local.seen == Counter(), local.seen  # handed over while all were still waiting
    said = warnings(caplog)
    assert len(said) == 1 and "no answer within 0.2 s" in said[0], said


def test_requests_that_time_out_make_a_storm(make_emulator, images) -> None:
    """Polls that time out (0.3 s) against a server that answers after 3 s."""
    emu = make_emulator()
    emu.set_faults(Fault("delay", delay_s=3.0, path_contains=SEGMENT,
                         methods=frozenset({"GET"})))
    fb, api, local = fallback(emu.config.with_options(timeout_s=0.3, retry=RetryConfig(**QUICK)))
    outs = list(fb.run(nine_jobs(images)))
    api.close()
    assert len(outs) == JOBS and local.jobs == JOBS
    assert segment_requests(emu, "POST") == JOBS
    # Each poll sent is logged by the emulator when its delay ends, answered or not.
    emu.stop()
    assert segment_requests(emu, "GET") <= BOUND


def test_the_api_is_probed_after_the_cool_down_and_used_again_once_it_answers(
        make_emulator, images, caplog: pytest.LogCaptureFixture) -> None:
    emu = make_emulator()
    clock = Clock()
    fb, api, local = fallback(emu.config.with_options(retry=RetryConfig(**QUICK)), clock)
    jobs = nine_jobs(images)
    emu.set_faults(Fault("status", status=503, path_contains=SEGMENT))
    with caplog.at_level(logging.INFO):
        assert len(list(fb.run(jobs))) == JOBS  # the storm: all to the local model
        assert local.jobs == JOBS and len(warnings(caplog)) == 1
        first = segment_requests(emu)
        assert list(fb.run(jobs[:3])) and local.jobs == JOBS + 3  # within the cool-down
        assert segment_requests(emu) == first  # nothing was sent
        clock.t = 31  # half-open: the next jobs probe the API; it still storms
        assert len(list(fb.run(jobs))) == JOBS and local.jobs == 2 * JOBS + 3
        assert segment_requests(emu) - first <= BOUND
        assert len(warnings(caplog)) == 1  # still on the local model: nothing new to say
        emu.set_faults()
        clock.t = 62
        outs = list(fb.run(jobs))
    api.close()
    assert [o.result.backend for o in outs if o.result] == ["cdf-api"] * JOBS
    assert local.jobs == 2 * JOBS + 3 and fb.breaker.state == "closed"
    said = warnings(caplog)
    assert len(said) == 2 and "available again" in said[1], said


# --- API-only: the retry budget stays, and a storm is said once, early -----------------------

class _FirstWarning(logging.Handler):
    """Notes how many segment requests the emulator had answered at the first WARNING."""

    def __init__(self, emu: Emulator) -> None:
        super().__init__(logging.WARNING)
        self.emu = emu
        self.answered_then: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.answered_then is None and record.name.startswith("cogseg_ml"):
            self.answered_then = segment_requests(self.emu)


@pytest.mark.parametrize("mode", ["api-only", "client"])
def test_api_only_keeps_the_retry_budget_and_says_the_storm_once_early(
        make_emulator, images, caplog: pytest.LogCaptureFixture, mode: str) -> None:
    emu = make_emulator(faults=[Fault("status", status=503, path_contains=SEGMENT)])
    cfg = emu.config.with_options(retry=RetryConfig(**QUICK))
    early = _FirstWarning(emu)
    logging.getLogger("cogseg_ml").addHandler(early)
    try:
        with caplog.at_level(logging.INFO):
            if mode == "api-only":
                api = ApiBackend(cfg)
                fb = FallbackBackend(api, None, mode="api-only")
                errors = [o.error for o in fb.run(nine_jobs(images))]
                api.close()
            else:
                with SegmentationClient(cfg) as client:
                    errors = [o.error for o in client.segment_many(
                        [(j.request.file, j.request.prompt) for j in nine_jobs(images)],
                        check_files=False)]
    finally:
        logging.getLogger("cogseg_ml").removeHandler(early)
    assert len(errors) == JOBS and all(isinstance(e, ApiUnavailableError) for e in errors)
    # Each job kept its whole budget for answers: RetryConfig.max_attempts creates.
    assert segment_requests(emu, "POST") == JOBS * RetryConfig().max_attempts
    said = warnings(caplog)
    assert len(said) == 1, said
    msg = said[0]
    assert f"127.0.0.1:{emu.port}" in msg and "503 Service Unavailable" in msg, msg
    assert f"{STORM} requests in a row" in msg and "retrying" in msg, msg
    assert f"/{RetryConfig().max_attempts}" in msg, msg
    # Said when the storm was recognized, in the first round of requests: not at the end.
    assert early.answered_then is not None and STORM <= early.answered_then <= BOUND


class _AnsweredBeforeTheStorm(BoxBackend):
    """A primary whose jobs all failed with plain server errors that arrived before the
    session named the storm (their requests were in flight together), while the session does
    see the storm now: the order concurrent answers take under load."""

    name = "api"

    def __init__(self) -> None:
        super().__init__()
        from cogseg_ml.api.health import storm_error

        self.current = storm_error("storm", service="CDF's Vision API", host="h:1",
                                   failures=9, reason="500 Internal Server Error x9", since=1.0,
                                   status_code=500)

    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        for job in jobs:
            yield BackendOutcome(job, error=ApiUnavailableError("server error: injected fault"))

    def storm(self) -> Any:
        return self.current


def test_the_switch_names_the_storm_even_when_every_answer_came_before_it(
        images: list[SyntheticImage], caplog: pytest.LogCaptureFixture) -> None:
    local = BoxBackend()
    fb = FallbackBackend(_AnsweredBeforeTheStorm(), local,
                         breaker=CircuitBreaker(cooldown_s=30, clock=Clock()))
    with caplog.at_level(logging.INFO):
        outs = list(fb.run(nine_jobs(images)))
    assert len(outs) == JOBS and local.jobs == JOBS
    said = warnings(caplog)
    assert len(said) == 1 and "in a row" in said[0] and "500" in said[0], said
