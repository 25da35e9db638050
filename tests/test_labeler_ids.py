"""The labeler's COCO file keeps the input's category and image ids; classes are never 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.errors import ValidationError
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import UNLABELLED, Instance, Sample, samples_from_coco


def _labeler(emu, tmp: Path, **kw) -> SegmentationLabeler:
    return SegmentationLabeler(emu.config, cache=tmp / "cache", workdir=tmp / "work",
                               progress=False, **kw)


def _input_coco(images: list[SyntheticImage], path: Path) -> dict:
    """A COCO detection file with gapped category ids and non-sequential image ids."""
    names = sorted({o.category for im in images for o in im.objects})
    cat_ids = {n: 10 * (k + 1) + 7 for k, n in enumerate(names)}  # 17, 27, ...
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": i, "name": n} for n, i in cat_ids.items()]}
    for k, im in enumerate(images):
        image_id = 1000 - 7 * k
        coco["images"].append({"id": image_id, "file_name": im.name, "width": im.width,
                               "height": im.height})
        for o in im.objects:
            b = o.box()
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id,
                "category_id": cat_ids[o.category],
                "bbox": [b.x_min * im.width, b.y_min * im.height,
                         (b.x_max - b.x_min) * im.width, (b.y_max - b.y_min) * im.height]})
    path.write_text(json.dumps(coco))
    return coco


def test_input_category_and_image_ids_are_kept(shared_emulator, images, tmp_path) -> None:
    given = _input_coco(images[:3], tmp_path / "boxes.json")
    lab = _labeler(shared_emulator, tmp_path)
    lab.label(samples_from_coco(tmp_path / "boxes.json"))
    lab.to_coco(tmp_path / "labels.json")
    out = json.loads((tmp_path / "labels.json").read_text())
    assert out["categories"] == sorted(given["categories"], key=lambda c: c["id"])
    assert {i["id"] for i in out["images"]} == {i["id"] for i in given["images"]}
    by_id = {i["id"]: i["file_name"] for i in given["images"]}
    api = COCO(str(tmp_path / "labels.json"))
    for ann in out["annotations"]:  # every annotation names a real category and its own image
        assert api.loadCats(ann["category_id"])
        assert out["images"][[i["id"] for i in out["images"]].index(ann["image_id"])][
            "file_name"] == by_id[ann["image_id"]]
    want = sorted((a["image_id"], a["category_id"]) for a in given["annotations"])
    assert sorted((a["image_id"], a["category_id"]) for a in out["annotations"]) == want


def test_unlabelled_instances_get_a_real_class(shared_emulator, images, tmp_path) -> None:
    im = images[0]
    lab = _labeler(shared_emulator, tmp_path)
    lab.label([Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box())) for o in im.objects))])
    lab.to_coco(tmp_path / "labels.json")
    out = json.loads((tmp_path / "labels.json").read_text())
    assert out["categories"] == [{"id": 1, "name": UNLABELLED}]
    assert out["annotations"] and {a["category_id"] for a in out["annotations"]} == {1}


def test_unknown_category_is_refused_before_any_job(make_emulator, images, tmp_path) -> None:
    emu = make_emulator()
    im = images[0]
    lab = _labeler(emu, tmp_path, categories=["not-a-shape"])
    bad = Sample(FileRef(external_id=im.name), (Instance(Prompt(box=im.objects[0].box()),
                                                         im.objects[0].category),))
    with pytest.raises(ValidationError, match=repr(im.objects[0].category)):
        lab.label([bad])
    assert not [r for r in emu.requests if r.path.endswith("/context/vision/segment")]


def test_image_ids_follow_the_input_across_shards(shared_emulator, images, tmp_path) -> None:
    samples = [Sample(FileRef(external_id=im.name), (Instance(Prompt(box=im.objects[0].box()),
                                                              im.objects[0].category),))
               for im in images]
    seen: dict[str, int] = {}
    for i in range(2):
        lab = _labeler(shared_emulator, tmp_path / f"shard{i}", shard=(i, 2))
        lab.label(samples)
        lab.to_coco(tmp_path / f"shard{i}.json")
        out = json.loads((tmp_path / f"shard{i}.json").read_text())
        seen.update({img["cdf_file"]["externalId"]: img["id"] for img in out["images"]})
        # classes are drawn over every shard's samples: the same table in each file
        assert [c["name"] for c in out["categories"]] == sorted(
            {s.instances[0].category for s in samples})
    assert seen == {im.name: k + 1 for k, im in enumerate(images)}


def test_jobs_flow_across_chunk_boundaries(make_emulator, images, tmp_path) -> None:
    """Later chunks' jobs start while earlier ones are still running (one stream, not waves)."""
    import threading
    import time

    emu = make_emulator(concurrency=16)
    emu.jobs.end_limit = 0  # no job may end until every chunk's jobs were created
    samples = [Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
               for im in images[:4]]
    want = sum(len(s.instances) for s in samples)
    lab = _labeler(emu, tmp_path, concurrency=32)
    lab.chunk_size = 1
    done: list[BaseException | None] = []

    def work() -> None:
        try:
            lab.label(samples)
            done.append(None)
        except BaseException as exc:  # pragma: no cover - reported below
            done.append(exc)

    t = threading.Thread(target=work)
    t.start()
    deadline = time.monotonic() + 60
    while len(emu.jobs.jobs) < want and time.monotonic() < deadline and not done:
        time.sleep(0.02)
    created, ended = len(emu.jobs.jobs), emu.jobs.completed + emu.jobs.failed
    emu.jobs.end_limit = None
    t.join(60)
    assert done == [None]
    assert (created, ended) == (want, 0)
    assert lab.report.labelled == want and lab.report.failed == 0


@pytest.mark.parametrize("as_list", [True, False])
def test_progress_bar_knows_its_total(shared_emulator, images, tmp_path, capsys,
                                      as_list: bool) -> None:
    samples = [Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
               for im in images[:3]]
    n = sum(len(s.instances) for s in samples)
    lab = SegmentationLabeler(shared_emulator.config, cache=tmp_path / "cache",
                              workdir=tmp_path / "work", progress=True)
    lab.label(samples if as_list else iter(samples))
    err = capsys.readouterr().err
    assert f"{n}/{n}" in err  # done/total, so tqdm can show the time left


def test_coco_sizes_that_disagree_with_the_image_are_warned(shared_emulator, images, tmp_path,
                                                            caplog) -> None:
    given = _input_coco(images[:1], tmp_path / "boxes.json")
    im = given["images"][0]
    im["width"], im["height"] = im["height"], im["width"]  # as an EXIF-aware tool writes it
    (tmp_path / "boxes.json").write_text(json.dumps(given))
    lab = _labeler(shared_emulator, tmp_path)
    with caplog.at_level("WARNING"):
        lab.label(samples_from_coco(tmp_path / "boxes.json", on_bad_prompt="clip"))
    assert any("swapped" in r.getMessage() and "EXIF" in r.getMessage() for r in caplog.records)
