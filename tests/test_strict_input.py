"""Hostile and odd input gets exit 2 and one line naming what to fix, never a traceback: JSON
nested 100,000 levels deep, integers past Python's 4300-digit limit, lone surrogates, NaN;
COCO inputs keep every category and refuse duplicate ones; corrupt RLE names the file and the
annotation; numeric options are checked before any work. Readers are tested on their own
(``strict_json``) and through the command line with real files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cogseg_ml.strict_json as strict_json
from cogseg_ml.cli import build_parser, main
from cogseg_ml.coco_io import read_labels
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import FileRef
from cogseg_ml.samples import load_records, samples_from_coco
from tests.test_cli_input import cdf_env, run_process
from tests.test_no_overwrites import _coco_boxes

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "1" + "0" * 5000


def one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("cogseg: "), err
    return err


# --- the reader on its own --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "words"), [
    (DEEP, "nested deeper"),
    ("[" * 150 + "]" * 150, "nested deeper than 100"),
    ('{"x": ' + HUGE + "}", "5001 digits"),
    ('{"a": [{"id": 7, "score": NaN}]}', "a[0].score (in the record with id 7) is nan"),
    ('{"a": Infinity}', "a is inf"),
    ('{"a": -1e999}', "a is -inf"),
    ('{"name": "\\ud800"}', "lone UTF-16 surrogate"),
    ('{"\\udfff": 1}', "a key under the top level"),
    ("{} {}", "Extra data at line 1 column 4"),
    ('{"a": }', "Expecting value at line 1 column 7"),
])
def test_strict_reader_refuses_with_a_place(text: str, words: str) -> None:
    with pytest.raises(ValidationError) as exc:
        strict_json.loads(text, "f.json")
    assert str(exc.value).startswith("f.json"), exc.value
    assert words in str(exc.value), exc.value


def test_strict_reader_reads_ordinary_json_unchanged() -> None:
    doc = {"images": [{"id": 2**62, "file_name": "ü/ø.png", "w": 1.5e300}], "x": [[[]]],
           "neg": -12, "u2028": "a\u2028b"}
    text = json.dumps(doc)
    assert strict_json.loads(text, "f") == json.loads(text) == doc
    assert strict_json.loads(text.encode("utf-8-sig"), "f") == doc


def test_strict_writer_refuses_nan() -> None:
    with pytest.raises(ValueError):
        strict_json.dumps({"score": float("nan")})


def test_a_lone_surrogate_is_refused_in_a_file_reference() -> None:
    with pytest.raises(ValidationError, match="lone UTF-16 surrogate"):
        FileRef(external_id="pump\ud800.jpg")
    with pytest.raises(ValidationError, match="lone UTF-16 surrogate"):
        FileRef.parse({"instanceId": {"space": "s", "externalId": "\udc00"}})


# --- every reader through the command line -----------------------------------------------------

def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _labels(t: Path, images: list[SyntheticImage], env: Emulator, capsys: Any) -> Path:
    boxes = _coco_boxes(t / "boxes.json", images[:2])
    assert main(["label", "--no-progress", "--coco-boxes", str(boxes), "--out",
                 str(t / "labels.json"), "--cache", str(t / "cache")]) == 0
    capsys.readouterr()
    return t / "labels.json"


def _labels_edited(t: Path, images: list[SyntheticImage], env: Emulator, capsys: Any,
                   edit: Callable[[dict[str, Any]], None]) -> tuple[Path, dict[str, Any]]:
    """A labels file cogseg wrote, then changed by ``edit`` (written back by ``json.dumps``,
    which writes a NaN bare); the file and the changed document."""
    labels = _labels(t, images, env, capsys)
    coco = json.loads(labels.read_text())
    edit(coco)
    labels.write_text(json.dumps(coco))
    return labels, coco


READERS: dict[str, Callable[[Path, str], list[str]]] = {
    "--prompts JSON Lines": lambda t, doc: ["label", "--prompts", _write(t / "p.jsonl", doc),
                                            "--out", str(t / "o.json")],
    "--prompts JSON list": lambda t, doc: ["label", "--prompts",
                                           _write(t / "p.json", "[" + doc + "]"),
                                           "--out", str(t / "o.json")],
    "--coco-boxes": lambda t, doc: ["label", "--coco-boxes", _write(t / "c.json", doc),
                                    "--out", str(t / "o.json")],
    "--files-filter @FILE": lambda t, doc: [
        "label", "--classes", "square", "--detector", str(t), "--files-filter",
        "@" + _write(t / "f.json", doc), "--out", str(t / "o.json")],
    "--file-ids": lambda t, doc: ["label", "--classes", "square", "--detector", str(t),
                                  "--file-ids", _write(t / "ids.txt", doc),
                                  "--out", str(t / "o.json")],
    "export LABELS": lambda t, doc: ["export", _write(t / "l.json", doc), "--to", "coco",
                                     "--out", str(t / "exp")],
    "review LABELS": lambda t, doc: ["review", _write(t / "l.json", doc), "--out",
                                     str(t / "rev")],
}
HOSTILE = {
    "nested 100,000 deep": ('{"file": ' + DEEP + "}", "nested deeper"),
    "a 5001-digit integer": ('{"file": "a", "box": [0, 0, ' + HUGE + ", 1]}", "digits"),
    "a lone surrogate": ('{"file": "pump-\\ud800.jpg", "box": [0, 0, 1, 1]}', "surrogate"),
}


@pytest.mark.parametrize("hostile", list(HOSTILE))
@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_refuses_hostile_json_with_one_line(
        reader: str, hostile: str, tmp_path: Path, env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    doc, words = HOSTILE[hostile]
    if reader == "--file-ids":
        doc = doc.replace("\n", " ")
    err = one_line_exit_2(READERS[reader](tmp_path, doc), capsys)
    assert words in err, err
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "exp").exists()
    assert not (tmp_path / "rev").exists()


def test_a_nan_score_in_a_labels_file_is_refused_naming_the_annotation(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    labels, coco = _labels_edited(tmp_path, images, env, capsys,
                                  lambda c: c["annotations"][1].update(score=float("nan")))
    target = coco["annotations"][1]
    assert "NaN" in labels.read_text()
    for argv in (["export", str(labels), "--to", "labelstudio", "--out", str(tmp_path / "ls")],
                 ["review", str(labels), "--out", str(tmp_path / "rev")]):
        err = one_line_exit_2(argv, capsys)
        assert "labels.json" in err and f"id {target['id']}" in err and "nan" in err, err
    assert not (tmp_path / "ls").exists() and not (tmp_path / "rev").exists()


def test_a_corrupt_rle_names_the_file_and_the_annotation(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    def corrupt(coco: dict[str, Any]) -> None:
        rle = coco["annotations"][0]["segmentation"]
        rle["counts"] = rle["counts"][:-3] + "zz9"

    labels, coco = _labels_edited(tmp_path, images, env, capsys, corrupt)
    ann = coco["annotations"][0]
    with pytest.raises(ValidationError) as exc:
        read_labels(labels)
    assert "labels.json" in str(exc.value) and f"id {ann['id']}" in str(exc.value)
    assert "RLE" in str(exc.value)
    err = one_line_exit_2(["export", str(labels), "--to", "yolo", "--out",
                           str(tmp_path / "y")], capsys)
    assert f"id {ann['id']}" in err


@pytest.mark.parametrize("counts", ["", "!!!", "0", [5, 3], [-1, 99999]])
def test_rle_counts_that_do_not_cover_the_image_are_refused(
        counts: Any, tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    labels, _ = _labels_edited(tmp_path, images, env, capsys, lambda c: c["annotations"][0][
        "segmentation"].update(counts=counts))
    with pytest.raises(ValidationError, match="RLE"):
        read_labels(labels)


def test_a_coco_file_given_to_prompts_suggests_coco_boxes(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    boxes = _coco_boxes(tmp_path / "boxes.json", images[:1])  # one line, like ours
    err = one_line_exit_2(["label", "--prompts", str(boxes), "--out", str(tmp_path / "o.json")],
                          capsys)
    assert "--coco-boxes" in err, err
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(boxes.read_text()), indent=2))
    err = one_line_exit_2(["label", "--prompts", str(pretty), "--out", str(tmp_path / "o.json")],
                          capsys)
    assert "--coco-boxes" in err, err


# --- 5, 6: COCO categories --------------------------------------------------------------------

def _split(t: Path, images: list[SyntheticImage], name: str, keep: str) -> Path:
    """A split of one source that uses only the category ``keep`` but lists all of them."""
    src = json.loads(_coco_boxes(t / f"{name}-all.json", images).read_text())
    wanted = next(c["id"] for c in src["categories"] if c["name"] == keep)
    src["annotations"] = [a for a in src["annotations"] if a["category_id"] == wanted]
    used = {a["image_id"] for a in src["annotations"]}
    src["images"] = [im for im in src["images"] if im["id"] in used]
    path = t / f"{name}.json"
    path.write_text(json.dumps(src))
    return path


def test_unused_categories_of_a_coco_input_are_kept_in_labels_and_exports(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    names = sorted({o.category for im in images for o in im.objects})
    assert len(names) >= 2
    splits = {"train": _split(tmp_path, images, "train", names[0]),
              "val": _split(tmp_path, images, "val", names[-1])}
    source_cats = json.loads(splits["train"].read_text())["categories"]
    yaml_names = {}
    for split, boxes in splits.items():
        labels = tmp_path / f"{split}-labels.json"
        assert main(["label", "--no-progress", "--coco-boxes", str(boxes), "--out", str(labels),
                     "--cache", str(tmp_path / "cache")]) == 0, capsys.readouterr().err
        got = json.loads(labels.read_text())["categories"]
        assert [(c["id"], c["name"]) for c in got] == \
            [(c["id"], c["name"]) for c in source_cats]
        assert main(["export", str(labels), "--to", "yolo", "--out",
                     str(tmp_path / f"{split}-yolo"), "--cache",
                     str(tmp_path / "cache")]) == 0, capsys.readouterr().err
        yaml_names[split] = [line.strip() for line in
                             (tmp_path / f"{split}-yolo" / "data.yaml").read_text().splitlines()
                             if line.startswith("  ")]
    assert yaml_names["train"] == yaml_names["val"]
    assert len(yaml_names["train"]) == len(names)


def test_the_python_labeler_keeps_every_category_of_a_coco_input(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator) -> None:
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.labeler import SegmentationLabeler

    names = sorted({o.category for im in images for o in im.objects})
    samples = samples_from_coco(_split(tmp_path, images, "one", names[-1]))
    labeler = SegmentationLabeler(CdfConfig.from_env(), cache=tmp_path / "cache",
                                  progress=False)
    labeler.label(samples)
    labeler.to_coco(tmp_path / "labels.json")
    got = json.loads((tmp_path / "labels.json").read_text())["categories"]
    assert [c["name"] for c in got] == names


def test_samples_from_coco_carries_every_category(tmp_path: Path,
                                                  images: list[SyntheticImage]) -> None:
    names = sorted({o.category for im in images for o in im.objects})
    path = _split(tmp_path, images, "one", names[0])
    samples = samples_from_coco(path)
    assert [c.name for c in samples.categories] == names
    assert {i.category for s in samples for i in s.instances} == {names[0]}


@pytest.mark.parametrize(("change", "words"), [
    (lambda cats: cats.append({"id": cats[0]["id"], "name": "another"}), "has id"),
    (lambda cats: cats.append({"id": 99, "name": cats[0]["name"]}), "is named"),
])
def test_duplicate_categories_in_a_coco_input_are_refused(
        change: Callable[[list[dict[str, Any]]], None], words: str, tmp_path: Path,
        images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    boxes = _coco_boxes(tmp_path / "boxes.json", images)
    coco = json.loads(boxes.read_text())
    change(coco["categories"])
    boxes.write_text(json.dumps(coco))
    with pytest.raises(ValidationError, match=words):
        samples_from_coco(boxes)
    err = one_line_exit_2(["label", "--coco-boxes", str(boxes), "--out",
                           str(tmp_path / "o.json")], capsys)
    assert "categories[" in err and words in err, err
    assert not env.requests


def test_load_records_refuses_deep_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"file": "a", "box": [0, 0, 1, 1]}\n{"file": ' + DEEP + "}\n")
    with pytest.raises(ValidationError, match="line 2"):
        load_records(path)


# --- 18: numeric options checked before any work ----------------------------------------------

@pytest.mark.parametrize("argv", [
    ["label", "--prompts", "p.jsonl", "--out", "o.json", "--concurrency", "-5"],
    ["label", "--prompts", "p.jsonl", "--out", "o.json", "--concurrency", "0"],
    ["label", "--prompts", "p.jsonl", "--out", "o.json", "--min-score", "1.5"],
    ["label", "--prompts", "p.jsonl", "--out", "o.json", "--min-area", "-1"],
    ["cache", "ls", "--limit", "-1"],
    ["demo", "--images", "-3", "--out", "d"],
    ["demo", "--images", "0", "--out", "d"],
])
def test_bad_numeric_options_are_exit_2_before_any_work(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert list(tmp_path.iterdir()) == []
    assert "Traceback" not in capsys.readouterr().err


def test_help_has_no_restructuredtext_markup() -> None:
    parser = build_parser()
    texts = [parser.format_help()]
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    texts += [p.format_help() for p in sub.choices.values()]  # type: ignore[attr-defined]
    for text in texts:
        assert "``" not in text and ":class:" not in text and ":func:" not in text, text[:200]


class Pickled:
    """A Python object torch pickles into a checkpoint (not a tensor)."""


def test_a_pickled_checkpoint_never_relays_unsafe_advice(tmp_path: Path) -> None:
    pytest.importorskip("segment_anything")
    import torch

    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.errors import SamCheckpointError

    path = tmp_path / "sam.pth"
    torch.save({"model": Pickled()}, path)
    with pytest.raises(SamCheckpointError) as exc:
        LocalSamBackend(str(path), model_type="vit_b")
    text = str(exc.value)
    assert "weights_only" not in text and "state_dict" in text, text


def test_the_real_process_refuses_deep_prompts_with_one_line(
        tmp_path: Path, shared_emulator: Emulator) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"file": ' + DEEP + "}")
    proc = run_process(["label", "--prompts", str(prompts), "--out", str(tmp_path / "o.json")],
                       env=cdf_env(shared_emulator))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "nested deeper" in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv", [["emulator", "--seed", "abc"], ["emulator", "--port", "70000"],
                                  ["label", "--out", "o.json", "--concurrency", "-5",
                                   "--prompts", "p.jsonl"],
                                  ["export", "l.json", "--to", "voc", "--out", "x"], []])
def test_an_option_the_parser_refuses_is_one_line_through_a_real_process(
        argv: list[str], tmp_path: Path) -> None:
    proc = run_process(argv, env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("cogseg: "), proc.stderr
    assert "usage:" not in proc.stderr and "--help" in proc.stderr
