"""The segmentation client against the emulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import pickle
import threading
import time
import types
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import numpy as np
import pytest

from cogseg_ml import (
    ApiUnavailableError,
    AsyncSegmentationClient,
    AuthenticationError,
    Box,
    CdfConfig,
    ClientCredentials,
    FileRef,
    JobFailedError,
    JobTimeoutError,
    Point,
    Prompt,
    RetryConfig,
    SegmentationClient,
    SegmentRequest,
    StaticToken,
    TokenProvider,
    ValidationError,
)
from cogseg_ml.api import async_client
from cogseg_ml.api.auth import BearerAuth
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image
from cogseg_ml.errors import (
    FileValidationError,
    NotFoundError,
    PromptValidationError,
    RateLimitedError,
)
from cogseg_ml.mask_codec import decode

FAST_RETRY = RetryConfig(max_attempts=6, backoff_base_s=0.02, max_backoff_s=2.0,
                         total_timeout_s=20.0)


def fast(cfg: CdfConfig, **kw: object) -> CdfConfig:
    return cfg.with_options(retry=kw.pop("retry", FAST_RETRY), **kw)


def box_requests(images: list[SyntheticImage], repeat: int = 1) -> list[SegmentRequest]:
    return [SegmentRequest(FileRef(external_id=im.name), Prompt(box=o.box()), tag=(i, k))
            for _ in range(repeat) for i, im in enumerate(images)
            for k, o in enumerate(im.objects)]


def posts(emu: Emulator, suffix: str = "/context/vision/segment") -> int:
    return sum(1 for e in emu.requests if e.method == "POST" and e.path.endswith(suffix))


# --- happy paths and credentials ---------------------------------------------------------------


def test_segment_one_file_gives_the_exact_mask(shared_emulator: Emulator,
                                               images: list[SyntheticImage]) -> None:
    img, obj = images[0], images[0].objects[1]
    with SegmentationClient(shared_emulator.config) as client:
        result = client.segment(img.name, points=[obj.interior_point()], box=obj.box())
    best = result.item.best
    assert result.status.value == "Completed" and best is not None
    mask = decode([best.to_rle(img.height, img.width)])[0]
    assert np.array_equal(mask, obj.mask)
    assert result.items[0].file.id is not None  # the response's internal id
    assert result.duration_s >= 0


def test_create_retrieve_wait_separately(shared_emulator: Emulator,
                                         images: list[SyntheticImage]) -> None:
    with SegmentationClient(shared_emulator.config) as client:
        job = client.create_job([images[1].name], box=images[1].objects[0].box())
        assert job.status.value == "Queued" and job.bounding_box is not None
        again = client.retrieve_job(job.job_id)
        assert again.job_id == job.job_id
        result = client.wait(job.job_id, timeout=10)
        assert result.item.ok and result.job_id == job.job_id


def test_client_credentials_token_is_cached(make_emulator) -> None:
    emu = make_emulator()
    with SegmentationClient(emu.config) as client:
        for _ in range(4):
            client.file_metadata(["synthetic_00000.png"])
    assert emu.state.tokens_issued == 1


class HandClock:
    """Seconds that move only when a test moves them."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_token_refreshed_before_expiry_without_a_401(make_emulator,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    emu = make_emulator(token_ttl_s=1.0)
    # One clock for the token's expiry on both sides (the client's BearerAuth takes one, the
    # emulator's state reads one): moved, not slept through.
    emu.state.clock = clock = HandClock()
    monkeypatch.setattr(async_client, "BearerAuth", functools.partial(BearerAuth, clock=clock))
    base = emu.config
    assert isinstance(base.credentials, ClientCredentials)
    creds = ClientCredentials(base.credentials.token_url, base.credentials.client_id,
                              base.credentials.client_secret, leeway_s=0.6)
    with SegmentationClient(base.with_options(credentials=creds)) as client:
        client.file_metadata(["synthetic_00000.png"])
        clock.now += 0.51  # 0.49 s of its life left: inside the leeway (capped at half its life)
        client.file_metadata(["synthetic_00000.png"])
    assert emu.state.tokens_issued == 2
    assert all(e.status != 401 for e in emu.requests)


def test_401_mid_run_refreshes_and_resends_once(make_emulator) -> None:
    emu = make_emulator()
    with SegmentationClient(emu.config) as client:
        client.file_metadata(["synthetic_00000.png"])
        emu.set_faults(Fault("token_expiry", times=1))
        metas = client.file_metadata(["synthetic_00001.png"])
    assert metas[0].name == "synthetic_00001.png"
    assert emu.state.tokens_issued == 2
    byids = [e.status for e in emu.requests if e.path.endswith("/files/byids")]
    assert byids == [200, 401, 200]


def test_token_provider_is_called_again_after_401(make_emulator) -> None:
    emu = make_emulator()
    calls: list[str] = []

    def provider() -> str:
        calls.append("x")
        return emu.issue_token()

    cfg = CdfConfig(project=emu.project, base_url=emu.base_url,
                    credentials=TokenProvider(provider))
    with SegmentationClient(cfg) as client:
        client.file_metadata(["synthetic_00000.png"])
        emu.set_faults(Fault("token_expiry", times=1))
        client.file_metadata(["synthetic_00000.png"])
    assert len(calls) == 2


def test_static_token_401_is_an_authentication_error(make_emulator) -> None:
    emu = make_emulator()
    cfg = CdfConfig(project=emu.project, base_url=emu.base_url,
                    credentials=StaticToken("emu-not-a-real-token"))
    with SegmentationClient(cfg) as client, pytest.raises(AuthenticationError) as info:
        client.file_metadata(["synthetic_00000.png"])
    assert info.value.status_code == 401 and info.value.request_id
    assert "emu-not-a-real-token" not in str(info.value) + repr(info.value)


def test_wrong_client_secret_is_an_authentication_error(make_emulator) -> None:
    emu = make_emulator()
    base = emu.config
    assert isinstance(base.credentials, ClientCredentials)
    creds = ClientCredentials(base.credentials.token_url, base.credentials.client_id,
                              "s3cr3t-wrong-value")
    with SegmentationClient(base.with_options(credentials=creds)) as client:
        with pytest.raises(AuthenticationError) as info:
            client.file_metadata(["synthetic_00000.png"])
    assert "invalid_client" in str(info.value) and "s3cr3t" not in str(info.value)


def test_async_client_segment_and_segment_many(shared_emulator: Emulator,
                                               images: list[SyntheticImage]) -> None:
    async def main() -> tuple[bool, int]:
        async with AsyncSegmentationClient(shared_emulator.config) as client:
            one = await client.segment(images[0].name, box=images[0].objects[0].box())
            n = 0
            async for outcome in client.segment_many(box_requests(images[:2]), concurrency=4):
                n += outcome.ok
            return one.item.ok, n

    ok, n = asyncio.run(main())
    assert ok and n == sum(len(im.objects) for im in images[:2])


# --- many jobs -------------------------------------------------------------------------------


def test_segment_many_yields_every_result_with_its_tag(make_emulator,
                                                       images: list[SyntheticImage]) -> None:
    emu = make_emulator(concurrency=8)
    reqs = box_requests(images, repeat=2)
    before = len(emu.requests)
    with SegmentationClient(emu.config) as client:
        outcomes = list(client.segment_many(reqs, concurrency=16))
    assert len(outcomes) == len(reqs) and all(o.ok for o in outcomes)
    assert sorted(o.request.tag for o in outcomes) == sorted(r.tag for r in reqs)
    for o in outcomes:
        i, k = o.request.tag
        img = images[i]
        assert o.result is not None and o.result.item.best is not None
        mask = decode([o.result.item.best.to_rle(img.height, img.width)])[0]
        assert np.array_equal(mask, img.objects[k].mask)
    assert len(emu.jobs.jobs) == len(reqs)  # one job per request, none duplicated
    per_job = (len(emu.requests) - before) / len(reqs)
    assert per_job <= 3.5


def test_segment_many_under_429_and_503_loses_and_duplicates_nothing(
        make_emulator, images: list[SyntheticImage]) -> None:
    emu = make_emulator(concurrency=8, seed=3, faults=[
        Fault("status", status=429, probability=0.05, retry_after="0.05"),
        Fault("status", status=503, probability=0.05)])
    reqs = box_requests(images, repeat=2)
    with SegmentationClient(fast(emu.config)) as client:
        outcomes = list(client.segment_many(reqs, concurrency=16))
    assert all(o.ok for o in outcomes), [str(o.error) for o in outcomes if not o.ok]
    assert len(outcomes) == len(reqs)
    assert len(emu.jobs.jobs) == len(reqs)
    injected = emu.faults.injected
    assert injected.get("status", 0) > 0


def test_segment_many_reports_failures_per_item(make_emulator,
                                                images: list[SyntheticImage]) -> None:
    emu = make_emulator()
    emu.add_image(encode_image(images[0].pixels), "scan.tif", external_id="tif",
                  mime_type="image/tiff")
    reqs = box_requests(images[:1]) + [
        SegmentRequest(FileRef(external_id="missing.png"), Prompt(box=Box(0.1, 0.1, 0.2, 0.2)),
                       tag="missing"),
        SegmentRequest(FileRef(external_id="tif"), Prompt(box=Box(0.1, 0.1, 0.2, 0.2)),
                       tag="tif")]
    emu.set_faults(Fault("item_fail", times=1, message="bad pixels"))
    with SegmentationClient(emu.config) as client:
        outcomes = {o.request.tag: o for o in client.segment_many(reqs, concurrency=4)}
    assert isinstance(outcomes["missing"].error, NotFoundError)
    assert isinstance(outcomes["tif"].error, FileValidationError)
    assert "tif" in str(outcomes["tif"].error)
    failed_items = [o for o in outcomes.values() if o.result is not None and not o.ok]
    assert len(failed_items) == 1 and failed_items[0].result is not None
    assert failed_items[0].result.items[0].error == "bad pixels"
    assert sum(o.ok for o in outcomes.values()) == len(images[0].objects) - 1
    assert len(emu.jobs.jobs) == len(images[0].objects)  # nothing submitted for bad files


def test_segment_many_can_be_cancelled_part_way(make_emulator,
                                                images: list[SyntheticImage]) -> None:
    emu = make_emulator(concurrency=2, processing_time_s=0.05, project="cancelled-part-way")
    reqs = box_requests(images, repeat=3)
    threads_before = threading.active_count()
    with SegmentationClient(emu.config) as client:
        got = []
        for outcome in client.segment_many(reqs, concurrency=4):
            got.append(outcome)
            if len(got) == 3:
                break
        loops = [t for t in threading.enumerate() if t.name == f"cogseg-session-{emu.project}"]
    created = len(emu.jobs.jobs)
    # Every task of the client runs on its session's loop, whose thread closing the client
    # ended: nothing of the client can send any more. Stopped, the emulator has answered every
    # request it took in: the count is final (no pause that a late request might outlast).
    assert len(loops) == 1 and not loops[0].is_alive()
    emu.stop()
    assert len(emu.jobs.jobs) == created  # nothing submitted after the break
    assert created <= 3 + 4
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before, threading.enumerate()  # none left over


def test_segment_many_timeout_gives_timeout_outcomes(make_emulator,
                                                     images: list[SyntheticImage]) -> None:
    emu = make_emulator(processing_time_s=3.0, concurrency=8)
    with SegmentationClient(emu.config) as client:
        outcomes = list(client.segment_many(box_requests(images[:1]), timeout=0.3))
    assert outcomes and all(isinstance(o.error, JobTimeoutError) for o in outcomes)


def test_segment_many_rejects_bad_concurrency(shared_emulator: Emulator) -> None:
    with SegmentationClient(shared_emulator.config) as client, pytest.raises(ValidationError):
        list(client.segment_many([], concurrency=0))


# --- validation before sending ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"points": [(1.5, 0.5)]},
    {"points": [(0.5, float("nan"))]},
    {"points": [(0.5, 0.5, 2)]},
    {"box": (0.5, 0.1, 0.4, 0.2)},
    {},
    {"points": [(0.5, 0.5), (0.5, 0.5)]},
])
def test_bad_prompts_are_rejected_before_any_request(make_emulator, kwargs: dict) -> None:
    emu = make_emulator()
    with SegmentationClient(emu.config) as client:
        with pytest.raises(PromptValidationError):
            client.create_job("synthetic_00000.png", **kwargs)
        with pytest.raises(PromptValidationError):
            client.segment("synthetic_00000.png", **kwargs)
    assert emu.requests == [] and emu.state.tokens_issued == 0


def test_two_files_in_one_job_is_refused(shared_emulator: Emulator) -> None:
    with SegmentationClient(shared_emulator.config) as client, pytest.raises(ValidationError):
        client.create_job(["a.png", "b.png"], points=[(0.5, 0.5)])


def test_unsegmentable_file_is_named_before_a_job_is_made(make_emulator,
                                                          images: list[SyntheticImage]) -> None:
    emu = make_emulator()
    emu.add_image(encode_image(images[0].pixels), "photo.gif", external_id="gif-file",
                  mime_type="image/gif")
    with SegmentationClient(emu.config) as client:
        with pytest.raises(FileValidationError) as info:
            client.segment("gif-file", points=[(0.5, 0.5)])
    msg = str(info.value)
    assert "gif-file" in msg and "photo.gif" in msg and "image/gif" in msg
    assert posts(emu) == 0


def test_unknown_file_and_unknown_job(shared_emulator: Emulator) -> None:
    with SegmentationClient(shared_emulator.config) as client:
        with pytest.raises(NotFoundError) as info:
            client.file_metadata(["no-such-file.png"])
        assert info.value.missing == [{"externalId": "no-such-file.png"}]
        with pytest.raises(NotFoundError):
            client.retrieve_job(424242)


# --- files -----------------------------------------------------------------------------------


def test_download_returns_the_file_bytes(shared_emulator: Emulator,
                                         images: list[SyntheticImage]) -> None:
    with SegmentationClient(shared_emulator.config) as client:
        data = client.download(images[2].name)
    assert data == encode_image(images[2].pixels, "png")


def test_zero_byte_download_is_a_file_error(make_emulator) -> None:
    emu = make_emulator()
    emu.add_image(b"", "empty.png", external_id="empty")
    with SegmentationClient(emu.config) as client, pytest.raises(FileValidationError):
        client.download("empty")


# --- faults and retries ----------------------------------------------------------------------


def recorded_retry_pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the client's retries ask for, in order; none is slept through (the retry
    goes ahead at once)."""
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(async_client, "AsyncRetrying",
                        functools.partial(async_client.AsyncRetrying, sleep=pause))
    return pauses


def byids_statuses(emu: Emulator) -> list[int]:
    return [e.status for e in emu.requests if e.path.endswith("/files/byids")]


def test_retry_after_seconds_is_honoured(make_emulator,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    emu = make_emulator(faults=[Fault("status", status=429, retry_after="1", times=1,
                                      path_contains="/files/byids")])
    pauses = recorded_retry_pauses(monkeypatch)
    with SegmentationClient(fast(emu.config)) as client:
        client.file_metadata(["synthetic_00000.png"])
    assert byids_statuses(emu) == [429, 200]
    assert pauses == [1.0]  # the server's wait, not the (0.02 s based) backoff


def test_retry_after_http_date_is_honoured(make_emulator,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Ten minutes ahead (and a cap above it): the wait asked for is the date's, whatever the
    # date's one-second resolution and the seconds this test takes to get there.
    when = datetime.now(timezone.utc) + timedelta(seconds=600)
    emu = make_emulator(faults=[Fault("status", status=503, times=1, path_contains="/files/",
                                      retry_after=format_datetime(when, usegmt=True))])
    pauses = recorded_retry_pauses(monkeypatch)
    retry = dataclasses.replace(FAST_RETRY, max_backoff_s=900.0, total_timeout_s=1800.0)
    with SegmentationClient(fast(emu.config, retry=retry)) as client:
        client.file_metadata(["synthetic_00000.png"])
    assert byids_statuses(emu) == [503, 200]
    assert len(pauses) == 1 and 540 <= pauses[0] <= 600, pauses


def test_persistent_429_becomes_rate_limited_error(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("status", status=429, path_contains="/files/")])
    cfg = fast(emu.config, retry=RetryConfig(max_attempts=3, backoff_base_s=0.01))
    with SegmentationClient(cfg) as client, pytest.raises(RateLimitedError) as info:
        client.file_metadata(["synthetic_00000.png"])
    assert info.value.status_code == 429
    assert sum(e.fault == "status-429" for e in emu.requests) == 3


@pytest.mark.parametrize("status", [502, 504, 500])
def test_create_is_not_retried_after_a_status_that_may_have_created_a_job(
        make_emulator, status: int) -> None:
    emu = make_emulator(faults=[Fault("status", status=status, times=1,
                                      path_contains="/context/vision/segment")])
    with SegmentationClient(fast(emu.config)) as client, pytest.raises(ApiUnavailableError):
        client.create_job("synthetic_00000.png", points=[(0.5, 0.5)])
    assert posts(emu) == 1


def test_create_is_retried_after_503_and_429(make_emulator) -> None:
    emu = make_emulator(faults=[
        Fault("status", status=503, times=1, path_contains="/context/vision/segment"),
        Fault("status", status=429, times=1, path_contains="/context/vision/segment")])
    with SegmentationClient(fast(emu.config)) as client:
        job = client.create_job("synthetic_00000.png", points=[(0.5, 0.5)])
    assert job.job_id and posts(emu) == 3 and len(emu.jobs.jobs) == 1


def test_create_retry_always_accepts_possible_duplicates(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("drop", after=True, times=1,
                                      path_contains="/context/vision/segment")])
    retry = RetryConfig(max_attempts=4, backoff_base_s=0.01, create_retry="always")
    with SegmentationClient(fast(emu.config, retry=retry)) as client:
        client.create_job("synthetic_00000.png", points=[(0.5, 0.5)])
    assert len(emu.jobs.jobs) == 2  # the dropped attempt had created one


def test_dropped_create_is_not_retried_by_default(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("drop", after=True, times=1,
                                      path_contains="/context/vision/segment")])
    with SegmentationClient(fast(emu.config)) as client, pytest.raises(ApiUnavailableError):
        client.create_job("synthetic_00000.png", points=[(0.5, 0.5)])
    assert len(emu.jobs.jobs) == 1  # the job exists; a blind retry would have made two


def test_reads_are_retried_after_drops_and_5xx(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("drop", times=1, methods=frozenset({"GET"})),
                                Fault("status", status=502, times=1, methods=frozenset({"GET"}))])
    with SegmentationClient(fast(emu.config)) as client:
        result = client.segment("synthetic_00000.png", points=[(0.5, 0.5)], timeout=10)
    assert result.job_id
    assert emu.faults.injected == {"drop": 1, "status": 1}


def test_slow_response_read_timeout_retries_a_read(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("delay", delay_s=1.0, times=1,
                                      path_contains="/files/byids")])
    with SegmentationClient(fast(emu.config, timeout_s=0.3)) as client:
        metas = client.file_metadata(["synthetic_00000.png"])
    assert metas[0].name == "synthetic_00000.png"
    deadline = time.monotonic() + 3  # the delayed first attempt is logged when it ends
    while sum(e.path.endswith("/files/byids") for e in emu.requests) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_unreachable_service_is_api_unavailable(images: list[SyntheticImage]) -> None:
    emu = Emulator(images=images[:1]).start()
    cfg = emu.static_config()
    emu.stop()
    retry = RetryConfig(max_attempts=3, backoff_base_s=0.01)
    with SegmentationClient(cfg.with_options(retry=retry)) as client:
        with pytest.raises(ApiUnavailableError) as info:
            client.file_metadata(["synthetic_00000.png"])
    assert "ConnectError" in str(info.value)


def test_job_failure_and_item_failure(make_emulator) -> None:
    emu = make_emulator(faults=[Fault("job_fail", times=1, message="GPU fell over")])
    with SegmentationClient(emu.config) as client:
        with pytest.raises(JobFailedError) as info:
            client.segment("synthetic_00000.png", points=[(0.5, 0.5)])
        assert info.value.server_message == "GPU fell over" and info.value.job_id
        emu.set_faults(Fault("item_fail", times=1, message="cannot decode"))
        result = client.segment("synthetic_00000.png", points=[(0.5, 0.5)])
        assert result.items[0].error == "cannot decode" and not result.items[0].ok
        with pytest.raises(JobFailedError, match="cannot decode"):
            _ = result.item


def test_wait_timeout(make_emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = make_emulator(processing_time_s=3.0)
    # The session's clock moves only by the pauses wait() asks for between its polls.
    clock = HandClock()
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        clock.now += seconds

    monkeypatch.setattr(async_client, "SessionHealth",
                        functools.partial(async_client.SessionHealth, clock=clock))
    monkeypatch.setattr(async_client, "asyncio",
                        types.SimpleNamespace(**{**vars(asyncio), "sleep": pause}))
    with SegmentationClient(emu.config) as client:
        job = client.create_job("synthetic_00000.png", points=[(0.5, 0.5)])
        with pytest.raises(JobTimeoutError) as info:
            client.wait(job, timeout=0.4)
    assert info.value.job_id == job.job_id and info.value.last_status in ("Queued", "Running")
    # It gave up at its timeout: its pauses add up to the 0.4 s, the last one cut to fit.
    assert pauses and sum(pauses) == pytest.approx(0.4), pauses
    polls = [e for e in emu.requests if e.path.endswith(f"/segment/{job.job_id}")]
    assert len(polls) == len(pauses)  # a poll after each pause


# --- config and secrets ----------------------------------------------------------------------


def test_config_pickles_and_hides_secrets(shared_emulator: Emulator) -> None:
    cfg = shared_emulator.config
    assert isinstance(cfg.credentials, ClientCredentials)
    secret = cfg.credentials.client_secret.reveal()
    clone = pickle.loads(pickle.dumps(cfg))
    assert clone == cfg
    assert secret not in repr(cfg) and secret not in str(cfg.credentials)
    with SegmentationClient(clone) as client:
        assert secret not in repr(client)
        assert client.file_metadata(["synthetic_00000.png"])


def test_secrets_never_reach_debug_logs(make_emulator, caplog: pytest.LogCaptureFixture) -> None:
    emu = make_emulator(faults=[Fault("token_expiry", times=1), Fault("status", status=503,
                                                                      times=1)])
    cfg = emu.config
    assert isinstance(cfg.credentials, ClientCredentials)
    secret = cfg.credentials.client_secret.reveal()
    with caplog.at_level(logging.DEBUG):
        with SegmentationClient(fast(cfg)) as client:
            client.segment("synthetic_00000.png", points=[(0.5, 0.5)])
            token = client._auth._token
    assert token and caplog.records
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in text and token not in text


def test_from_env_reads_common_variable_names() -> None:
    env = {"COGNITE_PROJECT": "p", "COGNITE_BASE_URL": "https://x.cognitedata.com",
           "COGNITE_CLIENT_ID": "cid", "COGNITE_CLIENT_SECRET": "shh",
           "COGNITE_TOKEN_URL": "https://login.example/token",
           "COGNITE_TOKEN_SCOPES": "a,b"}
    cfg = CdfConfig.from_env(env)
    assert isinstance(cfg.credentials, ClientCredentials)
    assert cfg.credentials.scopes == ("a", "b") and "shh" not in repr(cfg)
    tok = CdfConfig.from_env({"COGNITE_PROJECT": "p", "COGNITE_CLUSTER": "westeurope-1",
                              "COGNITE_TOKEN": "abc"})
    assert tok.base_url == "https://westeurope-1.cognitedata.com"
    assert isinstance(tok.credentials, StaticToken)
    default_scope = CdfConfig.from_env({k: v for k, v in env.items()
                                        if k != "COGNITE_TOKEN_SCOPES"})
    assert isinstance(default_scope.credentials, ClientCredentials)
    assert default_scope.credentials.scopes == ("https://x.cognitedata.com/.default",)
    with pytest.raises(ValidationError) as info:
        CdfConfig.from_env({"COGNITE_PROJECT": "p"})
    assert "COGNITE_BASE_URL" in str(info.value) and "COGNITE_CLIENT_ID" in str(info.value)


def test_point_and_box_in_prompts_are_sent_as_given(make_emulator) -> None:
    emu = make_emulator()
    with SegmentationClient(emu.config) as client:
        job = client.create_job(FileRef(external_id="synthetic_00000.png"),
                                points=[Point(0.25, 0.5, 1), Point(0.75, 0.5, 0)],
                                box=Box(0.1, 0.2, 0.9, 0.8))
    rec = emu.job(job.job_id)
    assert rec.prompt.points == (Point(0.25, 0.5, 1), Point(0.75, 0.5, 0))
    assert rec.prompt.box == Box(0.1, 0.2, 0.9, 0.8)
