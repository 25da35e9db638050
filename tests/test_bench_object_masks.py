"""``benchmarks.object_masks``: a random SAM 2.1 reshaped to give object-like masks keeps its
layout (every tensor's name, shape and dtype; only the four named decoder weights change) and
answers with far fewer polygons per mask than the same weights as drawn."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from benchmarks.object_masks import WEIGHTS, object_like
from cogseg_ml.api.results import SegmentRequest
from cogseg_ml.backends.base import BackendJob
from cogseg_ml.backends.local_sam import LocalSamBackend
from cogseg_ml.backends.sam2 import save_random_checkpoint
from cogseg_ml.emulator.synthetic_images import encode_image, make_dataset
from cogseg_ml.mask_codec import decode, mask_to_polygons
from cogseg_ml.prompts import FileRef, Point, Prompt

CHANGED = {"mask_decoder.conv_s0.weight", "mask_decoder.conv_s1.weight",
           "mask_decoder.upscale_conv1.weight", "mask_decoder.upscale_conv2.weight"}


def _polygons_per_mask(model: Path) -> float:
    image = make_dataset(1, seed=3, height=120, width=160)[0]
    data = encode_image(image.pixels)
    digest = hashlib.sha256(data).hexdigest()
    rng = np.random.default_rng(0)
    jobs = [BackendJob(SegmentRequest(FileRef(external_id=image.name),
                                      Prompt(points=(Point(float(x), float(y), 1),))),
                       120, 160, digest, lambda: data)
            for x, y in 0.1 + 0.8 * rng.random((6, 2))]
    backend = LocalSamBackend.from_pretrained(model, device="cpu")
    try:
        results = [o.result for o in backend.run(jobs)]
    finally:
        backend.close()
    counts = []
    for result in results:
        assert result is not None
        for mask in decode([s.rle for s in result.segments]):
            counts.append(len(mask_to_polygons(mask)))
    return float(np.mean(counts))


def test_object_like_keeps_the_layout_and_gives_whole_objects(tmp_path: Path) -> None:
    noise = save_random_checkpoint(tmp_path / "noise", "sam2", seed=0)
    shaped = object_like(save_random_checkpoint(tmp_path / "shaped", "sam2", seed=0))
    before, after = load_file(noise / WEIGHTS), load_file(shaped / WEIGHTS)
    assert before.keys() == after.keys()
    changed = set()
    for name, tensor in before.items():
        assert after[name].shape == tensor.shape and after[name].dtype == tensor.dtype, name
        if not bool((after[name] == tensor).all()):
            changed.add(name)
    assert changed == CHANGED
    kernel = after["mask_decoder.upscale_conv1.weight"]
    assert bool((kernel == kernel[..., :1, :1]).all())  # one kernel for the 2x2 outputs

    fragments, objects = _polygons_per_mask(noise), _polygons_per_mask(shaped)
    assert objects >= 1  # masks, not empty answers
    assert objects * 10 <= fragments, (objects, fragments)
