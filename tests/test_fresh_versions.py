"""A file replaced in CDF seconds ago is seen by every explicit refresh (``prefetch()``,
``label()``), in the same process, by new and old datasets and labelers alike; only implicit
lookups (``dataset[i]`` and the like) reuse versions resolved less than ``VERSION_TTL_S`` ago.

Real HTTP against the emulator, whose ``replace_file`` is CDF's upload with overwrite; the
version memo's clock is the store's ``clock`` (moved forward here, never slept on).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from cogseg_ml import store as store_module
from cogseg_ml.dataset import CdfSegmentationDataset, collate_fn
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image, make_dataset
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample


def sample(im: SyntheticImage) -> Sample:
    return Sample(FileRef(external_id=im.name),
                  tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))


def byids(emu: Emulator) -> int:
    return sum(1 for r in emu.requests if r.path.endswith("/files/byids"))


@pytest.fixture
def replaced(make_emulator) -> tuple[Emulator, SyntheticImage, SyntheticImage,
                                     Callable[[], None]]:
    """An emulator holding ``old`` (120x160); calling ``replace()`` overwrites it with ``new``
    (200x100) under the same external id."""
    old = make_dataset(1, seed=5, height=120, width=160)[0]
    new = make_dataset(1, seed=6, height=200, width=100)[0]
    emu = make_emulator(images=[old], processing_time_s=0.0)

    def replace() -> None:
        emu.replace_file(old.name, encode_image(new.pixels, "png"))

    return emu, old, new, replace


def is_image_of(image, truth: SyntheticImage) -> bool:
    return tuple(image.shape[-2:]) == (truth.height, truth.width) and np.array_equal(
        image.permute(1, 2, 0).numpy(), truth.pixels)


def seen_then_replaced(replaced, cache: Path) -> Callable[[], CdfSegmentationDataset]:
    """The old image read through one dataset, then replaced in CDF; what makes further
    datasets over the same sample and cache."""
    emu, old, _, replace = replaced

    def dataset() -> CdfSegmentationDataset:
        return CdfSegmentationDataset([sample(old)], client=emu.config, cache=cache)

    assert is_image_of(dataset()[0][0], old)
    replace()
    return dataset


def test_prefetch_of_a_new_dataset_sees_a_file_replaced_seconds_ago(replaced, tmp_path: Path
                                                                     ) -> None:
    emu, _, new, _ = replaced
    second = seen_then_replaced(replaced, tmp_path / "cache")()
    report = second.prefetch(progress=False)
    assert report.ok and report.images_downloaded == 1
    assert second.get_height_and_width(0) == (200, 100)
    image, target = second[0]
    assert is_image_of(image, new) and tuple(target["masks"].shape[-2:]) == (200, 100)
    # Workers use the versions the parent's prefetch resolved: the new bytes, no CDF call.
    before = byids(emu)
    loader = DataLoader(second, batch_size=1, num_workers=2, collate_fn=collate_fn)
    images = [img for imgs, _ in loader for img in imgs]
    assert len(images) == 1 and is_image_of(images[0], new)
    assert byids(emu) == before


def test_prefetch_again_on_the_same_dataset_sees_the_replacement(replaced, tmp_path: Path
                                                                  ) -> None:
    emu, old, new, replace = replaced
    ds = CdfSegmentationDataset([sample(old)], client=emu.config, cache=tmp_path / "cache")
    assert is_image_of(ds[0][0], old) and ds.get_height_and_width(0) == (120, 160)
    replace()
    ds.prefetch(progress=False)
    assert ds.get_height_and_width(0) == (200, 100)
    image, target = ds[0]
    assert is_image_of(image, new) and tuple(target["boxes"].canvas_size) == (200, 100)


def test_label_sees_a_file_replaced_seconds_ago(replaced, tmp_path: Path) -> None:
    emu, old, new, replace = replaced
    cache = tmp_path / "cache"
    first = SegmentationLabeler(emu.config, cache=cache, workdir=tmp_path / "w1",
                                progress=False)
    first.label([sample(old)])
    assert [(ln["height"], ln["width"]) for ln in first.image_lines()] == [(120, 160)]
    replace()
    second = SegmentationLabeler(emu.config, cache=cache, workdir=tmp_path / "w2",
                                 progress=False)
    report = second.label([sample(old)])
    assert [(ln["height"], ln["width"]) for ln in second.image_lines()] == [(200, 100)]
    n = len(old.objects)
    assert report.jobs_run == n and report.from_cache == 0  # masks of the new pixels
    # The first labeler, asked again, sees it too (its own earlier answer is not reused).
    again = first.label([sample(old)])
    assert [(ln["height"], ln["width"]) for ln in first.image_lines()] == [(200, 100)]
    assert again.from_cache == n and again.jobs_run == 0


def test_implicit_lookups_reuse_versions_until_the_memo_expires(replaced, tmp_path: Path
                                                                 ) -> None:
    emu, _, new, _ = replaced
    dataset = seen_then_replaced(replaced, tmp_path / "cache")
    calls = byids(emu)
    # dataset[i] without prefetch(): a version resolved moments ago in this process is reused
    # (no files/byids call), as documented.
    dataset()[0]
    assert byids(emu) == calls
    # Once VERSION_TTL_S has passed on the store's clock, CDF is asked again.
    third = dataset()
    third.store.clock = lambda: time.monotonic() + store_module.VERSION_TTL_S + 1
    image, _ = third[0]
    assert byids(emu) == calls + 1
    assert is_image_of(image, new)
