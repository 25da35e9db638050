"""FallbackBackend and its circuit breaker against the emulator with an outage."""

from __future__ import annotations

import pytest

from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.backends.base import BackendJob, BackendOutcome
from cogseg_ml.backends.fallback import CircuitBreaker, FallbackBackend
from cogseg_ml.backends.local_sam import LocalSamBackend, build_tiny_sam
from cogseg_ml.config import RetryConfig
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.errors import ValidationError
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import Box, FileRef, Prompt
from cogseg_ml.samples import Instance, Sample
from tests.box_backend import BoxBackend


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_states() -> None:
    clock = Clock()
    b = CircuitBreaker(cooldown_s=10, clock=clock)
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow() and b.trips == 1
    clock.t = 10
    assert b.state == "half-open" and b.allow()
    b.failure()
    assert b.state == "open" and b.trips == 1
    clock.t = 25
    b.success()
    assert b.state == "closed"


def test_outage_switches_to_local_and_back(make_emulator, images, tmp_path) -> None:
    emu = make_emulator(concurrency=8)
    cfg = emu.config.with_options(retry=RetryConfig(max_attempts=2, backoff_base_s=0.01,
                                                    total_timeout_s=2))
    clock = Clock()
    local = LocalSamBackend(model=build_tiny_sam(), device="cpu")
    fb = FallbackBackend(ApiBackend(cfg, concurrency=8), local, chunk_size=3,
                         breaker=CircuitBreaker(cooldown_s=60, clock=clock))
    samples = [Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
               for im in images[:4]]
    lab = SegmentationLabeler(fb, cache=tmp_path / "c", workdir=tmp_path / "w",
                              progress=False)
    lab.chunk_size = 2  # two images (six prompts) per labeling step
    lab.label(samples[:2])  # warm: images downloaded, API healthy
    emu.set_faults(Fault("status", status=503, path_contains="/context/vision/"))
    rep = lab.label(samples[:2] + samples[2:3])
    assert rep.failed == 0 and fb.breaker.state == "open"
    lab.to_coco(tmp_path / "out.json")
    import json

    anns = json.loads((tmp_path / "out.json").read_text())["annotations"]
    sources = [a["source"] for a in anns]
    assert sources.count("cdf-api") == 6 and sources.count("local-sam") == 3
    # Outage lifted; after the cool-down the API is probed and used again.
    emu.set_faults()
    clock.t = 61
    rep2 = lab.label(samples)
    assert rep2.failed == 0 and fb.breaker.state == "closed"
    lab.to_coco(tmp_path / "out2.json")
    anns2 = json.loads((tmp_path / "out2.json").read_text())["annotations"]
    assert all(a["source"] == "cdf-api" for a in anns2)  # local masks were replaced
    assert rep2.jobs_run == 6  # images 3 and 4: image 3's local masks redone by the API


def test_modes_validate() -> None:
    with pytest.raises(ValidationError):
        FallbackBackend(LocalSamBackend(model=build_tiny_sam(), device="cpu"), None)
    with pytest.raises(ValidationError):
        FallbackBackend(LocalSamBackend(model=build_tiny_sam(), device="cpu"), None,
                        mode="sometimes")  # type: ignore[arg-type]


def test_an_outage_mid_chunk_hands_the_rest_of_the_chunk_to_the_fallback_at_once(
        make_emulator, images) -> None:
    emu = make_emulator(concurrency=8)
    # A generous budget for answers (ten attempts each): it must not be spent per job once
    # the connection is refused.
    cfg = emu.config.with_options(retry=RetryConfig(max_attempts=10, backoff_base_s=0.01,
                                                    max_backoff_s=0.05))
    api = ApiBackend(cfg, concurrency=4)
    local = BoxBackend()
    fb = FallbackBackend(api, local, chunk_size=30,
                         breaker=CircuitBreaker(cooldown_s=60, clock=Clock()))
    jobs = [BackendJob(SegmentRequest(FileRef(external_id=images[n % len(images)].name),
                                      Prompt(box=Box(0.1, 0.1, 0.4 + 0.01 * n, 0.6)), tag=n),
                       images[0].height, images[0].width, f"digest-{n}", lambda: b"")
            for n in range(30)]
    outs: list[BackendOutcome] = []
    sent_at_stop = 0
    for out in fb.run(jobs):  # one chunk of 30: the outage starts in its middle
        outs.append(out)
        if len(outs) == 3:
            emu.stop()
            sent_at_stop = api.client.requests_sent
    assert sorted(o.job.request.tag for o in outs) == list(range(30))
    assert all(o.result is not None for o in outs)
    from_api = sum(1 for o in outs if o.result and o.result.backend == "cdf-api")
    assert from_api + local.jobs == 30
    assert local.jobs >= 30 - 3 - api.concurrency  # only jobs already in flight could finish
    # The rest of the chunk cost the connection budget once, not a retry budget per job.
    sent_after = api.client.requests_sent - sent_at_stop
    assert sent_after <= 3 + api.concurrency, sent_after  # 3: RetryConfig.connect_attempts
    assert fb.breaker.state == "open"
    api.close()
