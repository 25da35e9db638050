"""Hostile and broken input, table-driven: each case gets a typed error whose message names
the thing to fix (or a documented skip), and nothing reaches the cache from a bad response."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cogseg_ml import (
    Box,
    CogsegError,
    FileRef,
    Point,
    Prompt,
    RetryConfig,
    SegmentationClient,
)
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.dataset import CdfSegmentationDataset, SampleError
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.emulator.synthetic_images import encode_image
from cogseg_ml.errors import PromptValidationError
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.samples import Instance, Sample

# --- prompts: rejected before any request ---------------------------------------------------

PROMPT_CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("nan x", lambda: Point(math.nan, 0.5), "Point.x"),
    ("nan y", lambda: Point(0.5, math.nan), "Point.y"),
    ("+inf", lambda: Point(math.inf, 0.5), "finite"),
    ("-inf", lambda: Point(0.5, -math.inf), "finite"),
    ("x below 0", lambda: Point(-0.1, 0.5), "outside [0, 1]"),
    ("x above 1", lambda: Point(1.1, 0.5), "outside [0, 1]"),
    ("y above 1", lambda: Point(0.5, 7.0), "Point.y"),
    ("label 2", lambda: Point(0.5, 0.5, 2), "Point.label"),
    ("label -1", lambda: Point(0.5, 0.5, -1), "Point.label"),
    ("label True", lambda: Point(0.5, 0.5, True), "Point.label"),
    ("label str", lambda: Point(0.5, 0.5, "1"), "Point.label"),  # type: ignore[arg-type]
    ("string coord", lambda: Point("0.5", 0.5), "Point.x"),  # type: ignore[arg-type]
    ("inverted box x", lambda: Box(0.6, 0.1, 0.5, 0.2), "x_min"),
    ("inverted box y", lambda: Box(0.1, 0.6, 0.5, 0.2), "y_min"),
    ("zero-width box", lambda: Box(0.5, 0.1, 0.5, 0.2), "x_min"),
    ("zero-height box", lambda: Box(0.1, 0.3, 0.5, 0.3), "y_min"),
    ("box nan", lambda: Box(0.1, math.nan, 0.5, 0.9), "Box.y_min"),
    ("box out of range", lambda: Box(0.1, 0.1, 1.5, 0.9), "Box.x_max"),
    ("no prompt", lambda: Prompt(), "at least one point or a box"),
    ("duplicate points", lambda: Prompt(points=(Point(0.1, 0.1), Point(0.1, 0.1))), "repeats"),
    ("pixel helper off-image", lambda: Point.from_pixels(641, 10, 640, 480), "outside"),
    ("pixel helper bad size", lambda: Box.from_pixels(0, 0, 1, 1, 0, 480), "width"),
    ("label 0.5", lambda: Point(0.5, 0.5, 0.5), "Point.label"),  # type: ignore[arg-type]
    ("label 1.9 in a tuple", lambda: Prompt.of([(0.5, 0.5, 1.9)]), "Point.label"),
    ("label 0.5 in a tuple", lambda: Prompt.of([(0.5, 0.5, 0.5)]), "Point.label"),
    ("label str in a tuple", lambda: Prompt.of([(0.5, 0.5, "1")]), "Point.label"),  # type: ignore
    ("label numpy bool", lambda: Point(0.5, 0.5, np.bool_(True)), "Point.label"),  # type: ignore
    ("points a number", lambda: Prompt.of(0.5), "points must be a list"),
    ("points a string", lambda: Prompt.of("0.5 0.5"), "points must be a list"),
    ("box a string", lambda: Prompt.of(box="0 0 1 1"), "box must be"),
    ("box wrong array shape", lambda: Prompt.of(box=np.zeros((2, 4))), "shape (2, 4)"),
    ("pixel helper str coordinate", lambda: Point.from_pixels("3", 1, 10, 10), "px"),  # type: ignore
    ("pixel helper float size", lambda: Point.from_pixels(3, 1, 10.0, 10), "width"),  # type: ignore
]


@pytest.mark.parametrize("name,make,fragment", PROMPT_CASES, ids=[c[0] for c in PROMPT_CASES])
def test_bad_prompt(name: str, make: Callable[[], Any], fragment: str) -> None:
    with pytest.raises(PromptValidationError) as info:
        make()
    assert fragment in str(info.value)


def test_thousands_of_points_are_accepted(shared_emulator) -> None:
    # The reference documents no limit on points (open question); we send what we are given.
    rng = np.random.default_rng(0)
    pts = [Point(float(x), float(y)) for x, y in rng.random((3000, 2))]
    with SegmentationClient(shared_emulator.config) as client:
        result = client.segment("synthetic_00000.png", points=pts, timeout=30)
    assert result.item.ok


# --- files ---------------------------------------------------------------------------------


def _bomb() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")  # 400 Mpx, a few kB on disk
    return buf.getvalue()


FILE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("wrong extension", {"name": "scan.tif", "mime": "image/png"}, "must end in"),
    ("wrong mime type", {"name": "scan.png", "mime": "application/pdf"}, "mimeType"),
    ("missing id", {"missing": True}, "does not exist"),
    ("undecodable image", {"name": "broken.png", "data": b"\x89PNG not really"},
     "not a readable image"),
    ("decompression bomb", {"name": "bomb.png", "data": "bomb"}, "over the limit"),
    ("zero-byte download", {"name": "empty.png", "data": b""}, "zero bytes"),
]


@pytest.mark.parametrize("name,spec,fragment", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_file_through_the_labeler(make_emulator, images, tmp_path: Path, name: str,
                                      spec: dict[str, Any], fragment: str) -> None:
    emu = make_emulator()
    if spec.get("missing"):
        ref = FileRef(external_id="no-such-file.png")
    else:
        data = spec.get("data", encode_image(images[0].pixels))
        data = _bomb() if data == "bomb" else data
        emu.add_image(data, spec["name"], external_id="the-file", mime_type=spec.get("mime"))
        ref = FileRef(external_id="the-file")
    lab = SegmentationLabeler(emu.config, cache=tmp_path / "c", workdir=tmp_path / "w",
                              progress=False)
    rep = lab.label([Sample(ref, (Instance(Prompt(box=Box(0.1, 0.1, 0.5, 0.5))),))])
    assert rep.failed == 1 and rep.labelled == 0
    assert fragment in rep.failures[0]["reason"], rep.failures[0]["reason"]
    assert MaskCache(tmp_path / "c").stats().entries == 0


def test_bad_files_through_the_dataset(make_emulator, images, tmp_path: Path) -> None:
    emu = make_emulator()
    emu.add_image(_bomb(), "bomb.png", external_id="bomb")
    emu.add_image(b"", "empty.png", external_id="empty")
    samples = [Sample(FileRef(external_id=x), (Instance(Prompt(box=Box(0, 0, 1, 1))),))
               for x in ("bomb", "empty")]
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    with pytest.raises(SampleError, match="over the limit"):
        ds[0]
    with pytest.raises(SampleError, match="zero bytes"):
        ds[1]


def test_duplicated_ids_are_looked_up_once(shared_emulator) -> None:
    with SegmentationClient(shared_emulator.config) as client:
        metas = client.file_metadata(["synthetic_00000.png"] * 3)
    assert len(metas) == 3 and len({m.id for m in metas}) == 1


# --- server responses ----------------------------------------------------------------------

GET_JOB = "/context/vision/segment/"
_JOB = {"status": "Completed", "jobId": 1, "createdTime": 1, "statusTime": 2,
        "items": [{"fileId": 1000001, "segments": [{"score": 0.9, "polygons": [
            {"vertices": [{"x": 0.1, "y": 0.1}, {"x": 0.5, "y": 0.1}, {"x": 0.3, "y": 0.5}]}]}]}]}


def _job(**changes: Any) -> str:
    body = json.loads(json.dumps(_JOB))
    body.update(changes)
    return json.dumps(body)


RESPONSE_CASES: list[tuple[str, Fault, str]] = [
    ("non-JSON 200", Fault("body", status=200, body="hello", content_type="text/plain",
                           path_contains=GET_JOB), "not JSON"),
    ("empty 200", Fault("body", status=200, body="", path_contains=GET_JOB), "empty body"),
    ("HTML 502 page", Fault("body", status=502, body="<html><body>Bad gateway</body></html>",
                            content_type="text/html", path_contains=GET_JOB),
     "Bad gateway"),
    ("HTML 400 page", Fault("body", status=400, body="<html><h1>Nope</h1></html>",
                            content_type="text/html", path_contains=GET_JOB), "Nope"),
    ("missing jobId", Fault("body", status=200, body=json.dumps(
        {k: v for k, v in _JOB.items() if k != "jobId"}), path_contains=GET_JOB), "jobId"),
    ("wrong type", Fault("body", status=200, body=_job(jobId="one"), path_contains=GET_JOB),
     "jobId"),
    ("truncated body", Fault("body", status=200, body=_job()[:40], path_contains=GET_JOB),
     "not JSON"),
    ("huge body", Fault("body", status=200, body=" " * (2 * 1024 * 1024) + _job(),
                        path_contains=GET_JOB), "more than"),
    ("unknown status", Fault("body", status=200, body=_job(status="Paused"),
                             path_contains=GET_JOB), "status"),
    ("NaN vertex", Fault("body", status=200, body=_job().replace('"x": 0.5', '"x": NaN'),
                         path_contains=GET_JOB), "finite number"),
    ("array not object", Fault("body", status=200, body="[1, 2]", path_contains=GET_JOB),
     "does not match"),
    ("error as plain string", Fault("body", status=403, body='{"error": "forbidden here"}',
                                    path_contains=GET_JOB), "forbidden here"),
    ("500 empty", Fault("body", status=500, body="", path_contains=GET_JOB), "server error"),
    ("score wrong type", Fault("body", status=200, body=_job().replace('"score": 0.9',
                                                                       '"score": "high"'),
                               path_contains=GET_JOB), "score"),
]


@pytest.mark.parametrize("name,fault,fragment", RESPONSE_CASES,
                         ids=[c[0] for c in RESPONSE_CASES])
def test_bad_server_response(make_emulator, tmp_path: Path, name: str, fault: Fault,
                             fragment: str) -> None:
    emu = make_emulator(faults=[fault])
    cfg = emu.config.with_options(max_response_bytes=1024 * 1024, retry=RetryConfig(
        max_attempts=2, backoff_base_s=0.01))
    lab = SegmentationLabeler(cfg, cache=tmp_path / "c", workdir=tmp_path / "w",
                              progress=False)
    rep = lab.label([Sample(FileRef(external_id="synthetic_00000.png"),
                            (Instance(Prompt(box=Box(0.1, 0.1, 0.5, 0.5))),))])
    assert rep.failed == 1, rep.as_dict()
    assert fragment in rep.failures[0]["reason"], rep.failures[0]["reason"]
    assert MaskCache(tmp_path / "c").stats().entries == 0  # nothing from a bad response
    with SegmentationClient(cfg) as client:
        job = client.create_job("synthetic_00000.png", box=Box(0.1, 0.1, 0.5, 0.5))
        with pytest.raises(CogsegError) as info:
            client.wait(job, timeout=10)
    assert fragment in str(info.value)


def test_polygons_with_too_few_vertices_are_a_documented_skip(make_emulator,
                                                              tmp_path: Path) -> None:
    body = _job(items=[{"fileId": 1000001, "segments": [{"score": 0.9, "polygons": [
        {"vertices": [{"x": 0.1, "y": 0.1}, {"x": 0.5, "y": 0.5}]}]}]}])
    emu = make_emulator(faults=[Fault("body", status=200, body=body, path_contains=GET_JOB)])
    lab = SegmentationLabeler(emu.config, cache=tmp_path / "c", workdir=tmp_path / "w",
                              progress=False)
    rep = lab.label([Sample(FileRef(external_id="synthetic_00000.png"),
                            (Instance(Prompt(box=Box(0.1, 0.1, 0.5, 0.5))),))])
    assert rep.labelled == 1 and rep.dropped["empty mask"] == 1 and rep.annotations == 0
