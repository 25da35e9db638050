"""Training targets torchvision trains and evaluates on correctly.

Each test does what torchvision's detection reference (``references/detection``: engine's
training and evaluation loops, ``coco_utils.convert_to_coco_api``, ``group_by_aspect_ratio``)
does with a dataset, in our own words, on the emulator with a tiny Mask R-CNN.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from cogseg_ml import dataset as cds
from cogseg_ml.dataset import CdfSegmentationDataset, collate_fn
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import (
    SyntheticImage,
    SyntheticObject,
    encode_image,
    make_image,
)
from cogseg_ml.errors import SampleError, ValidationError
from cogseg_ml.prompts import Box, FileRef, Prompt
from cogseg_ml.samples import UNLABELLED, Category, Instance, Sample, image_ids

SIDE = 64


def rect(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def three_in_a_row(name: str = "row.png") -> SyntheticImage:
    """Three flat rectangles: top-left corner, centre, bottom-right corner (64x64)."""
    objs = (SyntheticObject("rectangle", rect(SIDE, SIDE, 2, 2, 12, 14)),
            SyntheticObject("ellipse", rect(SIDE, SIDE, 24, 22, 40, 44)),
            SyntheticObject("triangle", rect(SIDE, SIDE, 52, 50, 62, 62)))
    px = np.full((SIDE, SIDE, 3), 20, dtype=np.uint8)
    for colour, o in zip(((230, 40, 40), (40, 230, 40), (40, 40, 230)), objs, strict=True):
        px[o.mask] = colour
    return SyntheticImage(name, px, objs)


def tiny_images() -> list[SyntheticImage]:
    """Four small images, two landscape and two portrait (aspect ratios differ)."""
    sizes = [(SIDE, 96), (96, SIDE), (SIDE, 96), (96, SIDE)]
    return [make_image(40 + i, h, w, n_objects=2, name=f"tiny_{i}.png")
            for i, (h, w) in enumerate(sizes)]


def samples_for(images: list[SyntheticImage], *, labelled: bool = True) -> list[Sample]:
    return [Sample(FileRef(external_id=im.name),
                   tuple(Instance(Prompt(box=o.box()), o.category if labelled else None)
                         for o in im.objects)) for im in images]


@pytest.fixture
def tiny(make_emulator) -> tuple[Emulator, list[SyntheticImage]]:
    images = tiny_images() + [three_in_a_row()]
    return make_emulator(images=images, processing_time_s=0.0), images


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and never fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_maskrcnn(num_classes: int) -> torch.nn.Module:
    """Mask R-CNN as the reference builds it, at a size that trains in a second on a CPU."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes,
                                 min_size=64, max_size=96, rpn_post_nms_top_n_train=200,
                                 box_batch_size_per_image=64, box_detections_per_img=20)


def to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """What the reference's training loop does with each target."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


# --- labels ------------------------------------------------------------------------------------
def test_unlabelled_instances_train_mask_rcnn(tiny, tmp_path: Path, one_thread) -> None:
    emu, images = tiny
    ds = CdfSegmentationDataset(samples_for(images[:2], labelled=False), client=emu.config,
                                cache=tmp_path / "c")
    model = tiny_maskrcnn(2)  # the background and one foreground class
    model.train()
    imgs, targets = zip(*(ds[i] for i in range(len(ds))), strict=True)
    losses = {k: float(v.detach()) for k, v in model(
        [img.float() / 255 for img in imgs],
        [to_device(t, torch.device("cpu")) for t in targets]).items()}
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] > 0 and losses["loss_box_reg"] > 0  # 0.0 with label 0
    assert ds.categories == [UNLABELLED] and ds.num_classes == 2
    for t in targets:
        assert (t["labels"] == ds.category_table.id_of(None)).all() and (t["labels"] > 0).all()


def test_unknown_category_is_refused_before_any_request(tiny, tmp_path: Path) -> None:
    emu, images = tiny
    before = len(emu.requests)
    with pytest.raises(ValidationError, match="'ellipse'") as info:
        CdfSegmentationDataset(samples_for(images), client=emu.config, cache=tmp_path / "c",
                               categories=["rectangle", "triangle"])
    assert "categories" in str(info.value)
    assert len(emu.requests) == before


def test_categories_as_coco_dicts_and_category_objects(tiny, tmp_path: Path) -> None:
    emu, images = tiny
    row = images[-1]
    cats: list[Any] = [{"id": 7, "name": "rectangle"}, Category(3, "ellipse"),
                       {"id": 12, "name": "triangle"}]
    ds = CdfSegmentationDataset(samples_for([row]), client=emu.config, cache=tmp_path / "c",
                                categories=cats)
    assert ds.num_classes == 13 and ds.category_table.as_coco()[0] == {"id": 3,
                                                                       "name": "ellipse"}
    _, target = ds[0]
    assert target["labels"].tolist() == [7, 3, 12]
    named = CdfSegmentationDataset(samples_for([row]), client=emu.config, cache=tmp_path / "c",
                                   categories=["triangle", "rectangle", "ellipse"])
    assert named[0][1]["labels"].tolist() == [2, 3, 1]


# --- target fields -----------------------------------------------------------------------------
def test_targets_carry_area_iscrowd_and_coco_image_ids(tiny, tmp_path: Path) -> None:
    emu, images = tiny
    samples = samples_for(images)
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    expected_ids = [iid for _, iid in image_ids(samples)]
    for i, truth in enumerate(images):
        image, t = ds[i]
        n = len(truth.objects)
        assert t["area"].dtype == torch.float32 and t["iscrowd"].dtype == torch.int64
        assert t["area"].tolist() == [float(o.mask.sum()) for o in truth.objects]
        assert torch.equal(t["area"], t["masks"].flatten(1).sum(1).float())
        assert t["iscrowd"].tolist() == [0] * n
        assert type(t["image_id"]) is int and t["image_id"] == expected_ids[i]
        assert ds.image_id(i) == expected_ids[i]
        for key in FIELDS:
            assert t[key].shape[0] == n


def test_coco_input_keeps_image_ids_and_warns_on_swapped_sizes(
        tiny, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    emu, images = tiny
    from cogseg_ml.samples import samples_from_coco

    portrait = images[1]  # 96 high, 64 wide as stored
    coco = {"images": [{"id": 40, "file_name": images[0].name, "width": 96, "height": 64},
                       {"id": 17, "file_name": portrait.name, "width": 96, "height": 64}],
            "categories": [{"id": 5, "name": "shape"}],
            "annotations": [{"id": 1, "image_id": 40, "category_id": 5, "bbox": [4, 4, 20, 20]},
                            {"id": 2, "image_id": 17, "category_id": 5,
                             "bbox": [4, 4, 20, 20]}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    ds = CdfSegmentationDataset(samples_from_coco(path), client=emu.config,
                                cache=tmp_path / "c", on_miss="skip")
    with caplog.at_level(logging.WARNING, logger="cogseg_ml.image_decode"):
        assert [ds[i][1]["image_id"] for i in range(2)] == [40, 17]
    assert ds.get_height_and_width(1) == (portrait.height, portrait.width)
    warned = [r.getMessage() for r in caplog.records if r.name == "cogseg_ml.image_decode"]
    assert len(warned) == 1 and portrait.name in warned[0] and "EXIF-aware" in warned[0]


def test_image_dtype(tiny, tmp_path: Path) -> None:
    emu, images = tiny
    samples = samples_for(images[:1])
    plain = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    floats = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c",
                                    image_dtype=torch.float32)
    u8, _ = plain[0]
    f32, target = floats[0]
    assert u8.dtype == torch.uint8 and isinstance(f32, tv_tensors.Image)
    assert f32.dtype == torch.float32 and 0.0 <= float(f32.min()) <= float(f32.max()) <= 1.0
    assert torch.equal(f32, v2.functional.to_dtype(u8, torch.float32, scale=True))
    assert torch.allclose(f32, u8.float() / 255, rtol=0, atol=1e-6)
    assert target["masks"].dtype == torch.bool
    with pytest.raises(ValidationError, match="image_dtype"):
        CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c",
                               image_dtype=torch.int32)


# --- transforms v2 -----------------------------------------------------------------------------
FIELDS = ("labels", "scores", "area", "iscrowd", "instances")  # one entry per instance


def test_instance_fields_are_declared() -> None:
    assert cds.INSTANCE_FIELDS == FIELDS


def check_aligned(target: dict[str, Any]) -> int:
    n = int(target["boxes"].shape[0])
    assert target["masks"].shape[0] == n
    for key in FIELDS:
        if key in target:
            assert target[key].shape == (n,), key
    if "area" in target:
        assert torch.equal(target["area"], target["masks"].flatten(1).sum(1).float())
    return n


def test_crop_that_drops_instances_keeps_every_field_aligned(tiny, tmp_path: Path) -> None:
    emu, images = tiny
    row = images[-1]
    samples = samples_for([row])
    crop = v2.CenterCrop(32)  # keeps the centre rectangle only (rows and columns 16..47)
    keep_all = CdfSegmentationDataset(
        samples, client=emu.config, cache=tmp_path / "c",
        transforms=v2.Compose([crop, v2.SanitizeBoundingBoxes(labels_getter=cds.instance_fields)]))
    image, t = keep_all[0]
    assert image.shape == (3, 32, 32) and check_aligned(t) == 1
    assert t["instances"].tolist() == [1]
    assert t["labels"].tolist() == [keep_all.category_table.id_of("ellipse")]
    centre = row.objects[1].mask[16:48, 16:48]
    assert np.array_equal(t["masks"][0].numpy(), centre)
    assert t["area"].tolist() == [float(centre.sum())] and t["iscrowd"].tolist() == [0]
    assert t["scores"].shape == (1,)

    # Applied outside the dataset, the same getter does the same.
    plain = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    out_img, out = v2.SanitizeBoundingBoxes(labels_getter=cds.instance_fields)(*crop(*plain[0]))
    assert check_aligned(out) == 1 and out["instances"].tolist() == [1]


def test_default_sanitize_in_the_dataset_keeps_every_field_aligned(
        tiny, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    emu, images = tiny
    ds = CdfSegmentationDataset(
        samples_for([images[-1]]), client=emu.config, cache=tmp_path / "c",
        transforms=v2.Compose([v2.CenterCrop(32), v2.SanitizeBoundingBoxes()]))
    with caplog.at_level(logging.WARNING, logger="cogseg_ml.dataset"):
        _, t = ds[0]
        ds[0]
    assert check_aligned(t) == 1
    assert t["area"].shape == (1,) and t["iscrowd"].tolist() == [0]  # computed again
    # Kept aligned without a special labels_getter: the centre instance's own values.
    assert t["instances"].tolist() == [1] and t["scores"].shape == (1,)
    _, plain = CdfSegmentationDataset(samples_for([images[-1]]), client=emu.config,
                                      cache=tmp_path / "c")[0]
    assert torch.equal(t["scores"], plain["scores"][1:2])
    assert t["labels"].tolist() == [ds.category_table.id_of("ellipse")]
    assert not [r for r in caplog.records if r.name == "cogseg_ml.dataset"]  # nothing to warn

    no_sanitize = CdfSegmentationDataset(
        samples_for([images[-1]]), client=emu.config, cache=tmp_path / "c",
        transforms=v2.Compose([v2.CenterCrop(32),
                               v2.SanitizeBoundingBoxes(labels_getter=None)]))
    with pytest.raises(SampleError, match="instance_fields"):
        no_sanitize[0]


def test_random_iou_crop_pipeline_stays_aligned(tiny, tmp_path: Path) -> None:
    emu, images = tiny
    tf = v2.Compose([v2.RandomIoUCrop(), v2.RandomHorizontalFlip(), v2.Resize((48, 48)),
                     v2.SanitizeBoundingBoxes(labels_getter=cds.instance_fields)])
    ds = CdfSegmentationDataset(samples_for(images), client=emu.config, cache=tmp_path / "c",
                                transforms=tf)
    torch.manual_seed(1)
    counts = []
    for _ in range(4):
        for i in range(len(ds)):
            _, t = ds[i]
            counts.append(check_aligned(t))
            assert set(t["instances"].tolist()) <= set(range(len(images[i].objects)))
    assert min(counts) >= 0 and sum(counts) > 0


# --- what the reference scripts do --------------------------------------------------------------
def preset_like(augmentation: str) -> v2.Compose:
    """The transforms v2 chain torchvision's detection presets build (``use_v2``)."""
    mean = (123.0, 117.0, 104.0)
    steps: list[Any] = []
    if augmentation == "ssd":
        fill = defaultdict(lambda: mean, {tv_tensors.Mask: 0})
        steps += [v2.RandomPhotometricDistort(), v2.RandomZoomOut(fill=fill),
                  v2.RandomIoUCrop()]
    steps += [v2.RandomHorizontalFlip(p=0.5), v2.ToImage(),
              v2.ToDtype(torch.float, scale=True),
              v2.ConvertBoundingBoxFormat(tv_tensors.BoundingBoxFormat.XYXY),
              v2.SanitizeBoundingBoxes(), v2.ToPureTensor()]
    return v2.Compose(steps)


@pytest.mark.parametrize("augmentation", ["hflip", "ssd"])
def test_reference_style_presets_give_usable_targets(tiny, tmp_path: Path,
                                                     augmentation: str) -> None:
    emu, images = tiny
    ds = CdfSegmentationDataset(samples_for(images), client=emu.config, cache=tmp_path / "c",
                                transforms=preset_like(augmentation))
    torch.manual_seed(2)
    for _ in range(3):
        for i in range(len(ds)):
            image, t = ds[i]
            assert image.dtype == torch.float32 and type(image) is torch.Tensor
            n = check_aligned(t)
            assert all(key in t for key in FIELDS)  # every field, always aligned
            assert t["labels"].shape == (n,) and t["area"].shape == (n,)
            assert type(t["image_id"]) is int and t["image_id"] == ds.image_id(i)


def test_training_epoch_like_the_reference_engine(tiny, tmp_path: Path, one_thread) -> None:
    emu, images = tiny
    ds = CdfSegmentationDataset(samples_for(images[:4]), client=emu.config,
                                cache=tmp_path / "c", image_dtype=torch.float32)
    device = torch.device("cpu")
    model = tiny_maskrcnn(ds.num_classes)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(ds, batch_size=2, shuffle=True, collate_fn=collate_fn)
    steps = 0
    for imgs, targets in loader:
        batch = [img.to(device) for img in imgs]
        loss_dict = model(batch, [to_device(t, device) for t in targets])
        loss = sum(loss_dict.values())
        assert math.isfinite(float(loss.detach()))
        assert float(loss_dict["loss_mask"].detach()) > 0
        assert float(loss_dict["loss_box_reg"].detach()) > 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    assert steps == 2


def coco_ground_truth(ds: CdfSegmentationDataset) -> COCO:
    """COCO ground truth from the targets, built the way the reference's evaluation does."""
    data: dict[str, list[dict[str, Any]]] = {"images": [], "annotations": [], "categories": []}
    seen: set[int] = set()
    for i in range(len(ds)):
        img, t = ds[i]
        data["images"].append({"id": t["image_id"], "height": img.shape[-2],
                               "width": img.shape[-1]})
        xywh = t["boxes"].clone()
        xywh[:, 2:] -= xywh[:, :2]
        masks = t["masks"].permute(0, 2, 1).contiguous().permute(0, 2, 1)  # Fortran order
        for k in range(len(xywh)):
            label = int(t["labels"][k])
            seen.add(label)
            data["annotations"].append({
                "id": len(data["annotations"]) + 1, "image_id": t["image_id"],
                "bbox": xywh[k].tolist(), "category_id": label,
                "area": float(t["area"][k]), "iscrowd": int(t["iscrowd"][k]),
                "segmentation": coco_mask.encode(masks[k].numpy())})
    data["categories"] = [{"id": c} for c in sorted(seen)]
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def evaluate(gt: COCO, detections: list[dict[str, Any]], iou_type: str) -> np.ndarray:
    dt = gt.loadRes(detections) if detections else COCO()
    ev = COCOeval(gt, dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats)


def test_coco_evaluation_from_the_targets(tiny, tmp_path: Path, one_thread) -> None:
    emu, images = tiny
    ds = CdfSegmentationDataset(samples_for(images), client=emu.config, cache=tmp_path / "c",
                                image_dtype=torch.float32)
    gt = coco_ground_truth(ds)
    assert sorted(gt.getImgIds()) == sorted(ds.image_id(i) for i in range(len(ds)))

    # Our own targets as detections: image ids, areas and masks line up, so AP is perfect.
    perfect = []
    for ann in gt.dataset["annotations"]:
        rle = dict(ann["segmentation"])
        perfect.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": ann["bbox"], "segmentation": rle, "score": 1.0})
    for iou_type in ("bbox", "segm"):
        stats = evaluate(gt, perfect, iou_type)
        assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)

    # A model's outputs keyed by target["image_id"], as the reference's evaluator takes them.
    model = tiny_maskrcnn(ds.num_classes)
    model.eval()
    detections = []
    with torch.inference_mode():
        for imgs, targets in DataLoader(ds, batch_size=2, collate_fn=collate_fn):
            outputs = model(list(imgs))
            res = {t["image_id"]: o for t, o in zip(targets, outputs, strict=True)}
            for image_id, o in res.items():
                boxes = o["boxes"].clone()
                boxes[:, 2:] -= boxes[:, :2]
                for k in range(len(boxes)):
                    m = (o["masks"][k, 0] > 0.5).numpy().astype(np.uint8)
                    detections.append({
                        "image_id": image_id, "category_id": int(o["labels"][k]),
                        "bbox": boxes[k].tolist(), "score": float(o["scores"][k]),
                        "segmentation": coco_mask.encode(np.asfortranarray(m))})
    assert set(d["image_id"] for d in detections) <= set(gt.getImgIds())
    for iou_type in ("bbox", "segm"):
        stats = evaluate(gt, detections, iou_type)
        assert stats.shape == (12,) and np.isfinite(stats).all()


def test_aspect_ratios_come_from_headers_without_fetching(tiny, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    emu, images = tiny
    samples = samples_for(images)
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    assert ds.prefetch(progress=False).ok

    def no_decoding(*args: object, **kw: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr("cogseg_ml.dataset.decode_image", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    before = len(emu.requests)
    assert hasattr(ds, "get_height_and_width")  # the reference's fast path
    ratios = [h / w for h, w in (ds.get_height_and_width(i) for i in range(len(ds)))]
    assert ratios == [im.height / im.width for im in images]
    assert len(emu.requests) == before

    fresh = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    before = len(emu.requests)
    assert [fresh.get_height_and_width(i) for i in range(len(fresh))] == \
        [(im.height, im.width) for im in images]
    paths = [r.path for r in emu.requests[before:]]
    assert not [p for p in paths if "download" in p]  # images come from the store
    assert len([p for p in paths if p.endswith("/files/byids")]) <= 1


def test_get_height_and_width_of_an_unreadable_file(make_emulator, tmp_path: Path) -> None:
    emu = make_emulator(images=[])
    emu.add_image(b"not an image", "broken.png", external_id="broken.png")
    emu.add_image(encode_image(np.zeros((10, 20, 3), np.uint8)), "ok.png", external_id="ok.png")
    samples = [Sample(FileRef(external_id=x), (Instance(Prompt(box=Box(0, 0, 1, 1))),))
               for x in ("broken.png", "ok.png")]
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c")
    with pytest.raises(SampleError, match=r"sample 0 .*not a readable image"):
        ds.get_height_and_width(0)
    assert ds.get_height_and_width(1) == (10, 20)
    with pytest.raises(IndexError):
        ds.get_height_and_width(2)


def test_labeler_coco_file_and_dataset_agree_on_ids(tiny, tmp_path: Path) -> None:
    from cogseg_ml.labeler import SegmentationLabeler

    emu, images = tiny
    samples = samples_for(images)
    labeler = SegmentationLabeler(emu.config, cache=tmp_path / "c", progress=False,
                                  workdir=tmp_path / "w")
    labeler.label(samples)
    labeler.to_coco(tmp_path / "labels.json")
    coco = json.loads((tmp_path / "labels.json").read_text())
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c",
                                on_miss="raise")
    assert ds.category_table.as_coco() == coco["categories"]
    by_name = {img["file_name"]: img["id"] for img in coco["images"]}
    for i, im in enumerate(images):
        _, t = ds[i]
        assert t["image_id"] == by_name[im.name]
        anns = sorted((a for a in coco["annotations"] if a["image_id"] == t["image_id"]),
                      key=lambda a: a["prompt_index"])
        assert [a["category_id"] for a in anns] == t["labels"].tolist()
        assert [a["area"] for a in anns] == t["area"].tolist()
