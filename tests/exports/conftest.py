"""One labelling run per test module: its labels, a holey labels file, its cache."""

from __future__ import annotations

import pytest

from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from tests.exports.labelsets import LabelSet, build


@pytest.fixture(scope="module")
def labelset(tmp_path_factory: pytest.TempPathFactory, shared_emulator: Emulator,
             images: list[SyntheticImage]) -> LabelSet:
    return build(tmp_path_factory.mktemp("labelset"), shared_emulator, images[:3])
