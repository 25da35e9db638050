"""Samples from class names: a detector boxes each image, the boxes become box prompts.

:func:`samples_from_text` reads each file's image through the read-through store (downloaded
once per file version, shared with the labeler that segments them next), runs a
:class:`~cogseg_ml.detect.text_boxes.TextBoxDetector` on it with the class list, and turns each
detection into an :class:`~cogseg_ml.samples.Instance`: a box prompt whose category is the
class phrase. So the labeler, the dataset, the mask cache, the exports and the review page take
them as they take any samples. Detections are stored (:mod:`cogseg_ml.detect.detection_cache`)
per file version (the image's content), class list and detector identity (weights and
settings), so a second run detects nothing it has seen.

Each sample's ``meta`` keeps the detections (``meta["detections"]``, in instance order) and the
detector's identity (``meta["detector"]``);
:meth:`~cogseg_ml.labeler.SegmentationLabeler.to_coco` (given the samples) writes both into the
COCO file beside the segmenter's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogseg_ml.api.client import FileLike
from cogseg_ml.backends.base import BackendJob, BackendOutcome
from cogseg_ml.cache.cache_keys import file_identity
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.config import CdfConfig
from cogseg_ml.detect.class_prompts import check_classes
from cogseg_ml.detect.detection_cache import DetectionCache, detection_key, detections_file
from cogseg_ml.detect.detections import Detection
from cogseg_ml.errors import (
    AuthenticationError,
    CdfUnreachableError,
    CogsegError,
    ValidationError,
)
from cogseg_ml.image_decode import decode_array
from cogseg_ml.progress import progress_bar
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample
from cogseg_ml.store import ImageRecord, SegmentStore

if TYPE_CHECKING:
    from cogseg_ml.detect.text_boxes import TextBoxDetector

__all__ = ["TextSamples", "samples_from_text"]

CHUNK = 64  # files resolved and downloaded together


class _ImagesOnly:
    """The store's backend when it only serves images (no mask is asked of it)."""

    name = "none"
    model_version = ""

    def run(self, jobs: Iterable[BackendJob]) -> Iterator[BackendOutcome]:
        raise CogsegError("this store serves images only; segment through a labeler")

    def identities(self) -> list[tuple[str, str]]:
        return [(self.name, self.model_version)]


class TextSamples(list[Sample]):
    """The samples :func:`samples_from_text` made (one per image with a detection), in input
    order, and what happened to the rest.

    Attributes:
        classes: the class phrases asked for.
        detector: the detector's identity (weights and settings).
        images: files asked for.
        detected: images run through the detector in this call (the others came from the
            detection cache: ``from_cache``).
        from_cache: images whose detections were stored already.
        without_detections: files the detector found nothing in (they give no sample).
        failed: ``{file: reason}`` for files whose image could not be had or segmented.
        per_class: detections kept, by class.
        dropped: candidate boxes dropped, by reason (this call's detector runs only).
    """

    def __init__(self, samples: Iterable[Sample] = (), *, classes: Sequence[str] = (),
                 detector: str = "") -> None:
        super().__init__(samples)
        self.classes = tuple(classes)
        self.detector = detector
        self.images = 0
        self.detected = 0
        self.from_cache = 0
        self.without_detections: list[FileRef] = []
        self.failed: dict[str, str] = {}
        self.per_class: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the counts."""
        return {"images": self.images, "samples": len(self), "detected": self.detected,
                "from_cache": self.from_cache,
                "without_detections": len(self.without_detections),
                "failed": dict(self.failed), "per_class": dict(self.per_class),
                "dropped": dict(self.dropped), "detector": self.detector,
                "classes": list(self.classes)}

    def summary(self) -> str:
        """A few lines a person can read."""
        per = ", ".join(f"{c}: {self.per_class.get(c, 0)}" for c in self.classes)
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        lines = [f"{self.images} images: {sum(self.per_class.values())} boxes in {len(self)} "
                 f"({per}); {len(self.without_detections)} without a box, "
                 f"{len(self.failed)} failed; {self.detected} detected, {self.from_cache} "
                 "from the detection cache",
                 f"boxes dropped: {drops}"]
        for who, why in list(self.failed.items())[:5]:
            lines.append(f"  failed {who}: {why}")
        return "\n".join(lines)


def _stops_everything(error: CogsegError) -> bool:
    """CDF unreachable or the credentials refused for the session: no image can be had."""
    return isinstance(error, CdfUnreachableError) or (
        isinstance(error, AuthenticationError) and error.session_wide)


def _sample(ref: FileRef, rec: ImageRecord, dets: Sequence[Detection], detector: str
            ) -> Sample:
    insts = tuple(Instance(Prompt(box=d.prompt_box(rec.width, rec.height)), d.label)
                  for d in dets)
    return Sample(ref, insts, meta={"width": rec.width, "height": rec.height,
                                    "detections": tuple(dets), "detector": detector})


def samples_from_text(files: Iterable[FileLike], classes: Sequence[str],
                      detector: TextBoxDetector, *, config: CdfConfig | None = None,
                      cache: MaskCache | str | Path | None = None,
                      store: SegmentStore | None = None, progress: bool = False
                      ) -> TextSamples:
    """Box prompts from class names: each image's detections become its instances.

    Args:
        files: the CDF files (ids, external ids, :class:`~cogseg_ml.prompts.FileRef`, or the
            :class:`~cogseg_ml.samples.file_listing.FileListing` of
            :func:`~cogseg_ml.samples.file_listing.samples_from_files`).
        classes: the class phrases (``["valve", "pressure gauge", "flange"]``); each
            instance's category is one of them, exactly.
        detector: the detector.
        config: the CDF connection images come from (default: the listing's, when ``files``
            is a listing).
        cache: the mask cache (or its path) whose image store keeps the downloads; pass the
            labeler's so nothing is downloaded twice. The detections go beside it.
        store: a ready store instead of ``config``/``cache`` (e.g. ``labeler.store``).
        progress: show a progress bar.

    Returns:
        The samples, one per image with at least one detection, in input order, with the
        counts (:class:`TextSamples`).

    Raises:
        ValidationError: an empty or repeated class list, or no CDF connection given.
        CdfUnreachableError, AuthenticationError: no image can be had at all (a file that
            cannot be had alone is reported in ``failed``, not raised).
        CacheError: the image store or the detection cache cannot be written.
    """
    from cogseg_ml.detect.text_boxes import TextBoxDetector  # torch: loaded when used

    names = check_classes(classes)
    if not isinstance(detector, TextBoxDetector):
        raise ValidationError(f"detector must be a TextBoxDetector, got "
                              f"{type(detector).__name__}")
    refs = list(dict.fromkeys(FileRef.parse(f) for f in files))
    if store is None:
        config = config or getattr(files, "config", None)
        if not isinstance(config, CdfConfig):
            raise ValidationError("samples_from_text needs the CDF connection the images come "
                                  "from: pass config=CdfConfig(...) (or store=labeler.store)")
        mask_cache = cache if isinstance(cache, MaskCache) else MaskCache(cache)
        store = SegmentStore(config, mask_cache, _ImagesOnly())
    ident = detector.identity
    out = TextSamples(classes=names, detector=ident)
    out.images = len(refs)
    stored = DetectionCache(detections_file(store.cache.path))
    before = detector.dropped.copy()
    with progress_bar(len(refs), "detecting", progress=progress, unit="image") as bar:
        for i in range(0, len(refs), CHUNK):
            for ref, dets in _chunk(refs[i:i + CHUNK], names, detector, store, stored, out):
                if dets is None:
                    pass
                elif dets:
                    out.per_class.update(d.label for d in dets)
                else:
                    out.without_detections.append(ref)
                bar.update(1)
    out.dropped = +(detector.dropped - before)
    return out


def _chunk(refs: Sequence[FileRef], names: tuple[str, ...], detector: TextBoxDetector,
           store: SegmentStore, stored: DetectionCache, out: TextSamples
           ) -> Iterator[tuple[FileRef, list[Detection] | None]]:
    """Detections of one chunk of files (``None`` for a file that failed), appending the
    samples to ``out`` in input order."""
    ident = detector.identity
    infos = store.resolve(refs, fresh=True)  # an explicit run: the versions of now
    wanted: list[FileRef] = []
    for ref in refs:  # a file the segment endpoint refuses is not even downloaded
        info = infos[ref]
        why = info if isinstance(info, CogsegError) else info.unsegmentable
        if why is None:
            wanted.append(ref)
        elif _stops_everything(why):
            raise why
        else:
            out.failed[ref.describe()] = f"{type(why).__name__}: {why}"
    found: dict[FileRef, list[Detection]] = {}
    todo: list[tuple[FileRef, ImageRecord, str]] = []
    usable: list[tuple[FileRef, ImageRecord]] = []
    for ref, rec in zip(wanted, store.records(wanted), strict=True):
        if isinstance(rec, CogsegError):
            if _stops_everything(rec):
                raise rec
            out.failed[ref.describe()] = f"{type(rec).__name__}: {rec}"
            continue
        usable.append((ref, rec))
        key = detection_key(file_identity(store.origin, store.config.project, ref),
                            rec.digest, names, ident)
        hit = stored.get(key)
        if hit is not None:
            found[ref] = hit
            out.from_cache += 1
        else:
            todo.append((ref, rec, key))
    by_size: dict[tuple[int, int], list[tuple[FileRef, ImageRecord, str]]] = {}
    for item in todo:
        by_size.setdefault((item[1].height, item[1].width), []).append(item)
    for group in by_size.values():
        for k in range(0, len(group), detector.batch_size):
            batch = group[k:k + detector.batch_size]
            pixels = [decode_array(store.loader(rec)(), ref, store.max_pixels)
                      for ref, rec, _ in batch]
            results = detector.detect(pixels, names)
            out.detected += len(batch)
            stored.put_many((key, ref.describe(), ident, names, d)
                            for (ref, _, key), d in zip(batch, results, strict=True))
            for (ref, _, _), d in zip(batch, results, strict=True):
                found[ref] = d
    failed = {r for r in refs if r.describe() in out.failed}
    for ref in refs:
        if ref in failed:
            yield ref, None
    for ref, rec in usable:
        dets = found[ref]
        if dets:
            out.append(_sample(ref, rec, dets, ident))
        yield ref, dets
