"""A stand-in local model for tests: the prompt's box as the mask (no weights to load)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from cogseg_ml.backends.base import BackendJob, BackendOutcome, MaskResult, ScoredMask
from cogseg_ml.mask_codec import encode


class BoxBackend:
    """Answers every job with its box as the mask; counts the jobs it was given."""

    name = "box-model"
    model_version = "boxes-1"

    def __init__(self) -> None:
        self.jobs = 0

    def identities(self) -> list[tuple[str, str]]:
        return [(self.name, self.model_version)]

    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        for job in jobs:
            self.jobs += 1
            m = np.zeros((job.height, job.width), bool)
            b = job.request.prompt.box
            assert b is not None
            m[int(b.y_min * job.height):int(b.y_max * job.height),
              int(b.x_min * job.width):int(b.x_max * job.width)] = True
            yield BackendOutcome(job, result=MaskResult(
                segments=(ScoredMask(1.0, encode(m)[0]),), height=job.height, width=job.width,
                backend=self.name, model_version=self.model_version))
