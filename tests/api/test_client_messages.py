"""What the client says when the input or the credentials are wrong: the error names the cause."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from cogseg_ml.api.client import AsyncSegmentationClient, SegmentationClient
from cogseg_ml.config import CdfConfig, StaticToken, TokenProvider
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.errors import (
    ApiError,
    ApiUnavailableError,
    AuthenticationError,
    NotFoundError,
    ValidationError,
)
from cogseg_ml.prompts import FileRef, Prompt


def cdf_requests(emu: Emulator) -> list[Any]:
    return [e for e in emu.requests if "/api/v1/" in e.path]


# --- a file CDF does not know ------------------------------------------------------------------

@pytest.mark.parametrize("check_file", [True, False])
def test_unknown_file_is_named_in_the_error(shared_emulator: Emulator, check_file: bool) -> None:
    with SegmentationClient(shared_emulator.config) as client:
        with pytest.raises(NotFoundError) as info:
            client.segment("nope.png", points=[(0.5, 0.5)], check_file=check_file)
    msg = str(info.value)
    assert "nope.png" in msg and shared_emulator.project in msg
    assert info.value.missing  # the server's list is kept


def test_unknown_file_in_file_metadata_is_named(shared_emulator: Emulator) -> None:
    with SegmentationClient(shared_emulator.config) as client:
        with pytest.raises(NotFoundError) as info:
            client.file_metadata(["synthetic_00000.png", "nope-either.png"])
    assert "nope-either.png" in str(info.value)
    assert "synthetic_00000.png" not in str(info.value)


# --- token providers ---------------------------------------------------------------------------

def test_a_token_provider_that_raises_is_an_authentication_error_with_its_message(
        make_emulator) -> None:
    emu = make_emulator()

    def provider() -> str:
        raise RuntimeError("the vault is sealed")

    cfg = CdfConfig(project=emu.project, base_url=emu.base_url,
                    credentials=TokenProvider(provider))
    with SegmentationClient(cfg) as client, pytest.raises(AuthenticationError) as info:
        client.segment("synthetic_00000.png", points=[(0.5, 0.5)])
    assert not isinstance(info.value, ApiUnavailableError)
    msg = str(info.value)
    assert "the vault is sealed" in msg and "RuntimeError" in msg and "provider" in msg
    assert isinstance(info.value.__cause__, RuntimeError)
    assert cdf_requests(emu) == []


@pytest.mark.parametrize("value", [None, "", 42, b"bytes-token", "   "])
def test_a_token_provider_returning_no_token_is_refused_before_sending(make_emulator,
                                                                       value: Any) -> None:
    emu = make_emulator()
    cfg = CdfConfig(project=emu.project, base_url=emu.base_url,
                    credentials=TokenProvider(lambda: value))
    with SegmentationClient(cfg) as client, pytest.raises(AuthenticationError) as info:
        client.file_metadata(["synthetic_00000.png"])
    msg = str(info.value)
    assert "provider" in msg and "non-empty string" in msg
    assert cdf_requests(emu) == []  # never "Bearer None"


# --- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["/api/v1/projects/my-project", "/api/v1/projects/x/",
                                    "/api/v1", "/?project=x"])
def test_base_url_with_an_api_path_says_to_pass_only_the_cluster_url(suffix: str) -> None:
    with pytest.raises(ValidationError) as info:
        CdfConfig(project="my-project",
                  base_url=f"https://westeurope-1.cognitedata.com{suffix}",
                  credentials=StaticToken("t"))
    msg = str(info.value)
    assert "cluster URL" in msg and "https://westeurope-1.cognitedata.com" in msg


def test_plain_cluster_urls_are_kept() -> None:
    for url in ("https://westeurope-1.cognitedata.com", "https://westeurope-1.cognitedata.com/",
                "http://127.0.0.1:8000"):
        cfg = CdfConfig(project="p", base_url=url, credentials=StaticToken("t"))
        assert cfg.base_url == url.rstrip("/")


@pytest.mark.parametrize("name", ["timeout_s", "file_timeout_s", "connect_timeout_s"])
@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_config_timeouts_must_be_positive_and_finite(name: str, bad: float) -> None:
    with pytest.raises(ValidationError, match=name):
        CdfConfig(project="p", base_url="https://x.cognitedata.com",
                  credentials=StaticToken("t"), **{name: bad})


# --- call timeouts -----------------------------------------------------------------------------

BAD_TIMEOUTS = [0, 0.0, -1, math.nan, math.inf, -math.inf, True, "5"]


@pytest.mark.parametrize("bad", BAD_TIMEOUTS)
def test_bad_timeouts_are_refused_before_any_job_is_created(make_emulator, bad: Any) -> None:
    emu = make_emulator()
    req = [(FileRef(external_id="synthetic_00000.png"), Prompt.of([(0.5, 0.5)]))]
    with SegmentationClient(emu.config) as client:
        with pytest.raises(ValidationError, match="timeout"):
            client.segment("synthetic_00000.png", points=[(0.5, 0.5)], timeout=bad)
        with pytest.raises(ValidationError, match="timeout"):
            client.wait(1, timeout=bad)
        with pytest.raises(ValidationError, match="timeout"):
            client.segment_many(req, timeout=bad)  # at the call, not at the first item

        async def via_async() -> None:
            async with AsyncSegmentationClient(emu.config) as ac:
                with pytest.raises(ValidationError, match="timeout"):
                    await ac.segment("synthetic_00000.png", points=[(0.5, 0.5)], timeout=bad)
                with pytest.raises(ValidationError, match="timeout"):
                    await ac.wait(1, timeout=bad)
                with pytest.raises(ValidationError, match="timeout"):
                    ac.segment_many(req, timeout=bad)

        asyncio.run(via_async())
    assert not [e for e in cdf_requests(emu) if "/context/vision/segment" in e.path]


def test_good_timeouts_still_work(shared_emulator: Emulator) -> None:
    with SegmentationClient(shared_emulator.config) as client:
        res = client.segment("synthetic_00000.png", points=[(0.5, 0.5)], timeout=30)
        assert res.job_id >= 0
        outs = list(client.segment_many(
            [(FileRef(external_id="synthetic_00001.png"), Prompt.of([(0.5, 0.5)]))],
            timeout=30))
    assert outs[0].error is None


# --- how statuses print ------------------------------------------------------------------------

def test_api_errors_print_the_status_with_its_phrase(shared_emulator: Emulator) -> None:
    assert str(ApiError("x", status_code=404)) == "x (404 Not Found)"
    assert str(ApiError("x", status_code=503, request_id="r1")) == \
        "x (503 Service Unavailable, request id r1)"
    assert str(ApiError("x", status_code=599)) == "x (599)"  # no phrase for unknown statuses
    with SegmentationClient(shared_emulator.config) as client:
        with pytest.raises(NotFoundError) as info:
            client.retrieve_job(424242)
    text = str(info.value)  # CDF answers an unknown job id with 400 and ``missing``
    assert f"{info.value.status_code} Bad Request" in text and "HTTP " not in text


# --- every exception class in errors.py ----------------------------------------------------------

def test_every_exception_class_of_the_client_lives_in_errors() -> None:
    import importlib
    import inspect
    import pickle
    import pkgutil

    import cogseg_ml.api
    from cogseg_ml import errors

    for info in pkgutil.iter_modules(cogseg_ml.api.__path__):
        mod = importlib.import_module(f"cogseg_ml.api.{info.name}")
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) \
                    and obj.__module__.startswith("cogseg_ml"):
                assert obj.__module__ == "cogseg_ml.errors", f"{mod.__name__}.{name}"
                assert name in errors.__all__, name
    # The old import paths keep working.
    from cogseg_ml.api.auth import TokenEndpointUnavailable
    from cogseg_ml.api.http_core import ResponseTooLarge
    from cogseg_ml.api.retry_policy import RequestNotSent, RetryableStatus

    assert TokenEndpointUnavailable is errors.TokenEndpointUnavailable
    assert ResponseTooLarge is errors.ResponseTooLarge
    assert RequestNotSent is errors.RequestNotSent and RetryableStatus is errors.RetryableStatus
    for err in (errors.CdfUnreachableError("m", host="h:1", service="CDF", since=1.0,
                                           reason="r"),
                errors.TokenEndpointUnavailable("m", host="h:2", unreachable=True),
                errors.AuthenticationError("m")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert back._context == err._context
