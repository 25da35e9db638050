"""A ground-truth detector for the synthetic images: a test double behind the real interface.

:class:`GroundTruthModel` knows the objects of some images (from
:mod:`cogseg_ml.emulator.synthetic_images`) and "detects" them as a perfect model would,
each box named by the class its shape stands for (``class_names``, e.g. ``{"rectangle":
"valve", "ellipse": "pressure gauge", "triangle": "flange"}``). The failure modes users
report of real pipelines can be injected on demand (:class:`Injections`): missed objects,
boxes for a class the image does not hold (distractors), one object boxed again under another
class (cross-class duplicates) or under its own (repeats). Its candidates go through the same
thresholds and suppression as a real model's, so the shared post-processing is what handles
them.

Images are recognized by their pixels (a digest of the decoded RGB array), so it works
wherever the images travel as lossless files (the emulator stores synthetic images as PNG).
:func:`save_ground_truth_detector` writes it as a detector folder (``model_type``
``"cogseg-ground-truth"``), which
:meth:`~cogseg_ml.detect.text_boxes.TextBoxDetector.from_pretrained` and ``cogseg label
--detector DIR`` load like a real one; :func:`~cogseg_ml.detect.truth_detector.
ground_truth_detector` wraps it in a detector in memory. The module sits below the loader and
the detector (it imports neither), so the arrows point one way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cogseg_ml.detect.detections import RawDetections
from cogseg_ml.errors import DetectorCheckpointError, ValidationError

if TYPE_CHECKING:
    from cogseg_ml.emulator.synthetic_images import SyntheticImage

__all__ = ["GROUND_TRUTH_TYPE", "GroundTruthModel", "Injections", "TruthBox",
           "load_ground_truth", "pixels_key", "save_ground_truth_detector", "truth_of"]

#: ``model_type`` of a saved ground-truth detector folder. Defined here, below the loader
#: (:mod:`cogseg_ml.detect.checkpoints` imports it), so the double never imports the loader.
GROUND_TRUTH_TYPE = "cogseg-ground-truth"

TRUE_SCORES = (0.9, 0.85)  # (box score, class score) of a real object
DUPLICATE_SCORES = (0.6, 0.55)  # the same object again under another class
REPEAT_SCORES = (0.5, 0.45)  # the same object again under its own class
DISTRACTOR_SCORES = (0.5, 0.1)  # a box where no phrase fits (class score below the default)
OTHER_CLASS_SCORE = 0.02
TRUTH_FILE = "truth.json"


def pixels_key(pixels: np.ndarray) -> str:
    """The identity of an image's pixels: SHA-256 of its shape and RGB bytes (16 digits)."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    h = hashlib.sha256(repr(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TruthBox:
    """One known object: its class phrase and tight pixel box ``(x0, y0, x1, y1)``."""

    label: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Injections:
    """Failure modes to inject, per image (each a count).

    Attributes:
        misses: the last ``misses`` objects of each image are not reported.
        duplicates: the first ``duplicates`` objects are boxed again, shifted by a pixel,
            under another requested class (scores :data:`DUPLICATE_SCORES`).
        repeats: the first ``repeats`` objects are boxed again under their own class, shifted
            by two pixels (scores :data:`REPEAT_SCORES`).
        distractors: boxes on background named by a requested class the image does not hold,
            with a box score above the default threshold and a class score below the text
            threshold (scores :data:`DISTRACTOR_SCORES`: the phrase does not fit).
        box_pad: pixels added around each true box (a real detector's boxes are loose; final
            labels take their box from the mask).
    """

    misses: int = 0
    duplicates: int = 0
    repeats: int = 0
    distractors: int = 0
    box_pad: int = 2

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValidationError(f"Injections.{name} must be an integer >= 0, got {v!r}")


def truth_of(images: Sequence[SyntheticImage], class_names: Mapping[str, str] | None
             ) -> dict[str, list[TruthBox]]:
    """The true boxes of each image, keyed by :func:`pixels_key`, named by ``class_names``."""
    truth: dict[str, list[TruthBox]] = {}
    for im in images:
        boxes = []
        for o in im.objects:
            ys, xs = np.nonzero(o.mask)
            label = class_names.get(o.category, o.category) if class_names else o.category
            boxes.append(TruthBox(label, (int(xs.min()), int(ys.min()), int(xs.max()) + 1,
                                          int(ys.max()) + 1)))
        truth[pixels_key(im.pixels)] = boxes
    return truth


class GroundTruthModel:
    """The ground-truth double as a :class:`~cogseg_ml.detect.text_boxes.DetectorModel`.

    Args:
        truth: objects per image, keyed by :func:`pixels_key`.
        injections: failure modes to inject.

    Attributes:
        unknown_images: images it was shown that are not in ``truth`` (they get no boxes).
    """

    family = "ground-truth"
    same_size_batches = False

    def __init__(self, truth: Mapping[str, Sequence[TruthBox]],
                 injections: Injections | None = None) -> None:
        self.truth = {k: list(v) for k, v in truth.items()}
        self.injections = injections or Injections()
        self.device = torch.device("cpu")
        text = json.dumps({"truth": {k: [asdict(b) for b in v] for k, v in
                                     sorted(self.truth.items())},
                           "injections": asdict(self.injections)}, sort_keys=True)
        self.model_version = f"ground-truth:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        self.unknown_images = 0

    def __repr__(self) -> str:
        return f"GroundTruthModel({len(self.truth)} images, {self.injections})"

    def prompt_texts(self, classes: Sequence[str]) -> list[str]:
        """The classes themselves (it reads no text)."""
        return list(classes)

    def raw(self, images: Sequence[np.ndarray], classes: Sequence[str]) -> list[RawDetections]:
        """Candidates for each image: its objects of the requested classes, plus injections."""
        return [self._one(px, classes) for px in images]

    def _one(self, pixels: np.ndarray, classes: Sequence[str]) -> RawDetections:
        h, w = pixels.shape[:2]
        objects = self.truth.get(pixels_key(pixels))
        c = len(classes)
        if objects is None:  # not one of its images: nothing at all, injections included
            self.unknown_images += 1
            return RawDetections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros((0, c)))
        inj = self.injections
        index = {c.casefold(): k for k, c in enumerate(classes)}
        wanted = [o for o in objects if o.label.casefold() in index]
        kept = wanted[:len(wanted) - inj.misses] if inj.misses else wanted
        rows: list[tuple[tuple[float, ...], float, int, float]] = []

        def padded(b: tuple[int, int, int, int], shift: int = 0) -> tuple[float, ...]:
            p = inj.box_pad
            return (b[0] - p + shift, b[1] - p + shift, b[2] + p + shift, b[3] + p + shift)

        for o in kept:
            rows.append((padded(o.box), TRUE_SCORES[0], index[o.label.casefold()],
                         TRUE_SCORES[1]))
        for o in kept[:inj.duplicates]:
            others = [k for c, k in index.items() if c != o.label.casefold()]
            if others:
                rows.append((padded(o.box, 1), DUPLICATE_SCORES[0], others[0],
                             DUPLICATE_SCORES[1]))
        for o in kept[:inj.repeats]:
            rows.append((padded(o.box, 2), REPEAT_SCORES[0], index[o.label.casefold()],
                         REPEAT_SCORES[1]))
        present = {o.label.casefold() for o in objects}
        absent = [k for c, k in index.items() if c not in present] or list(index.values())
        for n, box in enumerate(_background_boxes(objects, w, h, inj.distractors)):
            rows.append((box, DISTRACTOR_SCORES[0], absent[n % len(absent)],
                         DISTRACTOR_SCORES[1]))
        scores = torch.full((len(rows), c), OTHER_CLASS_SCORE)
        for i, (_, _, k, s) in enumerate(rows):
            scores[i, k] = s
        boxes = torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4)
        box_scores = torch.tensor([r[1] for r in rows], dtype=torch.float32)
        return RawDetections(boxes, box_scores, scores.reshape(len(rows), c))


def _background_boxes(objects: Sequence[TruthBox], w: int, h: int, n: int
                      ) -> list[tuple[float, ...]]:
    """Up to ``n`` boxes of about an eighth of the image that touch no object's box."""
    if n <= 0:
        return []
    bw, bh = max(2, w // 8), max(2, h // 8)
    out: list[tuple[float, ...]] = []
    for y in range(1, h - bh, bh):
        for x in range(1, w - bw, bw):
            cand = (x, y, x + bw, y + bh)
            if all(cand[2] <= o.box[0] - 2 or cand[0] >= o.box[2] + 2 or cand[3] <= o.box[1] - 2
                   or cand[1] >= o.box[3] + 2 for o in objects) and \
                    all(cand[0] >= b[2] or cand[2] <= b[0] or cand[1] >= b[3] or cand[3] <= b[1]
                        for b in out):
                out.append(tuple(float(v) for v in cand))
                if len(out) == n:
                    return out
    return out


def save_ground_truth_detector(folder: str | Path, images: Sequence[SyntheticImage], *,
                               class_names: Mapping[str, str] | None = None,
                               injections: Injections | None = None) -> Path:
    """Write the ground-truth double as a detector folder (``config.json`` and the truth).

    Written under temporary names and moved into place.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    truth = truth_of(images, class_names)
    config = {"model_type": GROUND_TRUTH_TYPE,
              "injections": asdict(injections or Injections())}
    data = {k: [{"label": b.label, "box": list(b.box)} for b in v] for k, v in truth.items()}
    for name, payload in ((TRUTH_FILE, data), ("config.json", config)):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".incomplete", dir=out)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(tmp, out / name)
    return out


def load_ground_truth(folder: Path) -> GroundTruthModel:
    """The double saved by :func:`save_ground_truth_detector`.

    Raises:
        DetectorCheckpointError: the truth file is missing or unreadable.
    """
    where = str(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        raw = json.loads((folder / TRUTH_FILE).read_text(encoding="utf-8"))
        truth = {str(k): [TruthBox(str(b["label"]), (int(b["box"][0]), int(b["box"][1]),
                                                     int(b["box"][2]), int(b["box"][3])))
                          for b in v] for k, v in raw.items()}
        injections = Injections(**config.get("injections", {}))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise DetectorCheckpointError(f"ground-truth detector folder {where!r} has no usable "
                                      f"{TRUTH_FILE} ({type(exc).__name__}: {exc})",
                                      path=where) from None
    return GroundTruthModel(truth, injections)
