"""The COCO file of a labelling run from class names: each label names its detector and its
segmenter.

Samples from :func:`~cogseg_ml.text_samples.samples_from_text` are labelled by the ordinary
:class:`~cogseg_ml.labeler.SegmentationLabeler`; :func:`write_coco` then writes what
:meth:`~cogseg_ml.labeler.SegmentationLabeler.to_coco` writes (one image per file, the masks,
``bbox`` recomputed from each mask by the COCO writer, never the detector's box) and adds, per
annotation:

* ``source``: the segmenting backend's name (as ``to_coco`` writes it), and ``segmenter``:
  ``"name:model_version"`` of whoever answered;
* ``detector``: the detector's identity (weights and settings), ``detector_score``,
  ``class_score`` and ``detector_bbox`` (the detector's own ``[x, y, w, h]`` box, kept for
  audits).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from cogseg_ml.coco_io import CocoWriter
from cogseg_ml.errors import ValidationError
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import FileRef
from cogseg_ml.samples import Sample

__all__ = ["write_coco"]


def write_coco(labeler: SegmentationLabeler, samples: list[Sample], path: str | Path, *,
               segmentation: Literal["rle", "polygon"] = "rle") -> int:
    """Write the labelled samples as COCO with detector and segmenter provenance.

    Args:
        labeler: the labeler that ran ``label(samples)``.
        samples: the samples it labelled (from ``samples_from_text``).
        path: the COCO file (written atomically).
        segmentation: ``"rle"`` or ``"polygon"``, as ``to_coco``.

    Returns:
        The number of annotations written.

    Raises:
        ValidationError: nothing was labelled yet.
    """
    table = labeler.category_table
    if table is None:
        raise ValidationError("nothing labelled yet: call labeler.label(samples) first")
    by_file: dict[FileRef, Mapping[str, Any]] = {s.file: s.meta for s in samples}
    versions = dict(labeler.backend.identities())
    lines = labeler.image_lines()
    with CocoWriter(path, table.as_coco(), segmentation=segmentation,
                    description="cogseg_ml labels from class names") as out:
        for line in lines:
            out.add_image(line["file_key"], file_name=line["file_name"], height=line["height"],
                          width=line["width"], image_id=line["image_id"],
                          cdf_file=line["file"], sha256=line["digest"])
        for line, inst, seg in labeler.iter_annotations():
            meta = by_file.get(FileRef.parse(line["file"]), {})
            backend = str(inst.get("backend"))
            extra: dict[str, Any] = {"prompt_index": inst["k"], "source": backend,
                                     "segmenter": f"{backend}:{versions.get(backend, '')}"}
            dets = meta.get("detections") or ()
            if inst["k"] < len(dets):
                d = dets[inst["k"]]
                extra.update(detector=meta.get("detector"), detector_score=round(d.score, 6),
                             class_score=round(d.class_score, 6),
                             detector_bbox=[round(v, 2) for v in d.xywh()])
            out.add_annotation(line["file_key"], table.id_of(inst["category"]), seg.rle,
                               seg.score, **extra)
    return out.annotations
