"""From class names to labels, end to end against the emulator: the ground-truth detector boxes
the synthetic images, the boxes become prompts (cached per file version, class list and
detector), the labeler segments them, and COCO names detector and segmenter per label; the
command line takes ``--classes`` and refuses bad input with exit 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cogseg_ml import store
from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.detect.ground_truth import Injections, save_ground_truth_detector
from cogseg_ml.detect.text_boxes import TextBoxDetector
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image, make_dataset
from cogseg_ml.errors import ValidationError
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.mask_codec import encode, iou_matrix
from cogseg_ml.prompts import FileRef
from cogseg_ml.samples.file_listing import samples_from_files
from cogseg_ml.samples.from_text import samples_from_text
from tests.test_cli_input import cdf_env, run_main

NAMES = {"rectangle": "valve", "ellipse": "pressure gauge", "triangle": "flange"}
CLASSES = ["valve", "pressure gauge", "flange"]
SITE = "/site-a/"


@pytest.fixture(scope="module")
def shapes() -> list[SyntheticImage]:
    return make_dataset(5, seed=7, height=120, width=160)


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator], shapes: list[SyntheticImage]) -> Emulator:
    """The images in /site-a/ (PNG), a PDF beside them, and one image elsewhere."""
    e = make_emulator(images=[], processing_time_s=0.01)
    for im in shapes:
        e.add_image(encode_image(im.pixels), im.name, external_id=im.name, directory=SITE)
    e.add_image(b"%PDF-1.4", "survey.pdf", external_id="survey.pdf", directory=SITE)
    e.add_image(encode_image(shapes[0].pixels), "copy.png", external_id="copy.png",
               directory="/site-b/")
    return e


@pytest.fixture
def detector_dir(tmp_path: Path, shapes: list[SyntheticImage]) -> Path:
    """The ground-truth detector with a cross-class duplicate and a distractor per image."""
    return save_ground_truth_detector(tmp_path / "gt", shapes, class_names=NAMES,
                                      injections=Injections(duplicates=1, distractors=1))


def refs(shapes: list[SyntheticImage]) -> list[FileRef]:
    return [FileRef(external_id=im.name) for im in shapes]


def check_labels(coco: dict[str, Any], shapes: list[SyntheticImage]) -> list[float]:
    """Every true object has one label of its class whose mask matches it; returns IoUs."""
    by_name = {im.name: im for im in shapes}
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    ious = []
    for img in coco["images"]:
        im = by_name[img["file_name"]]
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert len(anns) == len(im.objects), img["file_name"]  # duplicates and distractors gone
        m = iou_matrix([a["segmentation"] for a in anns],
                       encode(np.stack([o.mask for o in im.objects])))
        for j, o in enumerate(im.objects):
            i = int(m[:, j].argmax())
            assert cats[anns[i]["category_id"]] == NAMES[o.category]
            ious.append(float(m[i, j]))
    return ious


# --- samples_from_text -----------------------------------------------------------------------


def test_each_detection_becomes_a_box_prompt_with_its_class(
        emu: Emulator, shapes: list[SyntheticImage], detector_dir: Path, tmp_path: Path) -> None:
    det = TextBoxDetector.from_pretrained(detector_dir, device="cpu")
    blank = make_dataset(1, seed=3, height=60, width=80, n_objects=0)[0]
    emu.add_image(encode_image(blank.pixels), "empty.png", external_id="empty.png")
    files = [*refs(shapes), FileRef(external_id="empty.png"), FileRef(external_id="survey.pdf"),
             FileRef(external_id="nowhere.png")]
    got = samples_from_text(files, CLASSES, det, config=emu.static_config(),
                            cache=tmp_path / "cache")
    assert [s.file for s in got] == refs(shapes)  # input order, one sample per image
    for s, im in zip(got, shapes, strict=True):
        assert sorted(i.category or "" for i in s.instances) == \
            sorted(NAMES[o.category] for o in im.objects)
        assert s.meta["detector"] == det.identity and len(s.meta["detections"]) == \
            len(s.instances)
        for inst, d in zip(s.instances, s.meta["detections"], strict=True):
            assert inst.prompt.box == d.prompt_box(160, 120) and inst.category == d.label
    assert got.without_detections == [FileRef(external_id="empty.png")]
    assert set(got.failed) == {"externalId='survey.pdf'", "externalId='nowhere.png'"}
    assert "cannot be segmented" in got.failed["externalId='survey.pdf'"]
    assert "does not exist" in got.failed["externalId='nowhere.png'"]
    assert got.dropped == {"cross-class duplicate": 5, "below text threshold": 5}
    assert sum(got.per_class.values()) == sum(len(im.objects) for im in shapes)


def test_detections_are_cached_per_file_version_class_list_and_detector(
        emu: Emulator, shapes: list[SyntheticImage], detector_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, cache = emu.static_config(), tmp_path / "cache"
    det = TextBoxDetector.from_pretrained(detector_dir, device="cpu")
    first = samples_from_text(refs(shapes), CLASSES, det, config=cfg, cache=cache)
    calls = det.forward_calls
    again = samples_from_text(refs(shapes), CLASSES, det, config=cfg, cache=cache)
    assert (first.detected, first.from_cache) == (5, 0) and calls >= 1
    assert (again.detected, again.from_cache) == (0, 5) and det.forward_calls == calls
    assert [s.instances for s in again] == [s.instances for s in first]
    fewer = samples_from_text(refs(shapes), ["flange", "valve"], det, config=cfg, cache=cache)
    assert fewer.detected == 5  # another class list: detected again
    strict = TextBoxDetector.from_pretrained(detector_dir, device="cpu", box_threshold=0.95)
    assert samples_from_text(refs(shapes), CLASSES, strict, config=cfg,
                             cache=cache).detected == 5  # other settings, another identity
    # New content under the same file: only that file is detected again (once the process's
    # remembered versions have expired, VERSION_TTL_S; here at once).
    monkeypatch.setattr(store, "VERSION_TTL_S", 0.0)
    emu.replace_file(shapes[1].name, encode_image(shapes[2].pixels))
    replaced = samples_from_text(refs(shapes), CLASSES, det, config=cfg, cache=cache)
    assert (replaced.detected, replaced.from_cache) == (1, 4)
    assert replaced[1].instances == first[2].instances


def test_labels_from_class_names_match_the_truth_and_name_detector_and_segmenter(
        emu: Emulator, shapes: list[SyntheticImage], detector_dir: Path, tmp_path: Path) -> None:
    det = TextBoxDetector.from_pretrained(detector_dir, device="cpu")
    cfg = emu.static_config()
    labeler = SegmentationLabeler(cfg, cache=tmp_path / "cache", categories=CLASSES,
                                  progress=False)
    with SegmentationClient(cfg) as client:
        listing = samples_from_files(client, {"directoryPrefix": SITE})
    assert len(listing) == 5 and listing.skipped_total == 1
    samples = samples_from_text(listing, CLASSES, det, store=labeler.store)
    report = labeler.label(samples)
    assert report.failed == 0
    n = labeler.to_coco(tmp_path / "labels.json", samples=samples)
    coco = json.loads((tmp_path / "labels.json").read_text())
    assert n == len(coco["annotations"]) == sum(len(im.objects) for im in shapes)
    assert [c["name"] for c in coco["categories"]] == CLASSES
    assert min(check_labels(coco, shapes)) >= 0.98
    for a in coco["annotations"]:
        assert a["detector"] == det.identity and a["source"] == "cdf-api"
        assert a["segmenter"].startswith("cdf-api:") and 0 < a["detector_score"] <= 1
        # The label's box is the mask's, not the detector's looser one.
        x, y, w, h = a["bbox"]
        dx, dy, dw, dh = a["detector_bbox"]
        assert dx <= x and dy <= y and dx + dw >= x + w and dy + dh >= y + h
        assert (dw, dh) != (w, h)
    # Images were downloaded once: the detector and the labeler share the store.
    assert sum("/files/download/" in r.path for r in emu.requests) == 5


def test_samples_from_text_refuses_bad_input(detector_dir: Path) -> None:
    det = TextBoxDetector.from_pretrained(detector_dir, device="cpu")
    with pytest.raises(ValidationError, match="is empty"):
        samples_from_text([1], [], det)
    with pytest.raises(ValidationError, match="twice"):
        samples_from_text([1], ["valve", "Valve"], det)
    with pytest.raises(ValidationError, match="needs the CDF connection"):
        samples_from_text([1], CLASSES, det)
    with pytest.raises(ValidationError, match="TextBoxDetector"):
        samples_from_text([1], CLASSES, object())  # type: ignore[arg-type]


# --- the command line ------------------------------------------------------------------------


def label_argv(tmp: Path, detector: Path, *extra: str) -> list[str]:
    return ["label", "--classes", ",".join(CLASSES), "--detector", str(detector),
            "--out", str(tmp / "labels.json"), "--cache", str(tmp / "cache"), "--no-progress",
            *extra]


@pytest.fixture
def env(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    for k, v in cdf_env(emu).items():
        monkeypatch.setenv(k, v)
    return emu


def test_cogseg_label_classes_from_a_files_filter(
        env: Emulator, shapes: list[SyntheticImage], detector_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = label_argv(tmp_path, detector_dir, "--files-filter",
                      json.dumps({"directoryPrefix": SITE}), "--report",
                      str(tmp_path / "report.json"))
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    coco = json.loads((tmp_path / "labels.json").read_text())
    ious = check_labels(coco, shapes)
    assert len(ious) == sum(len(im.objects) for im in shapes) and min(ious) >= 0.98
    assert "6 files listed, 5 JPEG/PNG images kept, 1 skipped" in err
    assert "cross-class duplicate: 5" in err and "below text threshold: 5" in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["detection"]["dropped"] == {"cross-class duplicate": 5,
                                              "below text threshold": 5}
    assert report["labelled"] == len(ious)
    # A second run reads the detections and the masks from the cache.
    code, _, err = run_main(argv, capsys)
    assert code == 0 and "0 detected, 5 from the detection cache" in err
    assert f"{len(ious)} labelled ({len(ious)} from cache" in err


def test_cogseg_label_classes_from_a_file_of_ids(
        env: Emulator, shapes: list[SyntheticImage], detector_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(im.name for im in shapes[:2]) + "\n")
    code, _, err = run_main(label_argv(tmp_path, detector_dir, "--file-ids", str(ids)), capsys)
    assert code == 0, err
    coco = json.loads((tmp_path / "labels.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == [im.name for im in shapes[:2]]
    assert min(check_labels(coco, shapes)) >= 0.98
    assert not any(r.path.endswith("/files/list") for r in env.requests)


@pytest.mark.parametrize(("case", "said"), [
    ("empty", "--classes is empty"),
    ("duplicate", "--classes names 'valve' twice"),
    ("delimiter", "holds '.'"),
    ("no detector", "--classes needs --detector DIR"),
    ("missing detector", "does not exist"),
    ("sam folder", "not a text-prompted detector"),
    ("no images", "--classes needs the images to box"),
    ("detector alone", "--detector goes with --classes"),
    ("not json", "--files-filter is not JSON"),
    ("not an object", "must be a JSON object"),
    ("unknown field", "did you mean 'directoryPrefix'"),
    ("ids file missing", "--file-ids"),
])
def test_bad_class_input_is_exit_2_with_one_line_before_any_request(
        case: str, said: str, env: Emulator, detector_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    sam = tmp_path / "sam"
    sam.mkdir()
    (sam / "config.json").write_text('{"model_type": "sam2"}')
    out = tmp_path / "labels.json"
    base = ["label", "--out", str(out), "--cache", str(tmp_path / "cache")]
    flt = ["--files-filter", "{}"]
    argv = {
        "empty": ["--classes", " , ", "--detector", str(detector_dir), *flt],
        "duplicate": ["--classes", "valve,pressure gauge,valve", "--detector",
                      str(detector_dir), *flt],
        "delimiter": ["--classes", "valve. gauge", "--detector", str(detector_dir), *flt],
        "no detector": ["--classes", "valve", *flt],
        "missing detector": ["--classes", "valve", "--detector", str(tmp_path / "nope"), *flt],
        "sam folder": ["--classes", "valve", "--detector", str(sam), *flt],
        "no images": ["--classes", "valve", "--detector", str(detector_dir)],
        "detector alone": ["--prompts", str(tmp_path / "p.jsonl"), "--detector",
                           str(detector_dir)],
        "not json": ["--classes", "valve", "--detector", str(detector_dir), "--files-filter",
                     "{directoryPrefix: /a/}"],
        "not an object": ["--classes", "valve", "--detector", str(detector_dir),
                          "--files-filter", '["/a/"]'],
        "unknown field": ["--classes", "valve", "--detector", str(detector_dir),
                          "--files-filter", '{"directoryPrefx": "/a/"}'],
        "ids file missing": ["--classes", "valve", "--detector", str(detector_dir),
                             "--file-ids", str(tmp_path / "ids.txt")],
    }[case]
    code, _, err = run_main(base + argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith("cogseg: ")]
    assert code == 2 and len(lines) == 1 and said in lines[0], err
    assert not out.exists()
    assert not any("/files/" in r.path or "/vision/" in r.path for r in env.requests), case


def test_a_filter_cdf_refuses_is_exit_2_naming_the_field(
        env: Emulator, detector_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(label_argv(tmp_path, detector_dir, "--files-filter",
                                       '{"labels": {"containsAny": []}}'), capsys)
    assert code == 2, err
    (line,) = [x for x in err.splitlines() if x.startswith("cogseg: ")]
    assert "CDF refused the files/list filter" in line and "filter.labels" in line
    assert not (tmp_path / "labels.json").exists()


def test_local_backend_segments_the_boxes_without_the_vision_api(
        env: Emulator, shapes: list[SyntheticImage], detector_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    from cogseg_ml.backends.sam2 import save_random_checkpoint

    model = save_random_checkpoint(tmp_path / "sam21", "sam2", seed=1)
    env.retired = True
    argv = label_argv(tmp_path, detector_dir, "--files-filter",
                      json.dumps({"directoryPrefix": SITE, "name": shapes[0].name}),
                      "--backend", "local", "--model", str(model), "--device", "cpu")
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    coco = json.loads((tmp_path / "labels.json").read_text())
    assert len(coco["annotations"]) == len(shapes[0].objects)
    for a in coco["annotations"]:
        assert a["source"] == "local-sam" and a["segmenter"].startswith("local-sam:sam2:")
        assert a["detector"].startswith("ground-truth:")
    assert not any("/vision/" in r.path for r in env.requests)
