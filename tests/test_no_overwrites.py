"""Nothing is lost: no command writes over one of its own inputs or a file of the mask cache,
a run that labels nothing leaves ``--out`` as it was, and a merge that refuses a source
changes nothing. Each case is a real command with real files; every file the user had is
compared byte for byte afterwards."""

from __future__ import annotations

import gc
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.cli import main
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from tests.cache.test_mask_cache import key, result
from tests.test_cli_input import (
    cdf_env,
    earlier_labels,
    records,
    run_process,
    write_prompts,
)


def snapshot(folder: Path, side_files: bool = False) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (SQLite's side files left out unless asked:
    they come and go with connections)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and (side_files or not p.name.endswith(("-wal", "-shm")))}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _coco_boxes(path: Path, images: list[SyntheticImage]) -> Path:
    cats = sorted({o.category for im in images for o in im.objects})
    coco = {"images": [{"id": i + 1, "file_name": im.name, "width": im.width,
                        "height": im.height} for i, im in enumerate(images)],
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(cats)],
            "annotations": []}
    for i, im in enumerate(images):
        for o in im.objects:
            b = o.box()
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1,
                "category_id": cats.index(o.category) + 1,
                "bbox": [b.x_min * im.width, b.y_min * im.height,
                         (b.x_max - b.x_min) * im.width, (b.y_max - b.y_min) * im.height]})
    path.write_text(json.dumps(coco))
    return path


def _cache_with_entries(path: Path) -> Path:
    cache = MaskCache(path)
    cache.put_many([(key(i), result(i)) for i in range(3)])
    cache.close()
    return path


# --- 1. an output that is an input of the run, or a file of the cache -------------------------

def _label_cases(t: Path, images: list[SyntheticImage]) -> dict[str, list[str]]:
    prompts = write_prompts(t / "prompts.jsonl", images)
    boxes = _coco_boxes(t / "boxes.json", images)
    cache = t / "cache"
    MaskCache(cache).close()
    db = cache / "masks.sqlite"
    base = ["label", "--no-progress", "--cache", str(cache)]
    link = t / "link.json"
    link.symlink_to(prompts)
    hard = t / "hard.json"
    os.link(boxes, hard)
    return {
        "--out is --prompts": [*base, "--prompts", str(prompts), "--out", str(prompts)],
        "--out is --coco-boxes": [*base, "--coco-boxes", str(boxes), "--out", str(boxes)],
        "--out is a symlink to --prompts": [*base, "--prompts", str(prompts), "--out",
                                            str(link)],
        "--out is a hard link to --coco-boxes": [*base, "--coco-boxes", str(boxes), "--out",
                                                 str(hard)],
        "--out is the cache's SQLite file": [*base, "--prompts", str(prompts), "--out",
                                             str(db)],
        "--out is inside the cache folder": [*base, "--prompts", str(prompts), "--out",
                                             str(cache / "labels.json")],
        "--report is --prompts": [*base, "--prompts", str(prompts), "--out",
                                  str(t / "labels.json"), "--report", str(prompts)],
        "--report is --out": [*base, "--prompts", str(prompts), "--out", str(t / "l.json"),
                              "--report", str(t / "l.json")],
        "--out is the --files-filter @FILE": [
            *base, "--classes", "square", "--detector", str(t), "--files-filter",
            f"@{t / 'filter.json'}", "--out", str(t / "filter.json")],
    }


@pytest.mark.parametrize("case", ["--out is --prompts", "--out is --coco-boxes",
                                  "--out is a symlink to --prompts",
                                  "--out is a hard link to --coco-boxes",
                                  "--out is the cache's SQLite file",
                                  "--out is inside the cache folder", "--report is --prompts",
                                  "--report is --out", "--out is the --files-filter @FILE"])
def test_label_refuses_to_write_over_its_inputs_or_its_cache(
        case: str, tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = _label_cases(tmp_path, images)[case]
    (tmp_path / "filter.json").write_text("{}")
    before = snapshot(tmp_path)
    code, err = run(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "nothing was written" in err or "same file" in err, err
    assert snapshot(tmp_path) == before
    assert not env.requests  # refused before any request


def test_label_into_a_fresh_path_beside_its_inputs_still_works(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The guard refuses only what it must: a new file in the inputs' folder is fine."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", images)
    code, err = run(["label", "--no-progress", "--cache", str(tmp_path / "cache"),
                     "--prompts", str(prompts), "--out", str(tmp_path / "labels.json")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "labels.json").read_text())["annotations"]


@pytest.mark.parametrize("target", ["the SQLite file", "the image store", "the WAL file"])
def test_cache_export_refuses_to_write_into_the_cache(
        target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache_with_entries(tmp_path / "cache")
    (cache / "images").mkdir(exist_ok=True)
    out = {"the SQLite file": cache / "masks.sqlite",
           "the image store": cache / "images" / "x.json",
           "the WAL file": cache / "masks.sqlite-wal"}[target]
    before = (cache / "masks.sqlite").read_bytes()
    code, err = run(["cache", "export", "--path", str(cache), "--out", str(out)], capsys)
    assert code == 2 and "mask cache" in err and "Traceback" not in err, err
    assert (cache / "masks.sqlite").read_bytes() == before
    assert MaskCache(cache, create=False).integrity_check()


def test_cache_export_beside_the_cache_file_works(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A cache named by its file: its folder is the user's, only the cache's files are off
    limits."""
    db = _cache_with_entries(tmp_path / "c.sqlite")
    code, err = run(["cache", "export", "--path", str(db), "--out",
                     str(tmp_path / "all.json")], capsys)
    assert code == 0, err
    assert len(json.loads((tmp_path / "all.json").read_text())["annotations"]) == 3


def test_an_empty_out_is_refused(tmp_path: Path, images: list[SyntheticImage], env: Emulator,
                                 capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    prompts = write_prompts(tmp_path / "prompts.jsonl", images)
    before = snapshot(tmp_path)
    code, err = run(["label", "--no-progress", "--prompts", str(prompts), "--out", ""], capsys)
    assert code == 2 and "--out is empty" in err, err
    assert snapshot(tmp_path) == before


# --- 2. a run that labels nothing leaves --out as it was ---------------------------------------

def test_a_run_where_every_file_is_unknown_leaves_out_untouched(
        tmp_path: Path, env: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels.json"
    before = earlier_labels(out)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"file": f"no-such-file-{i}", "box": [0.1, 0.1,
                                                                                   0.5, 0.5]})
                                 for i in range(3)))
    code, err = run(["label", "--no-progress", "--prompts", str(prompts), "--out", str(out)],
                    capsys)
    assert code == 1, err
    assert out.read_bytes() == before
    assert "nothing was labelled" in err and "left as it was" in err, err


def test_a_run_where_every_file_is_unknown_writes_no_new_out(
        tmp_path: Path, env: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"file": "no-such-file", "box": [0.1, 0.1, 0.5, 0.5]}))
    code, err = run(["label", "--no-progress", "--prompts", str(prompts), "--out",
                     str(tmp_path / "labels.json")], capsys)
    assert code == 1, err
    assert not (tmp_path / "labels.json").exists()


def _annotate(emu: Emulator, images: list[SyntheticImage], status: str) -> list[int]:
    from cogseg_ml.api.client import SegmentationClient
    from cogseg_ml.api.wire_schema import Annotation
    from cogseg_ml.config import CdfConfig

    with SegmentationClient(CdfConfig.from_env()) as client:
        ids = [m.id for m in client.file_metadata([im.name for im in images[:2]])]
        anns = [Annotation(annotated_resource_type="file", annotated_resource_id=fid,
                           annotation_type="images.ObjectDetection", creating_app="test",
                           creating_app_version="1", creating_user=None, status=status,
                           data={"label": "square", "boundingBox": {
                               "xMin": 0.1, "yMin": 0.1, "xMax": 0.4, "yMax": 0.4}})
                for fid in ids]
        anns.append(Annotation(annotated_resource_type="file", annotated_resource_id=ids[0],
                               annotation_type="images.ObjectDetection", creating_app="test",
                               creating_app_version="1", creating_user=None, status=status,
                               data={"label": "square", "polygon": {"vertices": [
                                   {"x": 0.1, "y": 0.1}, {"x": 0.3, "y": 0.1},
                                   {"x": 0.2, "y": 0.3}]}}))
        client.create_annotations(anns)
    return ids


def test_from_annotations_with_no_match_says_which_statuses_exist_and_leaves_out(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    ids = _annotate(env, images, "suggested")
    out = tmp_path / "labels.json"
    before = earlier_labels(out)
    code, err = run(["label", "--no-progress", "--from-annotations",
                     ",".join(map(str, ids)), "--out", str(out)], capsys)
    assert code == 1, err
    assert out.read_bytes() == before
    assert "0 approved" in err and "3 suggested" in err and "--annotation-status" in err, err
    assert "--out was not written" in err


def test_a_mistyped_annotation_status_is_refused_before_any_request(
        tmp_path: Path, env: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["label", "--from-annotations", "1", "--annotation-status", "aproved", "--out",
              str(tmp_path / "l.json")])
    assert exc.value.code == 2
    assert "aproved" in capsys.readouterr().err


def test_from_annotations_counts_what_it_skipped(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    ids = _annotate(env, images, "approved")
    code, err = run(["label", "--no-progress", "--from-annotations", ",".join(map(str, ids)),
                     "--out", str(tmp_path / "l.json")], capsys)
    assert code == 0, err
    assert "3 approved ObjectDetection annotations read: 2 box prompts" in err, err
    assert "skipped 1 with no bounding box" in err, err


# --- 4. a merge checks every source before it touches anything --------------------------------

def _garbage(path: Path) -> Path:
    path.write_bytes(b"not a database " * 100)
    return path


def _damaged(path: Path) -> Path:
    _cache_with_entries(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    for i in range(page * 2, min(len(data), page * 4)):  # wreck the pages after the first
        data[i] = 0xA5
    path.write_bytes(bytes(data))
    return path


def _foreign(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    return path


BAD_SOURCES: dict[str, Callable[[Path], Path]] = {
    "garbage": lambda t: _garbage(t / "garbage.sqlite"),
    "damaged cache": lambda t: _damaged(t / "damaged.sqlite"),
    "another SQLite database": lambda t: _foreign(t / "other.sqlite"),
}


@pytest.mark.parametrize("bad", list(BAD_SOURCES))
def test_merge_with_a_bad_source_merges_nothing(bad: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    good = _cache_with_entries(tmp_path / "good.sqlite")
    src = BAD_SOURCES[bad](tmp_path)
    target = tmp_path / "target"
    _cache_with_entries(target)
    target_before = MaskCache(target, create=False).stats().entries
    code, err = run(["cache", "merge", str(good), str(src), "--path", str(target)], capsys)
    assert code == 2, err
    assert src.name in err and "nothing was merged" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert MaskCache(target, create=False).stats().entries == target_before


@pytest.mark.parametrize("bad", list(BAD_SOURCES))
def test_merge_of_a_bad_source_alone_creates_no_target(
        bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = BAD_SOURCES[bad](tmp_path)
    code, err = run(["cache", "merge", str(src), "--path", str(tmp_path / "new")], capsys)
    assert code == 2, err
    assert not (tmp_path / "new").exists()


def test_checking_a_source_writes_nothing_to_it(tmp_path: Path) -> None:
    from cogseg_ml.cache.mask_cache import check_cache_file

    src = _cache_with_entries(tmp_path / "src.sqlite")
    before = snapshot(tmp_path)
    assert check_cache_file(src) == src
    assert snapshot(tmp_path) == before


def test_a_refused_merge_leaves_the_good_source_and_target_byte_for_byte(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cache_with_entries(tmp_path / "good.sqlite")
    _cache_with_entries(tmp_path / "target.sqlite")
    _garbage(tmp_path / "garbage.sqlite")
    def state() -> tuple[dict[str, bytes], dict[str, bytes]]:
        every = snapshot(tmp_path, side_files=True)  # the target's WAL included
        return snapshot(tmp_path), {k: v for k, v in every.items() if k.startswith("target")}

    before = state()
    code, err = run(["cache", "merge", str(tmp_path / "good.sqlite"),
                     str(tmp_path / "garbage.sqlite"), "--path",
                     str(tmp_path / "target.sqlite")], capsys)
    assert code == 2, err
    assert state() == before


def test_a_damaged_target_is_refused_before_merging(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    good = _cache_with_entries(tmp_path / "good.sqlite")
    target = _damaged(tmp_path / "target.sqlite")
    before = target.read_bytes()
    code, err = run(["cache", "merge", str(good), "--path", str(target)], capsys)
    assert code == 2 and "target" in err and "damaged" in err, err
    assert target.read_bytes() == before


# --- through a real process ------------------------------------------------------------------

def test_a_real_process_refuses_out_equal_to_coco_boxes(
        tmp_path: Path, images: list[SyntheticImage], shared_emulator: Emulator) -> None:
    boxes = _coco_boxes(tmp_path / "boxes.json", images)
    before = boxes.read_bytes()
    proc = run_process(["label", "--coco-boxes", str(boxes), "--out", str(boxes), "--cache",
                        str(tmp_path / "cache")], env=cdf_env(shared_emulator))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("cogseg: "), proc.stderr
    assert boxes.read_bytes() == before


def test_records_helper_covers_every_image(images: list[SyntheticImage]) -> None:
    """The prompts these tests write name every synthetic image (so a refusal is not an
    artefact of an empty input)."""
    assert {r["file"] for r in records(images)} == {im.name for im in images}


# --- 1 (cont.): the folder-writing commands -----------------------------------------------------

def _labelled(t: Path, images: list[SyntheticImage]) -> tuple[Path, Path, Path]:
    """A labels file, a decisions file for it, and the cache the labels were made with."""
    from cogseg_ml.review.decisions import Decisions, labels_digest

    boxes = _coco_boxes(t / "boxes.json", images[:2])
    cache = t / "cache"
    assert main(["label", "--no-progress", "--coco-boxes", str(boxes), "--out",
                 str(t / "labels.json"), "--cache", str(cache)]) == 0
    labels = t / "labels.json"
    coco = json.loads(labels.read_text())
    decisions = t / "labels.decisions.json"
    decisions.write_text(Decisions(labels.name, labels_digest(coco),
                                   frozenset(a["id"] for a in coco["annotations"]),
                                   frozenset()).to_json())
    return labels, decisions, cache


FOLDER_CASES: dict[str, Callable[[Path, Path, Path], list[str]]] = {
    "export --out LABELS": lambda lab, dec, c: ["export", str(lab), "--to", "coco", "--cache",
                                                str(c), "--out", str(lab)],
    "export --out --decisions": lambda lab, dec, c: ["export", str(lab), "--to", "yolo",
                                                     "--decisions", str(dec), "--cache", str(c),
                                                     "--out", str(dec)],
    "export --out the cache file": lambda lab, dec, c: [
        "export", str(lab), "--to", "labelstudio", "--cache", str(c), "--out",
        str(c / "masks.sqlite")],
    "export --out the cache folder": lambda lab, dec, c: ["export", str(lab), "--to", "coco",
                                                          "--cache", str(c), "--out", str(c)],
    "export --out a new folder inside the cache": lambda lab, dec, c: [
        "export", str(lab), "--to", "coco", "--cache", str(c), "--out", str(c / "exp")],
    "export --out the folder holding LABELS": lambda lab, dec, c: [
        "export", str(lab), "--to", "coco", "--cache", str(c), "--out", str(lab.parent)],
    "review --out LABELS": lambda lab, dec, c: ["review", str(lab), "--cache", str(c),
                                                "--no-progress", "--out", str(lab)],
    "review --out the cache folder": lambda lab, dec, c: ["review", str(lab), "--cache", str(c),
                                                          "--no-progress", "--out", str(c)],
    "review --out inside the image store": lambda lab, dec, c: [
        "review", str(lab), "--cache", str(c), "--no-progress", "--out",
        str(c / "images" / "page")],
    "demo --out the labels file": lambda lab, dec, c: ["demo", "--quiet", "--out", str(lab)],
}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_folder_commands_refuse_to_write_over_their_inputs_or_the_cache(
        case: str, tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    labels, decisions, cache = _labelled(tmp_path, images)
    capsys.readouterr()
    before = snapshot(tmp_path)
    code, err = run(FOLDER_CASES[case](labels, decisions, cache), capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(tmp_path) == before


def test_label_closes_the_cache_it_opened_before_it_returns(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A command run in-process leaves no connection to the cache open: with the garbage
    collector off, the cache's WAL is checkpointed and gone when ``label`` returns. (Closed
    later by the collector, a connection checkpointed the cache under a following command's
    feet, so a check that the cache was left as it was failed now and then.)"""
    boxes = _coco_boxes(tmp_path / "boxes.json", images[:2])
    cache = tmp_path / "cache"
    gc.collect()
    gc.disable()
    try:
        assert main(["label", "--no-progress", "--coco-boxes", str(boxes), "--out",
                     str(tmp_path / "labels.json"), "--cache", str(cache)]) == 0
        assert (cache / "masks.sqlite").is_file()
        assert not (cache / "masks.sqlite-wal").exists()
    finally:
        gc.enable()


# --- 15 at the command line: a job that never finishes -----------------------------------------

def test_label_with_a_job_timeout_ends_a_stuck_run_with_exit_1(
        tmp_path: Path, images: list[SyntheticImage], make_emulator: Callable[..., Emulator],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    emu = make_emulator(concurrency=8)
    emu.jobs.end_limit = 0  # no job ever ends
    for k, v in cdf_env(emu).items():
        monkeypatch.setenv(k, v)
    prompts = write_prompts(tmp_path / "p.jsonl", images[:1])
    out = tmp_path / "labels.json"
    code, err = run(["label", "--no-progress", "--prompts", str(prompts), "--out", str(out),
                     "--cache", str(tmp_path / "cache"), "--job-timeout", "0.5"], capsys)
    assert code == 1, err
    assert "JobTimeoutError" in err and "nothing was labelled" in err, err
    assert not out.exists()


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_bad_job_timeout_is_exit_2_before_any_work(
        value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["label", "--prompts", "p.jsonl", "--out", str(tmp_path / "o.json"),
              "--job-timeout", value])
    assert exc.value.code == 2
    assert "--job-timeout" in capsys.readouterr().err


def test_out_over_a_file_of_the_model_folder_is_refused_and_a_new_file_there_is_not(
        tmp_path: Path) -> None:
    from cogseg_ml.cli.common import guard_outputs
    from cogseg_ml.errors import ValidationError

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ValidationError, match="is a file of the run's input --model"):
        guard_outputs([("--out", model / "config.json")], [("--model", model)])
    guard_outputs([("--out", model / "labels.json")], [("--model", model)])  # no error


# --- a device, a pipe, a link: never replaced ----------------------------------------------------

def _special_files(t: Path) -> dict[str, Path]:
    note = t / "note.txt"
    note.write_text("mine, not cogseg's\n")
    pipe = t / "pipe"
    os.mkfifo(pipe)
    link = t / "link.json"
    link.symlink_to(note)
    return {"a named pipe": pipe, "a symbolic link": link}


@pytest.mark.parametrize("flag", ["--out", "--report"])
@pytest.mark.parametrize("target", ["a named pipe", "a symbolic link"])
def test_label_never_replaces_a_pipe_or_a_link(
        flag: str, target: str, tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Writing atomically replaces the path: a device (``/dev/null``), a pipe or a link would
    become a regular file."""
    import stat

    prompts = write_prompts(tmp_path / "p.jsonl", images[:1])
    path = _special_files(tmp_path)[target]
    before = snapshot(tmp_path)
    argv = ["label", "--no-progress", "--prompts", str(prompts), "--cache",
            str(tmp_path / "cache"), "--out", str(tmp_path / "labels.json")]
    if flag == "--out":
        argv[-1] = str(path)
    else:
        argv += ["--report", str(path)]
    code, err = run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before and not env.requests
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)
    assert (tmp_path / "link.json").is_symlink()


def test_an_empty_report_path_is_refused(tmp_path: Path, images: list[SyntheticImage],
                                         env: Emulator,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", images[:1])
    code, err = run(["label", "--no-progress", "--prompts", str(prompts), "--out",
                     str(tmp_path / "l.json"), "--report", ""], capsys)
    assert code == 2 and "--report is empty" in err, err
    assert not env.requests


# --- 5. a single output file is replaced only when cogseg wrote it -------------------------------

def _text(name: str, text: str) -> Callable[[Path], Path]:
    def make(t: Path) -> Path:
        (t / name).write_text(text)
        return t / name
    return make


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(t: Path) -> Path:
        (t / name).write_bytes(data)
        return t / name
    return make


#: Files a user may have at an output path; none of them was written by cogseg.
USER_FILES: dict[str, Callable[[Path], Path]] = {
    "a hand-made COCO file": _text("coco.json", json.dumps({
        "info": {"description": "site A, outlined by hand", "version": "1"},
        "images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
        "annotations": [], "categories": [{"id": 1, "name": "valve"}]})),
    "a COCO file with no info": _text("plain.json", json.dumps({
        "images": [], "annotations": [], "categories": []})),
    "notes.txt": _text("notes.txt", "my notes: labelled with cogseg_ml last week\n"),
    "cogseg's marker not at the start": _text("moved.json", json.dumps({
        "images": [], "info": {"description": "cogseg_ml labels"}})),
    "cogseg's marker past the bytes read": _text(
        "padded.json", " " * (256 * 1024) + '{"info": {"description": "cogseg_ml labels"}}'),
    "a binary file": _bytes("photo.png", bytes(range(256)) * 512),
    "an empty file": _bytes("empty.json", b""),
}


@pytest.mark.parametrize("flag", ["--out", "--report"])
@pytest.mark.parametrize("kind", list(USER_FILES))
def test_label_never_replaces_a_file_cogseg_did_not_write(
        flag: str, kind: str, tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", images[:1])
    theirs = USER_FILES[kind](tmp_path)
    argv = ["label", "--no-progress", "--prompts", str(prompts), "--cache",
            str(tmp_path / "cache"), "--out", str(tmp_path / "labels.json")]
    if flag == "--out":
        argv[-1] = str(theirs)
    else:
        argv += ["--report", str(theirs)]
    before = snapshot(tmp_path, side_files=True)
    code, err = run(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{flag} {theirs} already exists and is not a file cogseg wrote" in err, err
    assert "choose another path, or move or remove that file" in err, err
    if kind == "an empty file":
        assert "empty" in err, err
    assert snapshot(tmp_path, side_files=True) == before  # theirs as it was, nothing new
    assert not env.requests  # refused before any request


@pytest.mark.parametrize("kind", list(USER_FILES))
def test_cache_export_never_replaces_a_file_cogseg_did_not_write(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache_with_entries(tmp_path / "cache")
    theirs = USER_FILES[kind](tmp_path)
    before = snapshot(tmp_path, side_files=True)
    code, err = run(["cache", "export", "--path", str(cache), "--out", str(theirs)], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"--out {theirs} already exists and is not a file cogseg wrote" in err, err
    assert snapshot(tmp_path, side_files=True) == before


def test_label_and_cache_export_replace_their_own_earlier_files(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What cogseg wrote is replaced: a re-run's labels and report, a cache export over
    labels and labels over a cache export."""
    from cogseg_ml.version import __version__

    out, report, cache = tmp_path / "labels.json", tmp_path / "run.json", tmp_path / "cache"

    def label(n: int) -> None:
        prompts = write_prompts(tmp_path / f"p{n}.jsonl", images[:n])
        code, err = run(["label", "--no-progress", "--prompts", str(prompts), "--cache",
                         str(cache), "--out", str(out), "--report", str(report)], capsys)
        assert code == 0, err
        coco = json.loads(out.read_text())
        assert coco["info"]["description"].startswith("cogseg_ml ")
        assert len(coco["images"]) == n
        written = json.loads(report.read_text())
        assert next(iter(written)) == "written_by"  # the marker opens the report
        assert written["written_by"] == f"cogseg_ml {__version__}"
        assert written["instances"] == sum(len(im.objects) for im in images[:n])

    label(1)
    label(2)  # its own earlier labels and report: replaced
    code, err = run(["cache", "export", "--path", str(cache), "--out", str(out)], capsys)
    assert code == 0, err  # labels replaced by an export
    exported = json.loads(out.read_text())
    assert exported["info"]["description"] == "cogseg_ml cache export"
    assert len(exported["annotations"]) == sum(len(im.objects) for im in images[:2])
    label(1)  # an export replaced by labels


def test_cache_export_replaces_its_own_earlier_export(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache_with_entries(tmp_path / "cache")
    out = tmp_path / "all.json"
    code, err = run(["cache", "export", "--path", str(cache), "--out", str(out)], capsys)
    assert code == 0, err
    assert len(json.loads(out.read_text())["annotations"]) == 3
    more = MaskCache(cache)
    more.put_many([(key(i), result(i)) for i in range(3, 5)])
    more.close()
    code, err = run(["cache", "export", "--path", str(cache), "--out", str(out)], capsys)
    assert code == 0, err
    assert len(json.loads(out.read_text())["annotations"]) == 5


def test_a_file_put_at_out_during_the_run_is_not_replaced(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--out is checked again when the run ends: a file someone saved there while it ran is
    kept, and the run says so (its masks are cached, so running it again is quick)."""
    from cogseg_ml.labeler import SegmentationLabeler

    out = tmp_path / "labels.json"
    real_label = SegmentationLabeler.label

    def label_then_a_user_saves_out(self: SegmentationLabeler, *a: object, **kw: object
                                    ) -> object:
        report = real_label(self, *a, **kw)  # type: ignore[arg-type]
        out.write_text("saved by an editor while the run went on\n")
        return report

    monkeypatch.setattr(SegmentationLabeler, "label", label_then_a_user_saves_out)
    prompts = write_prompts(tmp_path / "p.jsonl", images[:1])
    code, err = run(["label", "--no-progress", "--prompts", str(prompts), "--cache",
                     str(tmp_path / "cache"), "--out", str(out)], capsys)
    assert code == 2, err
    assert out.read_text() == "saved by an editor while the run went on\n"
    assert f"--out {out} already exists and is not a file cogseg wrote" in err, err
    assert "cached" in err and "Traceback" not in err, err
    assert not list(tmp_path.glob(".labels.json.*"))  # no temporary file left


def test_files_cogseg_writes_are_recognised_and_others_are_not(tmp_path: Path) -> None:
    """The rule itself, on every kind of file the commands write and the users' files."""
    from cogseg_ml.coco_io import CocoWriter
    from cogseg_ml.outputs.owned_files import not_ours_because

    labels = tmp_path / "labels.json"
    CocoWriter(labels, [{"id": 1, "name": "valve"}]).close()
    assert not_ours_because(labels) is None
    assert not_ours_because(tmp_path / "missing.json") is None  # nothing there to keep
    for kind, make in USER_FILES.items():
        assert not_ours_because(make(tmp_path)) is not None, kind
    assert not_ours_because(tmp_path) == "it is not a regular file"


# --- 6. the library's single-file writers keep the same rule ------------------------------------

def _a_folder(t: Path) -> Path:
    folder = t / "labels.json"
    folder.mkdir()
    (folder / "mine.txt").write_text("kept\n")
    return folder


#: What the library's writers may find at their path: the users' files, a folder, a link.
LIBRARY_TARGETS: dict[str, Callable[[Path], Path]] = {
    **USER_FILES,
    "a folder": _a_folder,
    "a symbolic link": lambda t: _special_files(t)["a symbolic link"],
}


@pytest.fixture(scope="module")
def labelled(shared_emulator: Emulator, images: list[SyntheticImage],
             tmp_path_factory: pytest.TempPathFactory) -> object:
    """A labeler that labelled one image: ``to_coco`` can be called on it any number of times."""
    from cogseg_ml.labeler import SegmentationLabeler
    from tests.test_labeler import samples_for

    t = tmp_path_factory.mktemp("labelled")
    lab = SegmentationLabeler(shared_emulator.config, cache=t / "cache", workdir=t / "work",
                              progress=False)
    lab.label(samples_for(images[:1]))
    return lab


def _writers(labelled: object, t: Path) -> dict[str, Callable[[Path], object]]:
    from cogseg_ml.coco_io import CocoWriter, export_cache
    from cogseg_ml.labeler import SegmentationLabeler

    assert isinstance(labelled, SegmentationLabeler)

    def coco_writer(path: Path) -> None:
        with CocoWriter(path, [{"id": 1, "name": "valve"}]) as out:
            out.add_image("a", file_name="a.png", height=4, width=4)

    return {"SegmentationLabeler.to_coco": labelled.to_coco,
            "CocoWriter": coco_writer,
            "export_cache": lambda path: export_cache(MaskCache(
                _cache_with_entries(t / "cache")), path)}


WRITERS = ["SegmentationLabeler.to_coco", "CocoWriter", "export_cache"]


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", list(LIBRARY_TARGETS))
def test_library_writers_never_replace_what_cogseg_did_not_write(
        writer: str, kind: str, labelled: object, tmp_path: Path) -> None:
    """``to_coco``, ``CocoWriter`` and ``export_cache`` refuse a path holding a user's file, a
    folder or a link with a typed error naming the path, before writing anything: what was
    there is left byte for byte and no temporary file stays behind."""
    from cogseg_ml.errors import ForeignOutputError, ValidationError

    write = _writers(labelled, tmp_path / "side")[writer]
    (tmp_path / "side").mkdir()
    theirs = LIBRARY_TARGETS[kind](tmp_path)
    before = snapshot(tmp_path, side_files=True)
    with pytest.raises(ForeignOutputError) as caught:
        write(theirs)
    err = caught.value
    assert isinstance(err, ValidationError)  # bad input: exit 2 on the command line
    assert err.path == str(theirs) and err.reason
    assert f"{theirs} already exists and is not a file cogseg wrote ({err.reason})" in str(err)
    assert "choose another path, or move or remove that file" in str(err)
    after = snapshot(tmp_path, side_files=True)
    assert {k: v for k, v in after.items() if not k.startswith("side")} == \
        {k: v for k, v in before.items() if not k.startswith("side")}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".incomplete")]
    if kind == "a symbolic link":
        assert theirs.is_symlink()


@pytest.mark.parametrize("writer", WRITERS)
def test_library_writers_replace_cogseg_files_and_write_new_ones(
        writer: str, labelled: object, tmp_path: Path) -> None:
    """A new path is written; an earlier output of cogseg (labels, a cache export) is
    replaced."""
    from cogseg_ml.coco_io import CocoWriter, export_cache

    (tmp_path / "side").mkdir()
    write = _writers(labelled, tmp_path / "side")[writer]
    labels, exported = tmp_path / "labels.json", tmp_path / "export.json"
    write(labels)
    first = json.loads(labels.read_text())
    assert first["info"]["description"].startswith("cogseg_ml ")
    write(labels)  # its own earlier output
    assert json.loads(labels.read_text()) == first
    export_cache(MaskCache(_cache_with_entries(tmp_path / "cache")), exported)
    write(exported)  # another cogseg output
    assert json.loads(exported.read_text()) == first
    CocoWriter(labels, [{"id": 1, "name": "x"}]).close()
    write(labels)
    assert json.loads(labels.read_text()) == first


def test_a_file_saved_at_the_path_while_cocowriter_writes_is_not_replaced(
        tmp_path: Path) -> None:
    """The path is checked again just before the finished file is moved there."""
    from cogseg_ml.coco_io import CocoWriter
    from cogseg_ml.errors import ForeignOutputError

    path = tmp_path / "labels.json"
    out = CocoWriter(path, [{"id": 1, "name": "valve"}])
    out.add_image("a", file_name="a.png", height=4, width=4)
    path.write_text("saved by an editor meanwhile\n")
    with pytest.raises(ForeignOutputError, match="not a file cogseg wrote"):
        out.close()
    assert path.read_text() == "saved by an editor meanwhile\n"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]  # no temporary file left


def test_label_exits_2_when_a_file_is_saved_at_out_while_it_is_written(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`cogseg label` checks --out before the run and again before writing; a file saved there
    while the labels file is being written is kept too (the writer's own check), exit 2."""
    from cogseg_ml.coco_io import CocoWriter

    out = tmp_path / "labels.json"
    real_close = CocoWriter.close

    def a_user_saves_out_then_close(self: CocoWriter) -> None:
        out.write_text("saved by an editor while the file was written\n")
        real_close(self)

    monkeypatch.setattr(CocoWriter, "close", a_user_saves_out_then_close)
    prompts = write_prompts(tmp_path / "p.jsonl", images[:1])
    code, err = run(["label", "--no-progress", "--prompts", str(prompts), "--cache",
                     str(tmp_path / "cache"), "--out", str(out)], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"--out {out} already exists and is not a file cogseg wrote" in err, err
    assert "cached" in err, err  # running again with another path is quick
    assert out.read_text() == "saved by an editor while the file was written\n"
    assert not list(tmp_path.glob(".labels.json.*"))
