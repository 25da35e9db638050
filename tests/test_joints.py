"""Where the parts meet: COCO image ids and names, cache identities across clusters, backends
that cannot reach the API, labeling flow across chunks. Real HTTP against the emulator."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from cogseg_ml.api.client import SegmentationClient
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.backends.base import BackendJob
from cogseg_ml.backends.fallback import FallbackBackend
from cogseg_ml.config import CdfConfig, StaticToken
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.emulator.synthetic_images import SyntheticImage, make_dataset
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample
from tests.api.counting_transport import CountingTransport
from tests.box_backend import BoxBackend


def sample(im: SyntheticImage, objects: Sequence[int] | None = None) -> Sample:
    objs = im.objects if objects is None else [im.objects[i] for i in objects]
    return Sample(FileRef(external_id=im.name),
                  tuple(Instance(Prompt(box=o.box()), o.category) for o in objs))


def label(emu, tmp: Path, samples, name: str = "run", **kw) -> dict:
    kw.setdefault("progress", False)
    lab = SegmentationLabeler(emu.config, cache=kw.pop("cache", tmp / f"{name}-cache"),
                              workdir=tmp / f"{name}-work", **kw)
    lab.label(samples)
    lab.to_coco(tmp / f"{name}.json")
    return json.loads((tmp / f"{name}.json").read_text())


def mask_of(ann: dict, img: dict) -> np.ndarray:
    rle = {"size": [img["height"], img["width"]], "counts": ann["segmentation"]["counts"]}
    return coco_mask.decode({**rle, "counts": rle["counts"].encode()}).astype(bool)


def best_match_iou(mask: np.ndarray, image: SyntheticImage) -> float:
    return max(float((mask & o.mask).sum() / (mask | o.mask).sum()) for o in image.objects)


def test_annotations_point_at_their_image_when_an_earlier_image_keeps_nothing(
        make_emulator, images, tmp_path) -> None:
    emu = make_emulator(faults=[Fault(kind="item_fail", times=1)])
    # concurrency 1: the first job (the only prompt of images[0]) is the one that fails
    coco = label(emu, tmp_path, [sample(images[0], [0]), sample(images[1])], concurrency=1)
    by_id = {img["id"]: img for img in coco["images"]}
    assert len(by_id) == 2 and len(coco["annotations"]) == len(images[1].objects)
    for ann in coco["annotations"]:
        img = by_id[ann["image_id"]]
        assert img["cdf_file"] == {"externalId": images[1].name}
        assert best_match_iou(mask_of(ann, img), images[1]) > 0.9


def test_one_image_per_file_however_many_samples_name_it(shared_emulator, images,
                                                         tmp_path) -> None:
    coco = label(shared_emulator, tmp_path, [sample(images[2], [0]), sample(images[2], [1])])
    assert len(coco["images"]) == 1
    assert [a["image_id"] for a in coco["annotations"]] == [coco["images"][0]["id"]] * 2


def test_coco_file_name_is_the_cdf_file_name_and_the_reference_has_its_own_field(
        shared_emulator, images, tmp_path) -> None:
    coco = label(shared_emulator, tmp_path, [sample(images[3])])
    (img,) = coco["images"]
    assert img["file_name"] == images[3].name
    assert img["cdf_file"] == {"externalId": images[3].name}


def test_same_project_on_two_clusters_never_shares_images_or_masks(tmp_path) -> None:
    from cogseg_ml.emulator.server import Emulator

    first, second = make_dataset(1, seed=3), make_dataset(1, seed=4)
    assert first[0].name == second[0].name  # the same external id, other content
    cache = tmp_path / "shared-cache"
    prompts = [sample(first[0])]  # the same question asked of both clusters
    with Emulator(images=first, processing_time_s=0.0) as emu:
        label(emu, tmp_path, prompts, name="a", cache=cache)
    with Emulator(images=second, processing_time_s=0.0) as emu:
        coco = label(emu, tmp_path, prompts, name="b", cache=cache)
        fresh = label(emu, tmp_path, prompts, name="fresh", cache=tmp_path / "fresh-cache")
    assert coco["images"][0]["sha256"] == fresh["images"][0]["sha256"]
    assert [a["segmentation"] for a in coco["annotations"]] == \
        [a["segmentation"] for a in fresh["annotations"]]


def test_fallback_with_default_settings_switches_to_local_fast_when_connections_are_refused(
        shared_emulator, images, tmp_path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = CdfConfig(project="p", base_url=f"http://127.0.0.1:{dead_port}",
                     credentials=StaticToken("t"))
    where = f"127.0.0.1:{dead_port}"
    transport = CountingTransport()  # counts the connection attempts
    local = BoxBackend()
    fb = FallbackBackend(ApiBackend(SegmentationClient(dead, transport=transport)), local)
    jobs = [BackendJob(SegmentRequest(FileRef(external_id=im.name),
                                      sample(im).instances[0].prompt, tag=n),
                       im.height, im.width, f"digest-{n}", lambda: b"")
            for n, im in enumerate(images)]
    outs = list(fb.run(jobs))
    assert len(outs) == len(jobs) and all(o.result is not None for o in outs)
    assert all(o.result.backend == "box-model" for o in outs if o.result)
    assert local.jobs == len(jobs)
    # The probe before the first chunk (one attempt) was refused and opened the breaker at
    # once: no job waited out a connect budget, let alone a retry budget.
    assert transport.sent == {where: 1} and transport.failed_connects(where) == 1, \
        (transport.sent, transport.ended)


def test_forked_dataloader_workers_never_use_the_parents_connection(make_emulator, images,
                                                                   tmp_path) -> None:
    from torch.utils.data import DataLoader

    from cogseg_ml.dataset import CdfSegmentationDataset, collate_fn

    emu = make_emulator()
    ds = CdfSegmentationDataset([sample(im) for im in images], client=emu.config,
                                cache=tmp_path / "cache")
    ds[0]  # the parent used the dataset: its session holds a keep-alive connection
    parent_ports = {e.client_port for e in emu.requests}
    seen = len(emu.requests)
    loader = DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork",
                        collate_fn=collate_fn)
    targets = [t for _, (t,) in loader]
    assert len(targets) == len(images) and all(len(t["masks"]) for t in targets)
    after = emu.requests[seen:]
    assert after, "the workers fetched the images and masks the parent had not"
    assert None not in parent_ports
    assert not {e.client_port for e in after} & parent_ports


def test_replaced_file_content_is_noticed_by_the_dataset(make_emulator, tmp_path,
                                                        monkeypatch) -> None:
    from cogseg_ml import store
    from cogseg_ml.dataset import CdfSegmentationDataset

    # Versions resolved in a process are trusted for VERSION_TTL_S; here it has passed.
    monkeypatch.setattr(store, "VERSION_TTL_S", 0.0)
    from cogseg_ml.emulator.synthetic_images import encode_image

    old, new = make_dataset(1, seed=5, height=120, width=160)[0], \
        make_dataset(1, seed=6, height=200, width=100)[0]
    emu = make_emulator(images=[old])
    samples = [sample(old)]
    first = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "cache")
    image, _ = first[0]
    assert tuple(image.shape[-2:]) == (120, 160)
    emu.replace_file(old.name, encode_image(new.pixels, "png"))
    second = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "cache")
    image, target = second[0]
    assert tuple(image.shape[-2:]) == (200, 100)
    assert target["masks"].shape[-2:] == (200, 100)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), new.pixels)


def test_results_evicted_before_export_are_counted_not_silently_dropped(
        shared_emulator, images, tmp_path, caplog) -> None:
    import logging

    from cogseg_ml.cache.mask_cache import MaskCache

    cache = MaskCache(tmp_path / "cache")
    lab = SegmentationLabeler(shared_emulator.config, cache=cache, workdir=tmp_path / "w",
                              progress=False)
    lab.label([sample(images[4])])
    n = len(images[4].objects)
    assert lab.report.labelled == n
    victim = next(iter(cache.iter_entries()))[2]
    cache.db.write(lambda c: c.execute("DELETE FROM entries WHERE key = ?", (victim,)))
    with caplog.at_level(logging.WARNING, logger="cogseg_ml.labeler"):
        written = lab.to_coco(tmp_path / "out.json")
    assert written == n - 1
    assert lab.report.missing_at_export == 1
    assert "left the cache" in caplog.text and "left the cache" in lab.report.summary()
