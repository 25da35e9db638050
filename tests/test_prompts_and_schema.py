"""Value types and wire models: validation naming the field, camelCase, forward compatible."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError as PydanticValidationError

from cogseg_ml import (
    Box,
    FileRef,
    InstanceId,
    Point,
    Prompt,
    ValidationError,
)
from cogseg_ml.api.wire_schema import (
    Annotation,
    FileMetadata,
    JobStatus,
    SegmentJob,
    SegmentJobCreateRequest,
    TokenResponse,
)
from cogseg_ml.errors import PromptValidationError


@pytest.mark.parametrize("kwargs,field", [
    ({"x": math.nan, "y": 0.5}, "Point.x"),
    ({"x": 0.5, "y": math.inf}, "Point.y"),
    ({"x": -0.01, "y": 0.5}, "Point.x"),
    ({"x": 0.5, "y": 1.0001}, "Point.y"),
    ({"x": 0.5, "y": 0.5, "label": 2}, "Point.label"),
    ({"x": 0.5, "y": 0.5, "label": True}, "Point.label"),
    ({"x": "0.5", "y": 0.5}, "Point.x"),
])
def test_point_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(PromptValidationError) as info:
        Point(**kwargs)
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("args,fragment", [
    ((0.5, 0.1, 0.5, 0.2), "x_min (0.5) must be smaller than Box.x_max"),
    ((0.1, 0.3, 0.5, 0.2), "y_min"),
    ((0.1, 0.1, 1.2, 0.2), "Box.x_max"),
    ((math.nan, 0.1, 0.5, 0.2), "Box.x_min"),
])
def test_box_validation(args: tuple, fragment: str) -> None:
    with pytest.raises(PromptValidationError) as info:
        Box(*args)
    assert fragment in str(info.value)


def test_prompt_needs_a_point_or_box_and_unique_points() -> None:
    with pytest.raises(PromptValidationError, match="at least one point or a box"):
        Prompt()
    with pytest.raises(PromptValidationError, match=r"points\[1\] repeats"):
        Prompt(points=(Point(0.1, 0.1), Point(0.1, 0.1)))
    p = Prompt.of([(0.1, 0.2), (0.3, 0.4, 0)], (0.0, 0.0, 1.0, 1.0))
    assert p.points[1] == Point(0.3, 0.4, 0) and p.box == Box(0, 0, 1, 1)
    assert Prompt.of(box=Box(0.1, 0.1, 0.2, 0.2)).points == ()


def test_values_are_plain_python_after_validation() -> None:
    import numpy as np

    p = Point(np.float32(0.25), np.float64(0.5), np.int64(0))  # type: ignore[arg-type]
    assert (p.x, p.y, p.label) == (0.25, 0.5, 0)
    assert (type(p.x), type(p.y), type(p.label)) == (float, float, int)
    assert type(Point(0.5, 0.5, 1.0).label) is int  # type: ignore[arg-type]
    assert Prompt.of(np.array([[0.25, 0.5, 0.0]])).points == (Point(0.25, 0.5, 0),)
    assert Prompt.of(box={"xMin": 0, "yMin": 0, "xMax": 1, "yMax": 1}).box == Box(0, 0, 1, 1)


def test_pixel_helpers_use_continuous_coordinates() -> None:
    p = Point.from_pixels(320, 120, width=640, height=480)
    assert (p.x, p.y) == (0.5, 0.25)
    b = Box.from_xywh_pixels(64, 48, 64, 96, width=640, height=480)
    assert (b.x_min, b.y_min, b.x_max, b.y_max) == (0.1, 0.1, 0.2, 0.3)
    assert b.to_pixels(640, 480) == pytest.approx((64, 48, 128, 144))
    with pytest.raises(PromptValidationError, match="width"):
        Point.from_pixels(1, 1, width=0, height=10)
    with pytest.raises(PromptValidationError, match="outside"):
        Point.from_pixels(700, 10, width=640, height=480)


def test_file_ref_exactly_one_identifier() -> None:
    assert FileRef.parse(12) == FileRef(id=12)
    assert FileRef.parse("a.png") == FileRef(external_id="a.png")
    assert FileRef.parse({"fileInstanceId": {"space": "s", "externalId": "e"}}) == FileRef(
        instance_id=InstanceId("s", "e"))
    assert FileRef.parse({"externalId": "x"}).describe() == "externalId='x'"
    for bad in ({}, {"id": 1, "external_id": "x"}, {"id": 0}, {"id": True}):
        with pytest.raises(ValidationError):
            FileRef(**bad) if bad else FileRef()
    with pytest.raises(ValidationError):
        FileRef.parse(True)


def test_wire_models_are_camel_case_and_forward_compatible() -> None:
    req = SegmentJobCreateRequest.model_validate(
        {"items": [{"fileId": 1}], "points": [{"x": 0.5, "y": 0.5, "label": 1}],
         "boundingBox": {"xMin": 0.1, "yMin": 0.1, "xMax": 0.2, "yMax": 0.2}})
    assert req.bounding_box is not None and req.bounding_box.x_min == 0.1
    assert set(req.to_wire()) == {"items", "points", "boundingBox"}
    job = SegmentJob.model_validate_json(
        b'{"status": "Running", "jobId": 5, "createdTime": 1, "statusTime": 2, "startTime": 2,'
        b' "items": [{"fileId": 1, "newField": 3}], "somethingNew": {"a": 1}}')
    assert job.status is JobStatus.RUNNING and not job.status.is_terminal
    with pytest.raises(PydanticValidationError):
        SegmentJob.model_validate_json(b'{"status": "Running", "jobId": "5", "createdTime": 1,'
                                       b' "statusTime": 2}')
    with pytest.raises(PydanticValidationError):
        SegmentJob.model_validate_json(b'{"status": "Paused", "jobId": 5, "createdTime": 1,'
                                       b' "statusTime": 2}')
    meta = FileMetadata.model_validate_json(b'{"id": 3, "name": "a.png", "mimeType": "image/png",'
                                            b' "uploaded": true, "labels": []}')
    assert meta.mime_type == "image/png"
    tok = TokenResponse.model_validate_json(b'{"access_token": "t", "expires_in": 60, "x": 1}')
    assert tok.expires_in == 60


def test_annotation_keeps_creating_user_null() -> None:
    ann = Annotation(annotated_resource_type="file", annotated_resource_id=1,
                     annotation_type="images.ObjectDetection", creating_app="a",
                     creating_app_version="1.0.0", creating_user=None, status="suggested",
                     data={"label": "x"})
    wire = ann.to_wire()
    assert wire["creatingUser"] is None and wire["annotatedResourceId"] == 1
