"""CDF unreachable or credentials refused: detected once, said once, and every item fails fast.

Counts, not times: connection attempts are counted by a transport wrapper (or the emulator's
request log), never inferred from how long a call took.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from cogseg_ml.api.client import AsyncSegmentationClient, SegmentationClient
from cogseg_ml.config import CdfConfig, ClientCredentials, RetryConfig, StaticToken
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.errors import ApiUnavailableError, AuthenticationError
from cogseg_ml.prompts import FileRef, Prompt
from tests.api.counting_transport import CountingTransport, dead_port

CONNECT_ATTEMPTS = 3  # RetryConfig's documented default
QUICK = {"backoff_base_s": 0.01, "max_backoff_s": 0.05}  # otherwise the default budget


def api_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name.startswith("cogseg_ml.api") and r.levelno >= logging.WARNING]


def thirty(name: str = "synthetic_00000.png") -> list[tuple[FileRef, Prompt]]:
    return [(FileRef(external_id=name), Prompt.of([(0.1 + 0.02 * i, 0.5)])) for i in range(30)]


def dead_config(**kw: Any) -> tuple[CdfConfig, str]:
    port = dead_port()
    cfg = CdfConfig(project="p", base_url=f"http://127.0.0.1:{port}",
                    credentials=StaticToken("t"), retry=RetryConfig(**QUICK), **kw)
    return cfg, f"127.0.0.1:{port}"


def test_the_default_connect_budget_is_small() -> None:
    assert RetryConfig().connect_attempts == CONNECT_ATTEMPTS
    assert RetryConfig().max_attempts > CONNECT_ATTEMPTS  # the budget for answers stays


# --- nothing listens ---------------------------------------------------------------------------

def test_one_call_to_a_port_nobody_listens_on_gives_up_after_the_connect_budget(
        caplog: pytest.LogCaptureFixture) -> None:
    cfg, where = dead_config()
    transport = CountingTransport()
    with caplog.at_level(logging.DEBUG), SegmentationClient(cfg, transport=transport) as client:
        with pytest.raises(ApiUnavailableError) as info:
            client.segment("a.png", points=[(0.5, 0.5)])
        attempts = transport.sent[where]
        # The session now knows: the next call fails at once, without a connection attempt.
        with pytest.raises(ApiUnavailableError) as again:
            client.file_metadata(["a.png"])
        assert transport.sent[where] == attempts
    assert 1 <= attempts <= CONNECT_ATTEMPTS
    assert transport.failed_connects(where) == attempts
    msg = str(info.value)
    assert where in msg and "unreachable" in msg and "ConnectError" in msg
    assert "unreachable since" in str(again.value)
    warnings = api_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert where in warnings[0].getMessage() and "unreachable" in warnings[0].getMessage()


@pytest.mark.parametrize("check_files", [True, False])
def test_segment_many_of_30_prompts_yields_30_errors_from_a_bounded_number_of_attempts(
        check_files: bool, caplog: pytest.LogCaptureFixture) -> None:
    cfg, where = dead_config(max_connections=4)
    transport = CountingTransport()
    with caplog.at_level(logging.DEBUG), SegmentationClient(cfg, transport=transport) as client:
        outcomes = list(client.segment_many(thirty(), check_files=check_files))
    assert len(outcomes) == 30
    assert all(isinstance(o.error, ApiUnavailableError) for o in outcomes)
    assert all(where in str(o.error) for o in outcomes)
    # One files/byids call is all a checked run sends; unchecked, the requests already in
    # flight when the outage is recognized (at most max_connections) are all that is added.
    bound = CONNECT_ATTEMPTS if check_files else CONNECT_ATTEMPTS + cfg.max_connections
    assert transport.sent[where] <= bound, transport.sent
    assert len(api_warnings(caplog)) == 1, [r.getMessage() for r in api_warnings(caplog)]


# --- one layer: what counts as unreachable, and when the state ends ---------------------------

@pytest.mark.parametrize("error", [
    httpx.ConnectError("[Errno -2] Name or service not known"),  # DNS
    httpx.ConnectTimeout("timed out"),
])
def test_dns_failure_and_connect_timeout_use_the_connect_budget(error: Exception) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise type(error)(str(error), request=request)

    cfg = CdfConfig(project="p", base_url="https://nowhere.invalid",
                    credentials=StaticToken("t"), retry=RetryConfig(**QUICK))
    with SegmentationClient(cfg, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ApiUnavailableError) as info:
            client.retrieve_job(1)
    assert len(calls) == CONNECT_ATTEMPTS
    assert "nowhere.invalid" in str(info.value) and type(error).__name__ in str(info.value)


def test_the_outage_ends_with_a_success_after_the_cool_down() -> None:
    state = {"down": True, "calls": 0}
    now = [1000.0]

    def handler(request: httpx.Request) -> httpx.Response:
        state["calls"] += 1
        if state["down"]:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200, json={"items": []})

    retry = RetryConfig(backoff_base_s=0.0, max_backoff_s=0.0, connect_backoff_s=0.0,
                        unreachable_cooldown_s=10.0)
    cfg = CdfConfig(project="p", base_url="https://cdf.invalid", credentials=StaticToken("t"),
                    retry=retry)

    async def main() -> None:
        async with AsyncSegmentationClient(cfg, transport=httpx.MockTransport(handler)) as c:
            c.health.clock = lambda: now[0]
            with pytest.raises(ApiUnavailableError):
                await c.file_metadata(["a.png"])
            assert state["calls"] == CONNECT_ATTEMPTS and c.outage is not None
            with pytest.raises(ApiUnavailableError):  # within the cool-down: nothing sent
                await c.file_metadata(["a.png"])
            assert state["calls"] == CONNECT_ATTEMPTS
            now[0] += 10.5
            state["down"] = False
            assert await c.file_metadata(["a.png"], ignore_unknown=True) == []
            assert state["calls"] == CONNECT_ATTEMPTS + 1 and c.outage is None
            state["down"] = True  # a new outage takes the whole connect budget to recognize
            with pytest.raises(ApiUnavailableError):
                await c.file_metadata(["a.png"])
            assert state["calls"] == 2 * CONNECT_ATTEMPTS + 1

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_sync_client_reports_the_outage_for_callers_that_stop_a_run() -> None:
    cfg, _ = dead_config()
    with SegmentationClient(cfg, transport=CountingTransport()) as client:
        assert client.outage is None
        with pytest.raises(ApiUnavailableError) as info:
            client.retrieve_job(1)
        outage = client.outage
    assert outage is not None and outage.host == info.value.host  # type: ignore[attr-defined]
    assert outage.since > 0


# --- the token endpoint ------------------------------------------------------------------------

def test_token_endpoint_refusing_connections_is_unavailable_naming_its_host(
        make_emulator, caplog: pytest.LogCaptureFixture) -> None:
    emu = make_emulator()
    port = dead_port()
    idp = f"127.0.0.1:{port}"
    creds = ClientCredentials(token_url=f"http://{idp}/oauth2/token", client_id="cid",
                              client_secret="s3cret-value")
    cfg = CdfConfig(project=emu.project, base_url=emu.base_url, credentials=creds,
                    retry=RetryConfig(**QUICK))
    transport = CountingTransport()
    with caplog.at_level(logging.DEBUG), SegmentationClient(cfg, transport=transport) as client:
        with pytest.raises(ApiUnavailableError) as info:
            client.segment("synthetic_00000.png", points=[(0.5, 0.5)])
        outcomes = list(client.segment_many(thirty(), check_files=False))
    msg = str(info.value)
    assert idp in msg and "token" in msg and "s3cret" not in msg
    assert not isinstance(info.value, AuthenticationError)
    assert transport.sent[idp] <= CONNECT_ATTEMPTS  # the 30 jobs sent not one more
    assert len(outcomes) == 30 and all(isinstance(o.error, ApiUnavailableError)
                                       for o in outcomes)
    assert not [e for e in emu.requests if "/api/v1/" in e.path]  # nothing reached CDF
    assert len(api_warnings(caplog)) == 1


def test_token_endpoint_answering_503_is_unavailable_naming_its_host(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("status", status=503, path_contains="/oauth2/token")])
    cfg = emu.config.with_options(retry=RetryConfig(max_attempts=3, **QUICK))
    with SegmentationClient(cfg) as client:
        with pytest.raises(ApiUnavailableError) as info:
            client.segment("synthetic_00000.png", points=[(0.5, 0.5)])
        outcomes = list(client.segment_many(thirty(), check_files=False))
    msg = str(info.value)
    assert f"127.0.0.1:{emu.port}" in msg and "token endpoint" in msg
    assert "503 Service Unavailable" in msg
    token_requests = [e for e in emu.requests if e.path == "/oauth2/token"]
    assert len(token_requests) <= 3  # one budget, not one per job
    assert len(outcomes) == 30 and all(isinstance(o.error, ApiUnavailableError)
                                       for o in outcomes)


# --- refused credentials -----------------------------------------------------------------------

def test_refused_client_secret_is_detected_once_and_names_the_credential(make_emulator) -> None:
    emu = make_emulator()
    base = emu.config
    assert isinstance(base.credentials, ClientCredentials)
    creds = ClientCredentials(base.credentials.token_url, base.credentials.client_id,
                              "s3cr3t-wrong-value")
    with SegmentationClient(base.with_options(credentials=creds)) as client:
        outcomes = list(client.segment_many(thirty(), check_files=False))
    assert len(outcomes) == 30 and all(isinstance(o.error, AuthenticationError)
                                       for o in outcomes)
    assert len([e for e in emu.requests if e.path == "/oauth2/token"]) == 1
    msg = str(outcomes[0].error)
    assert "invalid_client" in msg and base.credentials.client_id in msg
    assert "client secret" in msg and "s3cr3t" not in msg


def test_refused_static_token_is_detected_once_and_names_the_credential(make_emulator) -> None:
    emu = make_emulator()
    cfg = CdfConfig(project=emu.project, base_url=emu.base_url, max_connections=4,
                    credentials=StaticToken("emu-not-a-real-token"))
    with SegmentationClient(cfg) as client:
        outcomes = list(client.segment_many(thirty(), check_files=False))
    assert len(outcomes) == 30 and all(isinstance(o.error, AuthenticationError)
                                       for o in outcomes)
    cdf = [e for e in emu.requests if "/api/v1/" in e.path]
    assert all(e.status == 401 for e in cdf) and len(cdf) <= cfg.max_connections
    msg = str(outcomes[0].error)
    assert "static" in msg.lower() and "token" in msg and "emu-not-a-real-token" not in msg


def test_token_refused_by_cdf_after_the_refresh_is_detected_once(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("status", status=401, path_contains="/files/byids",
                                      message="Unauthorized: token rejected")])
    def byids() -> int:
        return len([e for e in emu.requests if e.path.endswith("/files/byids")])

    with SegmentationClient(emu.config) as client:
        outcomes = list(client.segment_many(thirty()))
        assert byids() == 2  # the request, and once more with a fresh token
        with pytest.raises(AuthenticationError):  # a second refusal in a row confirms it
            client.file_metadata(["synthetic_00001.png"])
        assert byids() == 4
        with pytest.raises(AuthenticationError) as info:  # remembered: nothing is sent
            client.segment("synthetic_00001.png", points=[(0.5, 0.5)])
        outcomes += list(client.segment_many(thirty(), check_files=False))
    assert len(outcomes) == 60 and all(isinstance(o.error, AuthenticationError)
                                       for o in outcomes)
    assert byids() == 4
    assert not [e for e in emu.requests if e.path.endswith("/context/vision/segment")]
    assert emu.state.tokens_issued == 3  # the first token and one fresh one per refusal
    msg = str(info.value)
    assert f"127.0.0.1:{emu.port}" in msg and "cogseg-emulator" in msg
    assert "token rejected" in msg and "401 Unauthorized" in msg


def test_403_names_the_credential_and_is_not_taken_for_all_calls(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("status", status=403, methods=frozenset({"POST"}),
                                      path_contains="/context/vision/segment",
                                      message="Resource not accessible")])
    cfg = CdfConfig(project=emu.project, base_url=emu.base_url,
                    credentials=StaticToken(emu.issue_token()))
    with SegmentationClient(cfg) as client:
        with pytest.raises(AuthenticationError) as info:
            client.segment("synthetic_00000.png", points=[(0.5, 0.5)])
        assert client.file_metadata(["synthetic_00000.png"])  # other capabilities still work
    msg = str(info.value)
    assert "denied" in msg and "static bearer token" in msg and "403 Forbidden" in msg
    assert "POST /context/vision/segment" in msg
