"""The image budget: a returned image that would not fit is refused before anything is built.

``size=`` alone can decide that an image is too large (every image gets at least that short
side): refused when the dataset is built, before any request. Where the image's shape decides
(an extreme aspect ratio), the sample is refused once its header is read, before decoding.
Real HTTP against the emulator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cogseg_ml import dataset as cds
from cogseg_ml.dataset import CdfSegmentationDataset
from cogseg_ml.emulator.synthetic_images import encode_image
from cogseg_ml.errors import SampleError, ValidationError
from cogseg_ml.masks_at_size import (
    DEFAULT_IMAGE_BUDGET,
    ImageBudgetError,
    check_image_budget,
)
from cogseg_ml.prompts import Box, FileRef, Prompt
from cogseg_ml.samples import Instance, Sample


def one_box(name: str) -> Sample:
    return Sample(FileRef(external_id=name), (Instance(Prompt(box=Box(0.1, 0.1, 0.6, 0.6))),))


def test_a_huge_size_is_refused_when_the_dataset_is_built(shared_emulator, images,
                                                          tmp_path: Path) -> None:
    import torch

    before = len(shared_emulator.requests)
    samples = [one_box(images[0].name)]
    with pytest.raises(ImageBudgetError) as info:
        CdfSegmentationDataset(samples, client=shared_emulator.config, cache=tmp_path / "c",
                               size=10**6)
    err = info.value
    assert isinstance(err, ValidationError)
    assert (err.height, err.width) == (10**6, 10**6)
    assert err.needed_bytes == 3 * 10**12 and err.budget_bytes == DEFAULT_IMAGE_BUDGET
    text = str(err)
    assert "size=1000000" in text and "image_budget_bytes" in text and "2.1 GB" in text
    with pytest.raises(ImageBudgetError, match=r"float32"):  # 4 bytes a channel
        CdfSegmentationDataset(samples, client=shared_emulator.config, cache=tmp_path / "c",
                               size=(20000, 20000), image_dtype=torch.float32)
    with pytest.raises(ImageBudgetError):
        CdfSegmentationDataset(samples, client=shared_emulator.config, cache=tmp_path / "c",
                               max_size=10**12)
    assert len(shared_emulator.requests) == before  # refused before any request

    # What fits, or no budget at all, is built (nothing is allocated until an item is read).
    ok = CdfSegmentationDataset(samples, client=shared_emulator.config, cache=tmp_path / "c",
                                size=(20000, 20000))
    assert ok.image_budget_bytes == DEFAULT_IMAGE_BUDGET == 2**31
    CdfSegmentationDataset(samples, client=shared_emulator.config, cache=tmp_path / "c",
                           size=10**6, image_budget_bytes=None)


def test_image_budget_bytes_is_checked(shared_emulator, images, tmp_path: Path) -> None:
    for bad in (-1, 1.5, True, "1GB"):
        with pytest.raises(ValidationError, match="image_budget_bytes"):
            CdfSegmentationDataset([one_box(images[0].name)], client=shared_emulator.config,
                                   cache=tmp_path / "c", image_budget_bytes=bad)


def test_an_image_whose_shape_exceeds_the_budget_is_refused_before_decoding(
        make_emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = make_emulator(images=[])
    emu.add_image(encode_image(np.zeros((4, 400, 3), np.uint8)), "strip.png",
                  external_id="strip.png")
    emu.add_image(encode_image(np.zeros((40, 40, 3), np.uint8)), "square.png",
                  external_id="square.png")
    samples = [one_box("square.png"), one_box("strip.png")]
    # size=100: the square becomes 100x100 (30 000 bytes), the strip 100x10000 (3 MB).
    ds = CdfSegmentationDataset(samples, client=emu.config, cache=tmp_path / "c", size=100,
                                image_budget_bytes=100_000)
    image, _ = ds[0]
    assert tuple(image.shape) == (3, 100, 100)

    def no_decoding(*args: object, **kw: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(cds, "decode_image_at_size", no_decoding)
    monkeypatch.setattr(cds, "decode_image", no_decoding)
    with pytest.raises(ImageBudgetError) as info:
        ds[1]
    err = info.value
    assert isinstance(err, SampleError) and isinstance(err, ValidationError)
    assert (err.height, err.width) == (100, 10000) and err.needed_bytes == 3_000_000
    assert "sample 1" in str(err) and "strip.png" in str(err)
    assert "image_budget_bytes" in str(err) and "max_size" in str(err)


def test_check_image_budget() -> None:
    assert check_image_budget(10, 20, 600, "x") == 600
    assert check_image_budget(10, 20, None, "x", itemsize=4) == 2400
    with pytest.raises(ImageBudgetError, match="x: .*10x20.*2.4 kB"):
        check_image_budget(10, 20, 600, "x", itemsize=4, dtype="float32")
    with pytest.raises(ValidationError, match="image_budget_bytes"):
        check_image_budget(10, 20, -1, "x")
