"""SegmentationLabeler end to end against the emulator: COCO output, resume, faults,
write-back, sharding, quality controls, and the `cogseg label` command."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.cache.merge import merge
from cogseg_ml.cli import main
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.mask_codec import encode
from cogseg_ml.metrics import coco_map
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample


def samples_for(images: list[SyntheticImage]) -> list[Sample]:
    return [Sample(FileRef(external_id=im.name),
                   tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
            for im in images]


def ground_truth(coco: dict, images: list[SyntheticImage]) -> dict:
    by_name = {im.name: im for im in images}
    cat = {c["name"]: c["id"] for c in coco["categories"]}
    gt = {"images": coco["images"], "categories": coco["categories"], "annotations": []}
    for img in coco["images"]:
        im = by_name[img["cdf_file"]["externalId"]]
        for o in im.objects:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": img["id"],
                                      "category_id": cat[o.category], "iscrowd": 0,
                                      "segmentation": encode(o.mask)[0],
                                      "area": int(o.mask.sum()), "bbox": [0, 0, 1, 1]})
    return gt


def run(emu, tmp: Path, samples, name: str = "run", **kw) -> tuple[SegmentationLabeler, dict]:
    kw.setdefault("progress", False)
    lab = SegmentationLabeler(emu.config, cache=kw.pop("cache", tmp / f"{name}-cache"),
                              workdir=tmp / f"{name}-work", **kw)
    lab.label(samples)
    out = tmp / f"{name}.json"
    lab.to_coco(out)
    return lab, json.loads(out.read_text())


def test_coco_output_loads_and_evaluates_perfectly(shared_emulator, images, tmp_path) -> None:
    lab, coco = run(shared_emulator, tmp_path, samples_for(images))
    rep = lab.report
    n = sum(len(im.objects) for im in images)
    assert rep.labelled == n and rep.failed == 0 and rep.annotations == n
    api = COCO(str(tmp_path / "run.json"))
    assert len(api.getAnnIds()) == n and len(api.getImgIds()) == len(images)
    stats = coco_map(ground_truth(coco, images), coco["annotations"])
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_rle_and_polygon_output_agree(shared_emulator, images, tmp_path) -> None:
    lab, coco = run(shared_emulator, tmp_path, samples_for(images[:3]))
    lab.to_coco(tmp_path / "poly.json", segmentation="polygon")
    poly = json.loads((tmp_path / "poly.json").read_text())
    assert len(poly["annotations"]) == len(coco["annotations"])
    for a, b in zip(coco["annotations"], poly["annotations"], strict=True):
        img = next(i for i in coco["images"] if i["id"] == a["image_id"])
        rle_b = coco_mask.merge(coco_mask.frPyObjects(b["segmentation"], img["height"],
                                                      img["width"]))
        mb = coco_mask.decode(rle_b).astype(bool)
        ma = coco_mask.decode({"size": a["segmentation"]["size"],
                               "counts": a["segmentation"]["counts"].encode()}).astype(bool)
        assert np.array_equal(ma, mb) and a["area"] == b["area"]


def test_resume_after_interruption_gives_the_same_coco(make_emulator, images,
                                                       tmp_path) -> None:
    emu = make_emulator(concurrency=8)
    samples = samples_for(images)
    _, clean = run(emu, tmp_path, samples, name="clean")
    jobs_clean = len(emu.jobs.jobs)

    def interrupted() -> Iterator[Sample]:
        for i, s in enumerate(samples):
            if i == 4:
                raise KeyboardInterrupt
            yield s

    lab = SegmentationLabeler(emu.config, cache=tmp_path / "resume-cache",
                              workdir=tmp_path / "resume-work", progress=False)
    lab.chunk_size = 2
    with pytest.raises(KeyboardInterrupt):
        lab.label(interrupted())
    done_before = MaskCache(tmp_path / "resume-cache").stats().entries
    assert 0 < done_before < sum(len(s.instances) for s in samples)
    lab2, resumed = run(emu, tmp_path, samples, name="resume", cache=tmp_path / "resume-cache")
    assert lab2.report.from_cache == done_before
    assert lab2.report.jobs_run == lab2.report.instances - done_before
    assert resumed == clean
    assert len(emu.jobs.jobs) == 2 * jobs_clean  # nothing done twice across the resume


def test_faults_leave_every_item_labelled_or_reported(make_emulator, images, tmp_path) -> None:
    emu = make_emulator(concurrency=8, seed=5, faults=[
        Fault("status", status=503, probability=0.1),
        Fault("status", status=429, probability=0.05, retry_after="0.05"),
        Fault("job_fail", probability=0.1, message="model crashed"),
        Fault("item_fail", probability=0.1, message="bad image"),
        Fault("drop", probability=0.05, methods=frozenset({"GET"})),
    ])
    cfg = emu.config.with_options(retry=emu.config.retry.__class__(
        max_attempts=8, backoff_base_s=0.02, max_backoff_s=0.5))
    lab = SegmentationLabeler(cfg, cache=tmp_path / "c", workdir=tmp_path / "w",
                              progress=False)
    rep = lab.label(samples_for(images) * 2)
    assert rep.labelled + rep.failed == rep.instances
    assert rep.failed > 0 and rep.labelled > 0
    assert sum(rep.failure_reasons.values()) == rep.failed
    assert all(f["reason"] for f in rep.failures)


def test_write_back_is_idempotent(make_emulator, images, tmp_path) -> None:
    emu = make_emulator()
    lab, coco = run(emu, tmp_path, samples_for(images[:2]))
    first = lab.write_back()
    assert first.created == len(coco["annotations"]) and first.already_present == 0
    second = lab.write_back()
    assert second.created == 0 and second.already_present == first.created
    stored = list(emu.state.annotations.values())
    assert len(stored) == first.created
    a = stored[0]
    assert a["status"] == "suggested" and a["annotationType"] == "images.ObjectDetection"
    assert len(a["data"]["polygon"]["vertices"]) >= 3 and a["data"]["label"]


def test_sharded_runs_merged_equal_one_run(make_emulator, images, tmp_path) -> None:
    emu = make_emulator(concurrency=8)
    samples = samples_for(images)
    _, whole = run(emu, tmp_path, samples, name="whole")
    merged = MaskCache(tmp_path / "merged")
    total = 0
    for i in range(3):
        lab, _ = run(emu, tmp_path, samples, name=f"shard{i}", shard=(i, 3))
        total += lab.report.samples
        _merged(merged, tmp_path / f"shard{i}-cache")
    assert total == len(samples)
    jobs = len(emu.jobs.jobs)
    final, combined = run(emu, tmp_path, samples, name="combined", cache=merged)
    assert final.report.jobs_run == 0 and len(emu.jobs.jobs) == jobs
    assert combined == whole


def test_quality_controls_drop_and_count(shared_emulator, images, tmp_path) -> None:
    areas = sorted(int(o.mask.sum()) for o in images[0].objects)
    lab, coco = run(shared_emulator, tmp_path, samples_for(images[:1]), min_area=areas[1])
    assert lab.report.dropped["below min_area"] == 1 and len(coco["annotations"]) == 2
    lab2, coco2 = run(shared_emulator, tmp_path, samples_for(images[:1]), name="s",
                      min_score=0.999)
    assert lab2.report.dropped["below min_score"] == 3 and coco2["annotations"] == []


def test_label_command(make_emulator, images, tmp_path, monkeypatch) -> None:
    emu = make_emulator()
    monkeypatch.setenv("COGNITE_PROJECT", emu.project)
    monkeypatch.setenv("COGNITE_BASE_URL", emu.base_url)
    monkeypatch.setenv("COGNITE_TOKEN", emu.issue_token())
    recs = [{"file": im.name, "box": [o.box().x_min, o.box().y_min, o.box().x_max,
                                      o.box().y_max], "category": o.category}
            for im in images[:2] for o in im.objects]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in recs))
    out = tmp_path / "labels.json"
    code = main(["label", "--prompts", str(prompts), "--out", str(out), "--cache",
                 str(tmp_path / "cache"), "--no-progress", "--report",
                 str(tmp_path / "report.json"), "--segmentation", "polygon"])
    assert code == 0 and len(json.loads(out.read_text())["annotations"]) == len(recs)
    assert json.loads((tmp_path / "report.json").read_text())["labelled"] == len(recs)
    prompts.write_text(json.dumps({"file": "x.png", "box": [0.5, 0.1, 0.2, 0.3]}))
    assert main(["label", "--prompts", str(prompts), "--out", str(out), "--cache",
                 str(tmp_path / "cache"), "--no-progress"]) == 2
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"file": "nope.png", "points": [[0.5, 0.5, 1]]}))
    assert main(["label", "--prompts", str(missing), "--out", str(out), "--cache",
                 str(tmp_path / "cache"), "--no-progress"]) == 1


def _merged(target: MaskCache, other: object) -> int:
    """Entries :func:`merge` copied."""
    return merge(target, other).entries  # type: ignore[arg-type]
