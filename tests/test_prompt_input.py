"""Prompt input taken or refused cleanly: COCO and JSON Lines files, bad-prompt policies,
numpy and torch values, and CDF's wire shapes in records."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cogseg_ml import (
    Box,
    FileRef,
    Point,
    Prompt,
    SegmentationClient,
    ValidationError,
)
from cogseg_ml.api.wire_schema import Annotation
from cogseg_ml.cache.cache_keys import CacheKey
from cogseg_ml.errors import PromptValidationError
from cogseg_ml.samples import (
    load_records,
    samples_from_annotations,
    samples_from_coco,
    samples_from_records,
)

# --- helpers --------------------------------------------------------------------------------

_IMAGE = {"id": 3, "file_name": "a.png", "width": 200, "height": 100}


def _coco(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "images": [dict(_IMAGE)],
        "categories": [{"id": 1, "name": "pump"}],
        "annotations": [{"id": 7, "image_id": 3, "category_id": 1, "bbox": [20, 10, 40, 50]}],
    }
    body.update(changes)
    return body


def _write(tmp_path: Path, name: str, content: str | bytes | Any) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def _ann(ann_id: int, bbox: Any, image_id: int = 3) -> dict[str, Any]:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox}


def _jsonl(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


_GOOD = json.dumps({"file": "a.png", "box": [0.1, 0.1, 0.5, 0.5]})

# --- item 9: COCO files that are not what they should be ------------------------------------


@pytest.mark.parametrize("name,content,fragments", [
    ("not JSON", '{"images": [', ["not JSON", "line 1"]),
    ("a JSON list", [_IMAGE], ["JSON object", "list"]),
    ("no images", {"annotations": []}, ["'images'"]),
    ("no annotations", {"images": [_IMAGE]}, ["'annotations'"]),
    ("images not a list", _coco(images={"3": _IMAGE}), ["'images'", "list"]),
    ("image without width", _coco(images=[{"id": 3, "file_name": "a.png", "height": 100}]),
     ["image 3", "width"]),
    ("image without height", _coco(images=[{"id": 3, "file_name": "a.png", "width": 100}]),
     ["image 3", "height"]),
    ("zero width", _coco(images=[dict(_IMAGE, width=0)]), ["image 3", "width", "0"]),
    ("negative height", _coco(images=[dict(_IMAGE, height=-4)]), ["image 3", "height", "-4"]),
    ("string width", _coco(images=[dict(_IMAGE, width="200")]), ["image 3", "width"]),
    ("fractional width", _coco(images=[dict(_IMAGE, width=200.5)]), ["image 3", "width"]),
    ("image without id", _coco(images=[{"file_name": "a.png", "width": 1, "height": 1}]),
     ["images[0]", "id"]),
    ("null bbox", _coco(annotations=[_ann(7, None)]), ["annotation 7", "bbox"]),
    ("missing bbox", _coco(annotations=[{"id": 7, "image_id": 3}]), ["annotation 7", "bbox"]),
    ("3-number bbox", _coco(annotations=[_ann(7, [1, 2, 3])]),
     ["annotation 7", "bbox", "4 numbers"]),
    ("string in bbox", _coco(annotations=[_ann(7, ["1", 2, 3, 4])]),
     ["annotation 7", "bbox"]),
    ("bool in bbox", _coco(annotations=[_ann(7, [True, 2, 3, 4])]), ["annotation 7", "bbox"]),
    ("bbox as object", _coco(annotations=[_ann(7, {"x": 1})]), ["annotation 7", "bbox"]),
    ("missing image", _coco(annotations=[_ann(7, [1, 1, 2, 2], image_id=99)]),
     ["annotation 7", "image 99"]),
    ("no image_id", _coco(annotations=[{"id": 7, "bbox": [1, 1, 2, 2]}]),
     ["annotation 7", "image_id"]),
    ("annotation not an object", _coco(annotations=[[1, 1, 2, 2]]), ["annotations[0]"]),
    ("category without name", _coco(categories=[{"id": 1}]), ["categories[0]", "name"]),
    ("category named null", _coco(categories=[{"id": 1, "name": None}]),
     ["categories[0]", "name"]),
    ("JSON Lines given as COCO", '{"file": "a.png"}\n{"file": "b.png"}\n',
     ["not JSON", "--prompts"]),
])
def test_a_malformed_coco_file_is_a_validation_error(tmp_path: Path, name: str, content: Any,
                                                      fragments: list[str]) -> None:
    path = _write(tmp_path, "boxes.json", content)
    with pytest.raises(ValidationError) as info:
        samples_from_coco(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_an_image_without_the_file_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "boxes.json", _coco())
    with pytest.raises(ValidationError, match=r"image 3 has no 'cdf_file_id'"):
        samples_from_coco(path, file_key="cdf_file_id")
    path = _write(tmp_path, "boxes.json", _coco(images=[dict(_IMAGE, cdf_file_id=0)]))
    with pytest.raises(ValidationError, match=r"image 3.*cdf_file_id"):
        samples_from_coco(path, file_key="cdf_file_id")


@pytest.mark.parametrize("reader", [load_records, samples_from_coco])
def test_a_missing_file_says_file_not_found(tmp_path: Path, reader: Any) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ValidationError) as info:
        reader(path)
    assert str(info.value) == f"file not found: {path}"
    assert not isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("reader", [load_records, samples_from_coco])
def test_a_directory_or_non_utf8_file_is_a_validation_error(tmp_path: Path, reader: Any) -> None:
    with pytest.raises(ValidationError, match="is a directory"):
        reader(tmp_path)
    path = _write(tmp_path, "latin1.json", '{"file": "café.png"}'.encode("latin-1"))
    with pytest.raises(ValidationError, match=f"{path}.*UTF-8"):
        reader(path)


@pytest.mark.parametrize("line,fragment", [
    ({"file": "a.png", "points": [[0.5, 0.5, "fg"]]}, "label"),
    ({"file": "a.png", "points": 0.5}, "points"),
    ({"file": "a.png", "points": "0.5, 0.5"}, "points"),
    ({"file": "a.png", "points": [0.5, 0.5]}, "points"),
    ({"file": "a.png", "points": [[0.5]]}, "points[0]"),
    ({"file": "a.png", "box": 0.5}, "box"),
    ({"file": "a.png", "box": [0.1, 0.1, 0.5]}, "box"),
    ({"file": "a.png", "box": None, "points": None}, "at least one point or a box"),
])
def test_a_bad_jsonl_prompt_names_the_line(tmp_path: Path, line: dict[str, Any],
                                           fragment: str) -> None:
    path = _write(tmp_path, "p.jsonl", _jsonl([_GOOD, json.dumps(line)]))
    with pytest.raises(PromptValidationError) as info:
        samples_from_records(load_records(path))
    msg = str(info.value)
    assert f"{path}" in msg and "line 2" in msg and fragment in msg, msg


@pytest.mark.parametrize("rec,fragment", [
    ({"box": [0.1, 0.1, 0.5, 0.5]}, "needs a 'file'"),
    ({"file": True, "box": [0.1, 0.1, 0.5, 0.5]}, "file reference"),
    ({"file": "a.png", "instances": {"box": [0.1, 0.1, 0.5, 0.5]}}, "'instances'"),
    ({"file": "a.png", "instances": [7]}, "instances[0]"),
])
def test_a_malformed_record_names_the_line(tmp_path: Path, rec: dict[str, Any],
                                           fragment: str) -> None:
    path = _write(tmp_path, "p.jsonl", _jsonl([_GOOD, "", json.dumps(rec)]))
    with pytest.raises(ValidationError) as info:
        samples_from_records(load_records(path), on_bad_prompt="skip")
    msg = str(info.value)
    assert f"{path} line 3" in msg and fragment in msg, msg


@pytest.mark.parametrize("bad", [["a.png"], ["1234"], [True], [0], [1.5], "1234"])
def test_samples_from_annotations_takes_internal_ids(shared_emulator, bad: Any) -> None:
    with SegmentationClient(shared_emulator.config) as client:
        with pytest.raises(ValidationError, match="internal file ids"):
            samples_from_annotations(client, bad)


def test_samples_from_annotations_accepts_numpy_ids(make_emulator) -> None:
    emu = make_emulator()
    with SegmentationClient(emu.config) as client:
        fid = client.file_metadata(["synthetic_00001.png"])[0].id
        client.create_annotations([Annotation(
            annotated_resource_type="file", annotated_resource_id=fid,
            annotation_type="images.ObjectDetection", creating_app="t",
            creating_app_version="1.0.0", creating_user=None, status="approved",
            data={"label": "valve",
                  "boundingBox": {"xMin": 0.1, "yMin": 0.2, "xMax": 0.3, "yMax": 0.4}})])
        (sample,) = samples_from_annotations(client, np.array([fid], dtype=np.int64))
    assert sample.file == FileRef(id=fid) and type(sample.file.id) is int
    assert sample.instances[0].prompt.box == Box(0.1, 0.2, 0.3, 0.4)
    assert sample.instances[0].category == "valve"


# --- item 10: line numbers, record numbers, BOM ---------------------------------------------


def test_a_jsonl_syntax_error_names_its_line(tmp_path: Path) -> None:
    lines = [_GOOD] * 6 + [""] * 2 + [_GOOD, "", '{"file": "a.png", "box": [0.1, 0.1,']
    path = _write(tmp_path, "p.jsonl", _jsonl(lines))
    with pytest.raises(ValidationError, match=rf"{path} line 11: not JSON"):
        load_records(path)


def test_a_jsonl_validation_error_names_the_same_line(tmp_path: Path) -> None:
    bad = json.dumps({"file": "a.png", "box": [0.5, 0.1, 0.4, 0.5]})
    lines = [_GOOD] * 6 + [""] * 2 + [_GOOD, "", bad]
    path = _write(tmp_path, "p.jsonl", _jsonl(lines))
    with pytest.raises(PromptValidationError) as info:
        samples_from_records(load_records(path))
    msg = str(info.value)
    assert "line 11" in msg and "x_min" in msg, msg
    assert "record 10" not in msg and "record 8" not in msg, msg


def test_a_json_list_names_the_record_one_based_and_its_line(tmp_path: Path) -> None:
    recs = [{"file": "a.png", "box": [0.1, 0.1, 0.5, 0.5]}] * 10 + [
        {"file": "a.png", "box": [0.1, 0.1, 1.5, 0.5]}]
    path = _write(tmp_path, "p.json", json.dumps(recs, indent=1))
    text = path.read_text()
    line = text[:text.rindex('"file"')].count("\n")  # the line of the last record's "{"
    with pytest.raises(PromptValidationError) as info:
        samples_from_records(load_records(path))
    msg = str(info.value)
    assert "record 11 (1-based)" in msg and f"line {line}" in msg and "Box.x_max" in msg, msg


def test_a_json_list_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = '[\n  {"file": "a.png", "box": [0, 0, 1, 1]},\n  {"file" ]\n]'
    path = _write(tmp_path, "p.json", text)
    with pytest.raises(ValidationError, match=rf"{path}: not JSON.*line 3"):
        load_records(path)
    path = _write(tmp_path, "p.json", '[{"file": "a.png", "box": [0, 0, 1, 1]}] [1]')
    with pytest.raises(ValidationError, match="after the list"):
        load_records(path)


def test_an_empty_prompts_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.jsonl", "\n  \n")
    with pytest.raises(ValidationError, match=f"{path} is empty"):
        load_records(path)
    assert load_records(_write(tmp_path, "p.json", " [ ] ")) == []


def test_one_json_object_is_explained(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.json", json.dumps(_coco(), indent=2))
    with pytest.raises(ValidationError, match="COCO"):
        load_records(path)


def test_python_lists_keep_zero_based_record_positions() -> None:
    with pytest.raises(PromptValidationError, match=r"record 2: .*Box\.x_min"):
        samples_from_records([{"file": "a.png", "box": [0.1, 0.1, 0.5, 0.5]}] * 2 +
                             [{"file": "a.png", "box": [0.6, 0.1, 0.5, 0.5]}])


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_a_utf8_bom_is_accepted_in_prompt_files(tmp_path: Path, suffix: str) -> None:
    body = _jsonl([_GOOD, _GOOD]) if suffix == "jsonl" else json.dumps([json.loads(_GOOD)])
    path = _write(tmp_path, f"p.{suffix}", b"\xef\xbb\xbf" + body.encode("utf-8"))
    (sample,) = samples_from_records(load_records(path))
    assert sample.file == FileRef(external_id="a.png")


def test_a_utf8_bom_is_accepted_in_coco_files(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", b"\xef\xbb\xbf" + json.dumps(_coco()).encode("utf-8"))
    (sample,) = samples_from_coco(path)
    assert sample.instances[0].prompt.box == Box(0.1, 0.1, 0.3, 0.6)


def test_jsonl_lines_split_on_newlines_only(tmp_path: Path) -> None:
    # U+2028 is legal inside a JSON string; str.splitlines() would cut the record in two.
    rec = json.dumps({"file": "a\u2028b.png", "box": [0, 0, 1, 1]}, ensure_ascii=False)
    path = _write(tmp_path, "p.jsonl", rec + "\r\n" + _GOOD + "\r\n")
    samples = samples_from_records(load_records(path))
    assert [s.file.external_id for s in samples] == ["a\u2028b.png", "a.png"]


# --- item 11: one bad box does not have to abort the run ------------------------------------

_BAD_BOXES = [
    _ann(7, [20, 10, 40, 50]),      # good
    _ann(8, [30, 10, 0, 20]),       # zero width
    _ann(9, [-5, 10, 20, 20]),      # x = -5 px: clipped to [0, 10, 15, 30]
    _ann(10, [300, 10, 20, 20]),    # right of the 200 px wide image
    _ann(11, [150, 80, 100, 100]),  # over the corner: clipped to [150, 80, 200, 100]
    _ann(12, None),                 # no box at all
]


def test_bad_coco_boxes_fail_at_once_with_their_count(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", _coco(annotations=_BAD_BOXES))
    with pytest.raises(PromptValidationError) as info:
        samples_from_coco(path)
    msg = str(info.value)
    assert "5 bad prompts" in msg, msg
    for ann_id in (8, 9, 10):
        assert f"annotation {ann_id}" in msg, msg
    assert "on_bad_prompt" in msg and "annotation 7" not in msg, msg
    assert info.value.bad_prompts == 5  # type: ignore[attr-defined]
    assert len(info.value.problems) == 5  # type: ignore[attr-defined]


def test_bad_coco_boxes_skipped_with_one_warning(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path, "c.json", _coco(annotations=_BAD_BOXES))
    with caplog.at_level(logging.WARNING, logger="cogseg_ml.samples"):
        (sample,) = samples_from_coco(path, on_bad_prompt="skip")
    assert [i.prompt.box for i in sample.instances] == [Box(0.1, 0.1, 0.3, 0.6)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "skipped 5 bad prompts" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()


def test_bad_coco_boxes_clipped_to_the_image(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path, "c.json", _coco(annotations=_BAD_BOXES))
    with caplog.at_level(logging.WARNING, logger="cogseg_ml.samples"):
        (sample,) = samples_from_coco(path, on_bad_prompt="clip")
    assert [i.prompt.box for i in sample.instances] == [
        Box(0.1, 0.1, 0.3, 0.6), Box(0.0, 0.1, 15 / 200, 0.3), Box(0.75, 0.8, 1.0, 1.0)]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "clipped 2 boxes" in warning and "dropped 3" in warning, warning


def test_an_image_whose_boxes_are_all_dropped_gives_no_sample(tmp_path: Path) -> None:
    images = [dict(_IMAGE), dict(_IMAGE, id=4, file_name="b.png")]
    path = _write(tmp_path, "c.json", _coco(images=images, annotations=[
        _ann(7, [20, 10, 40, 50]), _ann(8, [0, 0, 0, 0], image_id=4)]))
    samples = samples_from_coco(path, on_bad_prompt="skip")
    assert [s.meta["coco_image_id"] for s in samples] == [3]


def test_bad_record_prompts_fail_skip_or_clip(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    lines = [json.dumps(r) for r in (
        {"file": "a.png", "box": [0.1, 0.1, 0.5, 0.5]},
        {"file": "a.png", "box": [-0.2, 0.1, 0.5, 1.3]},        # clipped
        {"file": "a.png", "box": [1.2, 0.1, 1.5, 0.5]},         # empty once clipped
        {"file": "a.png", "points": [[0.5, 0.5, 0.5]]},         # label 0.5: never clipped
        {"file": "b.png", "box": [0.5, 0.5, 0.5, 0.6]},         # zero width
    )]
    path = _write(tmp_path, "p.jsonl", _jsonl(lines))
    with pytest.raises(PromptValidationError) as info:
        samples_from_records(load_records(path))
    msg = str(info.value)
    assert "4 bad prompts" in msg and "line 2" in msg and "line 5" in msg, msg
    with caplog.at_level(logging.WARNING, logger="cogseg_ml.samples"):
        skipped = samples_from_records(load_records(path), on_bad_prompt="skip")
        clipped = samples_from_records(load_records(path), on_bad_prompt="clip")
    assert [len(s.instances) for s in skipped] == [1]
    assert [s.file.external_id for s in clipped] == ["a.png"]
    assert [i.prompt.box for i in clipped[0].instances] == [Box(0.1, 0.1, 0.5, 0.5),
                                                            Box(0.0, 0.1, 0.5, 1.0)]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2, messages
    assert "skipped 4 bad prompts" in messages[0]
    assert "clipped 1 box" in messages[1] and "dropped 3" in messages[1], messages[1]


def test_good_input_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path, "c.json", _coco())
    with caplog.at_level(logging.WARNING, logger="cogseg_ml.samples"):
        samples_from_coco(path, on_bad_prompt="clip")
        samples_from_records([json.loads(_GOOD)], on_bad_prompt="skip")
    assert not caplog.records


def test_an_unknown_policy_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", _coco())
    with pytest.raises(ValidationError, match="on_bad_prompt"):
        samples_from_coco(path, on_bad_prompt="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="on_bad_prompt"):
        samples_from_records([], on_bad_prompt="drop")  # type: ignore[arg-type]


def test_the_first_few_bad_prompts_are_listed(tmp_path: Path) -> None:
    anns = [_ann(100 + k, [0, 0, 0, 5]) for k in range(40)]
    path = _write(tmp_path, "c.json", _coco(annotations=anns))
    with pytest.raises(PromptValidationError) as info:
        samples_from_coco(path)
    msg = str(info.value)
    assert "40 bad prompts" in msg and "annotation 100" in msg and "annotation 139" not in msg
    assert "35 more" in msg, msg


# --- item 12: numpy, torch and CDF's wire shapes --------------------------------------------


def test_numpy_and_torch_scalars_become_plain_python() -> None:
    p = Point(np.float32(0.5), np.float64(0.25), np.int64(1))  # type: ignore[arg-type]
    assert (type(p.x), type(p.y), type(p.label)) == (float, float, int)
    q = Point(torch.tensor(0.5), torch.tensor(0.25), torch.tensor(0))  # type: ignore[arg-type]
    assert (q.x, q.y, q.label) == (0.5, 0.25, 0) and type(q.label) is int
    b = Box(*np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    assert all(type(v) is float for v in (b.x_min, b.y_min, b.x_max, b.y_max))


def test_pixel_helpers_take_numpy_sizes() -> None:
    w, h = np.int64(640), np.int32(480)
    p = Point.from_pixels(np.float32(320), np.int64(120), w, h)  # type: ignore[arg-type]
    assert (p.x, p.y) == (0.5, 0.25)
    b = Box.from_xywh_pixels(*np.array([64, 48, 64, 96]), width=w, height=h)  # type: ignore
    assert b == Box(0.1, 0.1, 0.2, 0.3)
    for bad in (640.0, "640", True, np.float64(640)):
        with pytest.raises(PromptValidationError, match="width"):
            Point.from_pixels(1, 1, width=bad, height=10)  # type: ignore[arg-type]
    with pytest.raises(PromptValidationError, match="px"):
        Point.from_pixels("3", 1, width=10, height=10)  # type: ignore[arg-type]


@pytest.mark.parametrize("points,box", [
    (np.array([[0.1, 0.2, 1], [0.3, 0.4, 0]]), np.array([0.05, 0.1, 0.5, 0.6])),
    (np.array([[0.1, 0.2, 1], [0.3, 0.4, 0]], dtype=np.float32),
     np.array([0.05, 0.1, 0.5, 0.6], dtype=np.float32)),
    (torch.tensor([[0.1, 0.2, 1.0], [0.3, 0.4, 0.0]], requires_grad=True),
     torch.tensor([0.05, 0.1, 0.5, 0.6])),
    ([(np.float32(0.1), np.float32(0.2), np.int64(1)), [0.3, 0.4, np.int8(0)]],
     (np.float64(0.05), 0.1, np.float32(0.5), 0.6)),
    ([{"x": 0.1, "y": 0.2, "label": 1}, {"x": 0.3, "y": 0.4, "label": 0}],
     {"xMin": 0.05, "yMin": 0.1, "xMax": 0.5, "yMax": 0.6}),
    ([{"x": np.float32(0.1), "y": 0.2}, {"x": 0.3, "y": 0.4, "label": np.int64(0)}],
     {"x_min": 0.05, "y_min": 0.1, "x_max": 0.5, "y_max": 0.6}),
])
def test_array_and_wire_prompts_give_the_plain_cache_key(points: Any, box: Any) -> None:
    plain = Prompt.of([(0.1, 0.2, 1), (0.3, 0.4, 0)], (0.05, 0.1, 0.5, 0.6))
    prompt = Prompt.of(points, box)
    for p in prompt.points:
        assert (type(p.x), type(p.y), type(p.label)) == (float, float, int)

    def key(pr: Prompt) -> str:
        return CacheKey(project="p", file=FileRef(id=np.int64(5)),  # type: ignore[arg-type]
                        prompt=pr, backend="cdf-api", origin="https://x").fingerprint()

    assert key(prompt) == key(plain)


def test_a_numpy_label_no_longer_breaks_the_cache_key() -> None:
    prompt = Prompt(points=(Point(0.5, 0.5, np.int64(1)),))  # type: ignore[arg-type]
    k = CacheKey(project="p", file=FileRef(id=1), prompt=prompt, backend="b")
    assert k.fingerprint() == CacheKey(project="p", file=FileRef(id=1), backend="b",
                                       prompt=Prompt(points=(Point(0.5, 0.5, 1),))).fingerprint()


def test_numpy_file_ids_become_ints() -> None:
    ref = FileRef.parse(np.int64(12))  # type: ignore[arg-type]
    assert ref == FileRef(id=12) and type(ref.id) is int
    assert type(FileRef(id=np.int32(3)).id) is int  # type: ignore[arg-type]


@pytest.mark.parametrize("label", [0.5, 1.9, -0.0001, True, False, "1", "fg", None, math.nan,
                                   np.bool_(True), np.float64(0.5), 2, -1])
def test_labels_other_than_zero_and_one_are_refused(label: Any) -> None:
    with pytest.raises(PromptValidationError, match="label"):
        Point(0.5, 0.5, label)
    with pytest.raises(PromptValidationError, match=r"points\[0\].*label"):
        Prompt.of([(0.5, 0.5, label)])
    with pytest.raises(PromptValidationError, match=r"points\[0\].*label"):
        Prompt.of([{"x": 0.5, "y": 0.5, "label": label}])


@pytest.mark.parametrize("label,expected", [(1, 1), (0, 0), (1.0, 1), (0.0, 0),
                                            (np.int64(1), 1), (np.float32(0.0), 0)])
def test_labels_zero_and_one_are_plain_ints(label: Any, expected: int) -> None:
    p = Point(0.5, 0.5, label)
    assert p.label == expected and type(p.label) is int
    assert p == Point(0.5, 0.5, expected) and hash(p) == hash(Point(0.5, 0.5, expected))


@pytest.mark.parametrize("points,box,fragment", [
    (np.array([0.5, 0.5]), None, "wrap a single point"),
    (np.zeros((2, 4)), None, "(N, 2) or (N, 3)"),
    (torch.zeros((1, 2, 2)), None, "(N, 2) or (N, 3)"),
    (None, np.zeros((1, 4)), "4 numbers"),
    (None, torch.zeros(3), "4 numbers"),
    ([{"x": 0.5, "y": 0.5, "lable": 0}], None, "'lable'"),
    ([{"x": 0.5}], None, "'y'"),
    (None, {"xMin": 0.1, "yMin": 0.1, "xMax": 0.5}, "yMax"),
    (None, {"xMin": 0.1, "yMin": 0.1, "xMax": 0.5, "yMax": 0.6, "x": 1}, "'x'"),
    (None, "0 0 1 1", "box"),
    ({"x": 0.5, "y": 0.5}, None, "wrap a single point"),
    (np.array([[0.5, np.nan]]), None, "Point.y"),
])
def test_unusable_shapes_are_refused(points: Any, box: Any, fragment: str) -> None:
    with pytest.raises(PromptValidationError) as info:
        Prompt.of(points, box)
    assert fragment in str(info.value)


def test_records_take_cdf_wire_shapes(tmp_path: Path) -> None:
    recs = [
        {"file": {"fileExternalId": "a.png"},
         "points": [{"x": 0.1, "y": 0.2, "label": 1}, {"x": 0.3, "y": 0.4, "label": 0}],
         "boundingBox": {"xMin": 0.05, "yMin": 0.1, "xMax": 0.5, "yMax": 0.6}},
        {"file": {"fileId": 9}, "box": {"xMin": 0.1, "yMin": 0.1, "xMax": 0.2, "yMax": 0.2},
         "category": "valve"},
    ]
    path = _write(tmp_path, "p.jsonl", _jsonl([json.dumps(r) for r in recs]))
    a, b = samples_from_records(load_records(path))
    assert a.instances[0].prompt == Prompt.of([(0.1, 0.2, 1), (0.3, 0.4, 0)],
                                              (0.05, 0.1, 0.5, 0.6))
    assert b.file == FileRef(id=9) and b.instances[0].prompt.box == Box(0.1, 0.1, 0.2, 0.2)
    with pytest.raises(PromptValidationError, match="both 'box' and 'boundingBox'"):
        samples_from_records([{"file": 1, "box": [0, 0, 1, 1],
                               "boundingBox": {"xMin": 0, "yMin": 0, "xMax": 1, "yMax": 1}}])


def test_records_take_numpy_values() -> None:
    (s,) = samples_from_records([{"file": np.int64(4), "points": np.array([[0.5, 0.5, 1]]),
                                  "box": torch.tensor([0.1, 0.1, 0.9, 0.9], dtype=torch.float64)}])
    assert s.file == FileRef(id=4)
    assert s.instances[0].prompt == Prompt.of([(0.5, 0.5, 1)], (0.1, 0.1, 0.9, 0.9))
