"""A labels file with masks of two provenances, and the cache that holds its images.

The first three images are labelled through the (emulated) API; then the API is retired and a
fallback labels all six: the first three come from the cache (API answers), the other three
from a stand-in local model. The labels file thus names both sources, as a real run across an
outage does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cogseg_ml.backends.api_backend import ApiBackend
from cogseg_ml.backends.fallback import FallbackBackend
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample
from tests.box_backend import BoxBackend


@dataclass(frozen=True)
class Labelled:
    """A labels file on disk, its content, the cache beside it, and the emulator (running)."""

    labels: Path
    coco: dict[str, Any]
    cache: Path
    emulator: Emulator


def _samples(images: list[SyntheticImage]) -> list[Sample]:
    return [Sample(FileRef(external_id=im.name),
                   tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
            for im in images]


@pytest.fixture(scope="session")
def labelled(images: list[SyntheticImage], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Labelled]:
    root = tmp_path_factory.mktemp("review-labels")
    with Emulator(images=images, processing_time_s=0.01, concurrency=8) as emu:
        first = SegmentationLabeler(emu.config, cache=root / "cache", workdir=root / "w1",
                                    progress=False)
        first.label(_samples(images[:3]))
        emu.retired = True
        both = SegmentationLabeler(FallbackBackend(ApiBackend(emu.config), BoxBackend()),
                                   cache=root / "cache", workdir=root / "w2", progress=False)
        report = both.label(_samples(images))
        assert report.failed == 0, report.summary()
        emu.retired = False
        labels = root / "labels.json"
        both.to_coco(labels)
        coco = json.loads(labels.read_text())
        yield Labelled(labels, coco, root / "cache", emu)
