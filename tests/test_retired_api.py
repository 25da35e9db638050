"""A retired Vision API: the segment endpoint answering 404/410 for the route is recognized
once per session (told apart from CDF's errors about unknown files or jobs, which list them in
``missing``), and FallbackBackend then switches to the local model for good: one warning, no
more probing. Against the emulator over loopback, started retired or retired mid-run."""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.backends.base import BackendJob, BackendOutcome
from cogseg_ml.backends.fallback import FallbackBackend
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image
from cogseg_ml.errors import (
    VISION_RETIREMENT_DATE,
    ApiRetiredError,
    ApiUnavailableError,
    CdfUnreachableError,
    FileValidationError,
    NotFoundError,
)
from cogseg_ml.prompts import FileRef, Prompt

SEGMENT = "/context/vision/segment"


def segment_requests(emu: Emulator) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in emu.requests if SEGMENT in r.path]


def assert_says_how_to_run_local_only(text: str) -> None:
    for fragment in ("appears retired", VISION_RETIREMENT_DATE, "--backend local --model DIR",
                     "LocalSamBackend.from_pretrained(DIR)"):
        assert fragment in text, (fragment, text)


def box_of(image: SyntheticImage, k: int = 0) -> Prompt:
    return Prompt(box=image.objects[k].box())


# --- the client: recognized once, remembered, never sent again ---------------------------------


def test_a_retired_segment_route_is_recognized_once_and_remembered(
        make_emulator: Callable[..., Emulator], images: list[SyntheticImage]) -> None:
    emu = make_emulator(retired=True)
    ref = FileRef(external_id=images[0].name)
    with SegmentationClient(emu.config) as client:
        with pytest.raises(ApiRetiredError) as info:
            client.segment(ref, prompt=box_of(images[0]))
        err = info.value
        assert isinstance(err, ApiUnavailableError) and not isinstance(err, CdfUnreachableError)
        assert err.status_code == 404 and err.host == client.session.client.host
        assert "POST /context/vision/segment answered 404 Not Found" in str(err)
        assert_says_how_to_run_local_only(str(err))
        assert client.retired is not None
        seen = segment_requests(emu)
        assert seen == [("POST", f"/api/v1/projects/{emu.project}{SEGMENT}", 404)]
        # Remembered: every segmentation call fails at once, nothing more is sent.
        with pytest.raises(ApiRetiredError):
            client.create_job(ref, prompt=box_of(images[0]))
        with pytest.raises(ApiRetiredError):
            client.retrieve_job(1)
        outcomes = list(client.segment_many([(ref, box_of(images[0], k)) for k in range(3)]))
        assert [type(o.error) for o in outcomes] == [ApiRetiredError] * 3
        assert segment_requests(emu) == seen
        # Files keep working.
        assert client.file_metadata([ref])[0].name == images[0].name
        assert client.download(ref)[:4] == b"\x89PNG"


def test_an_unknown_file_is_not_a_retirement(shared_emulator: Emulator,
                                             images: list[SyntheticImage]) -> None:
    """CDF's 400 about a file it does not know lists it in ``missing``: not the route gone."""
    with SegmentationClient(shared_emulator.config) as client:
        with pytest.raises(NotFoundError) as info:
            client.create_job(FileRef(id=987654321), prompt=box_of(images[0]))
        assert info.value.missing and client.retired is None
        res = client.segment(FileRef(external_id=images[0].name), prompt=box_of(images[0]))
        assert res.item.best is not None


def test_a_404_without_missing_on_a_job_is_checked_before_anything_is_retired(
        make_emulator: Callable[..., Emulator], images: list[SyntheticImage]) -> None:
    """A GET of one job answered 404 without ``missing`` may be a job CDF forgot: the route
    is asked (a POST without items, which a live route refuses) and it answers 400."""
    emu = make_emulator()
    ref = FileRef(external_id=images[0].name)
    with SegmentationClient(emu.config) as client:
        job = client.create_job(ref, prompt=box_of(images[0]))
        emu.set_faults(Fault("status", status=404, message="job not found", times=1,
                             methods=frozenset({"GET"}), path_contains=f"{SEGMENT}/"))
        with pytest.raises(NotFoundError) as info:
            client.retrieve_job(job.job_id)
        assert not isinstance(info.value, ApiRetiredError) and client.retired is None
        assert segment_requests(emu)[-2:] == [
            ("GET", f"/api/v1/projects/{emu.project}{SEGMENT}/{job.job_id}", 404),
            ("POST", f"/api/v1/projects/{emu.project}{SEGMENT}", 400)]
        assert client.wait(job.job_id, timeout=30).item.best is not None
        jobs_before = len(emu.jobs.jobs)
    assert jobs_before == 1  # the route check created no job


def test_retired_while_a_job_runs_the_poll_recognizes_it(
        make_emulator: Callable[..., Emulator], images: list[SyntheticImage]) -> None:
    emu = make_emulator(processing_time_s=600.0)  # the job stays in flight
    ref = FileRef(external_id=images[0].name)
    with SegmentationClient(emu.config) as client:
        job = client.create_job(ref, prompt=box_of(images[0]))
        emu.retired = True
        with pytest.raises(ApiRetiredError) as info:
            client.retrieve_job(job.job_id)
        assert f"GET /context/vision/segment/{job.job_id} answered 404" in str(info.value)
        assert client.retired is not None
        statuses = [(m, s) for m, _, s in segment_requests(emu)]
        assert statuses == [("POST", 200), ("GET", 404), ("POST", 404)]  # create, poll, check


def test_a_410_on_a_job_is_retired_without_a_check(
        make_emulator: Callable[..., Emulator], images: list[SyntheticImage]) -> None:
    emu = make_emulator(processing_time_s=600.0)
    with SegmentationClient(emu.config) as client:
        job = client.create_job(FileRef(external_id=images[0].name), prompt=box_of(images[0]))
        emu.set_faults(Fault("status", status=410, message="Gone", methods=frozenset({"GET"}),
                             path_contains=f"{SEGMENT}/"))
        with pytest.raises(ApiRetiredError) as info:
            client.retrieve_job(job.job_id)
        assert info.value.status_code == 410
        assert [m for m, _, _ in segment_requests(emu)] == ["POST", "GET"]


def test_a_gateway_404_page_on_create_is_a_retirement(
        make_emulator: Callable[..., Emulator], images: list[SyntheticImage]) -> None:
    """A route that is gone may be answered by a gateway, with HTML: still the route gone."""
    emu = make_emulator(faults=[Fault("body", status=404, content_type="text/html",
                                      body="<html><body>404 page not found</body></html>",
                                      methods=frozenset({"POST"}), path_contains=SEGMENT)])
    with SegmentationClient(emu.config) as client:
        with pytest.raises(ApiRetiredError) as info:
            client.create_job(FileRef(external_id=images[0].name), prompt=box_of(images[0]))
    assert "page not found" in str(info.value)


def test_the_error_pickles_with_its_attributes(make_emulator: Callable[..., Emulator],
                                               images: list[SyntheticImage]) -> None:
    emu = make_emulator(retired=True)
    with SegmentationClient(emu.config) as client, pytest.raises(ApiRetiredError) as info:
        client.create_job(FileRef(external_id=images[0].name), prompt=box_of(images[0]))
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is ApiRetiredError and str(back) == str(info.value)
    assert (back.status_code, back.host, back.reason, back.request_id) == (
        404, info.value.host, info.value.reason, info.value.request_id)
    assert back.request_id  # the emulator's x-request-id


# --- the fallback: the local model for good ----------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers", reason="the sam2 extra (transformers) is needed")
    from cogseg_ml.backends.sam2 import save_random_checkpoint

    return save_random_checkpoint(tmp_path_factory.mktemp("sam21") / "tiny", "sam2", seed=3)


@pytest.fixture
def local(checkpoint: Path) -> Iterator[object]:
    from cogseg_ml.backends.local_sam import LocalSamBackend

    backend = LocalSamBackend.from_pretrained(checkpoint, device="cpu")
    yield backend
    backend.close()


def jobs_for(images: list[SyntheticImage]) -> list[BackendJob]:
    out = []
    for i, im in enumerate(images):
        data = encode_image(im.pixels)
        key = hashlib.sha256(data).hexdigest()
        h, w = im.pixels.shape[:2]
        for k, obj in enumerate(im.objects):
            out.append(BackendJob(SegmentRequest(FileRef(external_id=im.name),
                                                 Prompt(box=obj.box()), tag=(i, k)),
                                  h, w, key, lambda data=data: data))
    return out


def retired_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "retired" in r.getMessage()]


def test_fallback_on_a_retired_api_labels_everything_locally_with_one_warning(
        make_emulator: Callable[..., Emulator], images: list[SyntheticImage], local: object,
        caplog: pytest.LogCaptureFixture) -> None:
    emu = make_emulator(retired=True)
    fb = FallbackBackend(ApiBackend(emu.config, concurrency=1), local,  # type: ignore[arg-type]
                         chunk_size=4)
    jobs = jobs_for(images)
    with caplog.at_level(logging.INFO):
        outcomes = list(fb.run(jobs))
    assert len(outcomes) == len(jobs) > 3 * fb.chunk_size
    assert all(o.error is None and o.result is not None for o in outcomes)
    assert {o.result.backend for o in outcomes if o.result} == {"local-sam"}
    assert sorted(o.job.request.tag for o in outcomes) == sorted(j.request.tag for j in jobs)
    assert fb.retired is not None and fb.breaker.trips == 0  # not an outage to wait out
    (warning,) = retired_warnings(caplog)
    assert_says_how_to_run_local_only(warning)
    assert "for good" in warning and "not tried or probed again" in warning
    # The first chunk's probe and one create; after the 404, nothing at all.
    log = [(r.method, r.path.rsplit("/", 1)[-1], r.status) for r in emu.requests
           if "/api/v1/" in r.path]
    switch = log.index(("POST", "segment", 404))
    assert log[switch + 1:] == [] and log.count(("POST", "segment", 404)) == 1
    # Another run on the same backend: no request, no second warning.
    n = len(emu.requests)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = list(fb.run(jobs[:3]))
    assert all(o.result is not None and o.result.backend == "local-sam" for o in again)
    assert len(emu.requests) == n and retired_warnings(caplog) == []


def test_fallback_switches_for_good_when_the_api_retires_mid_run(
        make_emulator: Callable[..., Emulator], images: list[SyntheticImage], local: object,
        caplog: pytest.LogCaptureFixture) -> None:
    emu = make_emulator()
    fb = FallbackBackend(ApiBackend(emu.config, concurrency=1), local,  # type: ignore[arg-type]
                         chunk_size=2)
    jobs = jobs_for(images[:3])

    def feed() -> Iterator[BackendJob]:
        for i, job in enumerate(jobs):
            if i == fb.chunk_size:  # the first chunk is done: the API retires now
                emu.retired = True
            yield job

    with caplog.at_level(logging.INFO):
        outcomes: list[BackendOutcome] = list(fb.run(feed()))
    backends = [o.result.backend if o.result else type(o.error).__name__ for o in outcomes]
    assert backends[:2] == ["cdf-api", "cdf-api"]
    assert backends[2:] == ["local-sam"] * (len(jobs) - 2)
    assert len(retired_warnings(caplog)) == 1
    api_log = [(r.method, r.path.rsplit("/", 1)[-1], r.status) for r in emu.requests
               if SEGMENT in r.path or "byids" in r.path]
    switch = api_log.index(("POST", "segment", 404))
    assert api_log[switch + 1:] == []  # no probe, no create after the switch


def test_prefer_local_stops_asking_a_retired_api(
        make_emulator: Callable[..., Emulator], images: list[SyntheticImage], local: object,
        caplog: pytest.LogCaptureFixture) -> None:
    """What the local model cannot do went to the API; once it is retired, no more."""
    emu = make_emulator(retired=True)
    fb = FallbackBackend(ApiBackend(emu.config, concurrency=1), local,  # type: ignore[arg-type]
                         mode="prefer-local")
    good = jobs_for(images[:1])
    bad = BackendJob(SegmentRequest(FileRef(external_id=images[1].name),
                                    Prompt(box=images[1].objects[0].box()), tag="bad"),
                     images[1].pixels.shape[0], images[1].pixels.shape[1], "not-an-image",
                     lambda: b"these bytes are not an image")
    with caplog.at_level(logging.INFO):
        first = {o.job.request.tag: o for o in fb.run([*good, bad])}
    assert isinstance(first["bad"].error, ApiRetiredError) and fb.retired is not None
    assert all(first[j.request.tag].result is not None for j in good)
    n = len(emu.requests)
    second = list(fb.run([bad]))
    assert isinstance(second[0].error, FileValidationError)  # the local model's own answer
    assert len(emu.requests) == n and len(retired_warnings(caplog)) == 1
