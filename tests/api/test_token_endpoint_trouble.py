"""A token endpoint that answers 5xx or drops the connection: the first failure is said at
once (what the session waits for), and the session gives up after
``RetryConfig.token_attempts`` failed token requests in a row, not after each call's budget.

Counts, not times: token requests are counted in the emulator's request log, including at
the moment the first WARNING was logged.
"""

from __future__ import annotations

import logging

import pytest

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.config import RetryConfig
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.errors import ApiUnavailableError, AuthenticationError, CdfUnreachableError
from cogseg_ml.prompts import FileRef, Prompt

QUICK = {"backoff_base_s": 0.01, "max_backoff_s": 0.05}  # otherwise the default budget
TOKEN = "/oauth2/token"
BUDGET = 5  # RetryConfig.token_attempts, documented default


def token_requests(emu: Emulator) -> int:
    return sum(1 for e in emu.requests if e.path == TOKEN)


class _AtWarning(logging.Handler):
    """Notes how many token requests the emulator had answered at each WARNING."""

    def __init__(self, emu: Emulator) -> None:
        super().__init__(logging.WARNING)
        self.emu = emu
        self.seen: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("cogseg_ml"):
            self.seen.append((token_requests(self.emu), record.getMessage()))


@pytest.fixture
def at_warning() -> object:
    handlers: list[logging.Handler] = []

    def attach(emu: Emulator) -> _AtWarning:
        h = _AtWarning(emu)
        logging.getLogger("cogseg_ml").addHandler(h)
        handlers.append(h)
        return h

    yield attach
    for h in handlers:
        logging.getLogger("cogseg_ml").removeHandler(h)


def test_the_token_budget_has_a_documented_default() -> None:
    assert RetryConfig().token_attempts == BUDGET


FAULTS = {
    "500": (Fault("status", status=500, path_contains=TOKEN), "500 Internal Server Error"),
    "503": (Fault("status", status=503, path_contains=TOKEN), "503 Service Unavailable"),
    "drop": (Fault("drop", path_contains=TOKEN), "did not answer"),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_a_failing_token_endpoint_is_said_at_once_and_given_up_after_its_budget(
        make_emulator, at_warning, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    fault, said = FAULTS[kind]
    emu = make_emulator(faults=[fault])
    seen = at_warning(emu)
    cfg = emu.config.with_options(retry=RetryConfig(**QUICK))  # 10 attempts per call
    secret = emu.client_secret.reveal()
    with caplog.at_level(logging.DEBUG), SegmentationClient(cfg) as client:
        with pytest.raises(ApiUnavailableError) as info:
            client.file_metadata(["synthetic_00000.png"])
        spent = token_requests(emu)
        with pytest.raises(CdfUnreachableError):  # the session knows now: nothing is sent
            client.segment("synthetic_00000.png", points=[(0.5, 0.5)])
        assert token_requests(emu) == spent
    assert not isinstance(info.value, AuthenticationError)
    assert spent == BUDGET  # the token budget, not the call's ten attempts
    host = f"127.0.0.1:{emu.port}"
    assert str(info.value).count(host) >= 1 and "token endpoint" in str(info.value)
    # What it waits for, said after the first failed token request.
    first_at, first = seen.seen[0]
    assert first_at == 1, seen.seen
    assert "token endpoint" in first and host in first and said in first, first
    assert f"retrying (attempt 2/{BUDGET}" in first, first
    # One WARNING per state change: failing, then given up.
    assert len(seen.seen) == 2, seen.seen
    assert "unavailable" in seen.seen[1][1] and seen.seen[1][0] == BUDGET
    assert not [r for r in caplog.records if secret in r.getMessage()]
    assert secret not in str(info.value)


def test_thirty_jobs_spend_one_token_budget_between_them(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("status", status=500, path_contains=TOKEN)])
    cfg = emu.config.with_options(retry=RetryConfig(**QUICK))
    prompts = [(FileRef(external_id="synthetic_00000.png"), Prompt.of([(0.1 + 0.02 * i, 0.5)]))
               for i in range(30)]
    with SegmentationClient(cfg) as client:
        outcomes = list(client.segment_many(prompts, check_files=False))
    assert len(outcomes) == 30
    assert all(isinstance(o.error, ApiUnavailableError) for o in outcomes)
    assert token_requests(emu) == BUDGET
    assert not [e for e in emu.requests if "/api/v1/" in e.path]  # nothing reached CDF


def test_a_token_endpoint_that_recovers_within_the_budget_is_used(
        make_emulator, at_warning, caplog: pytest.LogCaptureFixture) -> None:
    emu = make_emulator(faults=[Fault("status", status=500, path_contains=TOKEN,
                                      times=BUDGET - 1)])
    seen = at_warning(emu)
    cfg = emu.config.with_options(retry=RetryConfig(**QUICK))
    with caplog.at_level(logging.INFO), SegmentationClient(cfg) as client:
        assert client.file_metadata(["synthetic_00000.png"])
        assert client.outage is None
    assert token_requests(emu) == BUDGET
    assert len(seen.seen) == 1 and seen.seen[0][0] == 1  # said once, at the first failure
    assert any("token endpoint" in r.getMessage() and "answers again" in r.getMessage()
               for r in caplog.records if r.levelno == logging.INFO)


def test_a_token_endpoint_that_does_not_answer_is_said_while_waiting(
        make_emulator, at_warning) -> None:
    """An answer that takes longer than ``stall_s`` (here 0.2 s; it comes after 1.5 s): a
    WARNING says what the session waits for before the answer comes."""
    emu = make_emulator(faults=[Fault("delay", delay_s=1.5, path_contains=TOKEN, times=1)])
    seen = at_warning(emu)
    cfg = emu.config.with_options(retry=RetryConfig(stall_s=0.2, **QUICK))
    with SegmentationClient(cfg) as client:
        assert client.file_metadata(["synthetic_00000.png"])
    assert len(seen.seen) == 1, seen.seen
    answered_then, msg = seen.seen[0]
    assert answered_then == 0  # said while the token request was still waiting
    assert "token endpoint" in msg and "has not answered" in msg and "0.2 s" in msg, msg
    assert token_requests(emu) == 1
