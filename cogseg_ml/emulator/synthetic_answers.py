"""The emulator's answers to segment jobs: synthetic ground truth, with injected failures.

The emulator runs its jobs on the service's
:class:`~cogseg_ml.service.job_engine.JobEngine` (``concurrency`` workers, each job padded to
the emulator's processing time); this module is the part that differs: where a job's pixels
come from (the file record it was created on, by the bytes' SHA-256, so a job created before a
content replacement finishes on the old bytes), which engine answers (a
:class:`~cogseg_ml.emulator.segmentation_engines.SegmentationEngine`), and the faults drawn
for the job when it was created. Results of one (content, prompt) are computed once and
reused: the engines are deterministic.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from cogseg_ml.api.wire_schema import JobStatus, SegmentResult
from cogseg_ml.emulator.segmentation_engines import SegmentationEngine
from cogseg_ml.emulator.state import FileRecord
from cogseg_ml.prompts import Prompt
from cogseg_ml.service.job_engine import JobOutcome
from cogseg_ml.service.job_store import StoredJob
from cogseg_ml.service.segment_wire import mask_segment

__all__ = ["SyntheticAnswerer"]


class SyntheticAnswerer:
    """Answers emulator jobs (a :class:`~cogseg_ml.service.job_engine.Answerer`).

    Args:
        engine: what segments the pixels.
        result_cache_size: (content, prompt) results kept.
    """

    def __init__(self, engine: SegmentationEngine, *, result_cache_size: int = 4096) -> None:
        self.engine = engine
        self._files: dict[str, FileRecord] = {}
        self._faults: dict[int, tuple[str | None, str | None]] = {}
        self._results: OrderedDict[tuple[str, Prompt], list[SegmentResult]] = OrderedDict()
        self._result_cache_size = result_cache_size
        self._lock = threading.Lock()

    def remember(self, rec: FileRecord) -> str:
        """Keep the record whose bytes a new job runs on; their SHA-256."""
        digest = rec.digest()
        with self._lock:
            self._files.setdefault(digest, rec)
        return digest

    def set_faults(self, job_id: int, *, fail_job: str | None, fail_item: str | None) -> None:
        """The job fails as a whole (``fail_job``) or its item fails (``fail_item``)."""
        if fail_job is not None or fail_item is not None:
            with self._lock:
                self._faults[job_id] = (fail_job, fail_item)

    def answer(self, jobs: Sequence[StoredJob]) -> list[JobOutcome]:
        """Each job's outcome: its injected failure, else the engine's masks."""
        return [self._answer(job) for job in jobs]

    def _answer(self, job: StoredJob) -> JobOutcome:
        with self._lock:
            fail_job, fail_item = self._faults.pop(job.job_id, (None, None))
            rec = self._files[job.digest]
        if fail_job is not None or fail_item is not None:
            return JobOutcome(job.job_id, JobStatus.FAILED, error=fail_job, item_error=fail_item)
        try:
            segments = self._segments_for(rec, job)
        except (OSError, ValueError) as exc:  # undecodable image: the item fails
            return JobOutcome(job.job_id, JobStatus.FAILED,
                              item_error=f"could not read image {rec.name!r}: {exc}")
        return JobOutcome(job.job_id, JobStatus.COMPLETED, segments)

    def _segments_for(self, rec: FileRecord, job: StoredJob) -> list[SegmentResult]:
        key = (job.digest, job.prompt)
        with self._lock:
            cached = self._results.get(key)
            if cached is not None:
                self._results.move_to_end(key)
                return cached
        pixels = rec.pixels()
        # CDF's polygons cannot carry holes: the emulator answers with each part's outline.
        out = [mask_segment(seg.mask, seg.score, outline="filled")
               for seg in self.engine.segment(pixels, job.prompt.points, job.prompt.box)]
        out.sort(key=lambda s: -s.score)
        with self._lock:
            self._results[key] = out
            if len(self._results) > self._result_cache_size:
                self._results.popitem(last=False)
        return out
