"""Exports of a labels file to the formats trainers and labelling tools read.

:func:`export_labels` (``cogseg export LABELS.json --to FORMAT --out DIR``) reads the COCO file
a labelling run wrote (checked to be ours), keeps only the accepted masks when given a review
decisions file, gets each image's bytes (the mask cache's image store first, else CDF), and
writes one self-contained folder:

* ``coco``: ``annotations.json`` (RLE or polygons that keep holes) and ``images/``
  (:mod:`cogseg_ml.exports.coco`);
* ``yolo``: the Ultralytics segmentation layout, ``data.yaml``, ``images/train``,
  ``labels/train`` (:mod:`cogseg_ml.exports.yolo`);
* ``labelstudio``: ``tasks.json`` with the masks as predictions (pre-annotations), its
  ``label_config.xml`` and ``images/`` (:mod:`cogseg_ml.exports.labelstudio`).

The folder follows :mod:`cogseg_ml.exports.folder_writer`: built under a temporary name
beside ``out``
and put in place whole at the end, with a manifest (``cogseg-output.json``); ``out`` must be
missing, empty, or an earlier export's unchanged output (then replaced whole), else it is
refused before any work; a failed or stopped export leaves nothing behind. Every image is
located before the first byte is written, so a missing one is refused up front, by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cogseg_ml.errors import ValidationError
from cogseg_ml.exports.folder_writer import check_out, output_folder
from cogseg_ml.exports.labelled import Labelled, Undecided
from cogseg_ml.exports.report import ExportReport
from cogseg_ml.store.image_fetcher import ImageFetcher

if TYPE_CHECKING:
    from cogseg_ml.cache.mask_cache import MaskCache
    from cogseg_ml.coco_io import SegmentationFormat
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.mask_codec import InsetParts

__all__ = ["FORMATS", "ExportReport", "ExportFormat", "export_labels", "to_coco",
           "to_labelstudio", "to_yolo"]

ExportFormat = Literal["coco", "yolo", "labelstudio"]
FORMATS: tuple[str, ...] = ("coco", "yolo", "labelstudio")


def _run(fmt: str, labels: str | Path, out: str | Path, decisions: str | Path | None,
         undecided: Undecided, cache: str | Path | MaskCache | None, config: CdfConfig | None,
         write: Any) -> ExportReport:
    from cogseg_ml.cache.mask_cache import MaskCache

    inputs = (labels, decisions, cache.path if isinstance(cache, MaskCache) else cache)
    check_out(out, "export", inputs=inputs)  # before reading anything
    labelled = Labelled(labels, decisions, undecided)
    with ImageFetcher(cache, config) as fetcher:
        fetcher.check(labelled.images)
        with output_folder(out, "export", inputs=inputs) as folder:
            report: ExportReport = write(labelled, fetcher, folder)
        report.out = Path(out)
        report.format = fmt
        report.dropped = labelled.dropped
        report.from_cache, report.downloaded = fetcher.from_cache, fetcher.downloaded
    return report


def to_coco(labels: str | Path, out: str | Path, *, segmentation: SegmentationFormat = "rle",
            decisions: str | Path | None = None, undecided: Undecided = "drop",
            cache: str | Path | MaskCache | None = None,
            config: CdfConfig | None = None) -> ExportReport:
    """Export a labels file as a COCO dataset folder (``annotations.json`` and ``images/``).

    Args:
        labels: the COCO file a labelling run wrote (``cogseg label --out``).
        out: the folder to write: missing, empty, or an earlier export's unchanged output
            (replaced whole); see :mod:`cogseg_ml.exports.folder_writer`.
        segmentation: ``"rle"`` (compressed RLE) or ``"polygon"`` (one ring per part, holes
            joined in by zero-width cuts); both rasterise back to the exact mask.
        decisions: a review decisions file saved for ``labels``: only accepted masks are
            written (refused, naming both files, when saved for another labels file).
        undecided: with ``decisions``: ``"drop"`` (default) or ``"keep"`` masks without one.
        cache: the mask cache the labelling run used (its image store has the images);
            ``None``: the default user cache (``COGSEG_CACHE_DIR``).
        config: CDF connection for images not in the cache; ``None``: ``COGNITE_*``
            variables, read only when an image is missing from the cache.

    Returns:
        What was written (see :class:`ExportReport`).

    Raises:
        ValidationError: the labels are not ours or malformed, the decisions belong to
            another labels file, an image is neither cached nor in CDF (or was replaced
            there since labelling), or ``out`` cannot be written: a file, a folder holding
            anything an earlier export did not write (or changed since), an input inside it,
            a write that fails (a full disk). Nothing is written; ``out`` is left as it was.
        ApiUnavailableError: CDF cannot be reached for images not in the cache.
        AuthenticationError: CDF refused the credentials.
    """
    from cogseg_ml.exports.coco import write_coco

    return _run("coco", labels, out, decisions, undecided, cache, config,
                lambda lab, fetch, folder: write_coco(lab, fetch, folder,
                                                      segmentation=segmentation))


def to_yolo(labels: str | Path, out: str | Path, *, val_fraction: float = 0.0,
            parts: InsetParts = "separate", decisions: str | Path | None = None,
            undecided: Undecided = "drop", cache: str | Path | MaskCache | None = None,
            config: CdfConfig | None = None) -> ExportReport:
    """Export a labels file as an Ultralytics YOLO segmentation dataset.

    ``data.yaml`` (``names`` in COCO category id order, 0-based; no absolute ``path``, so the
    folder can be moved), ``images/<split>/`` and ``labels/<split>/*.txt`` with one polygon a
    line, ``class x1 y1 x2 y2 ...`` normalised. Ultralytics and supervision (OpenCV's
    ``fillPoly``) fill each line back to exactly its pixels at the image's size, holes kept
    (see :mod:`cogseg_ml.exports.yolo`).

    Args:
        val_fraction: share of images for ``val`` (a stable hash of each CDF file); 0: no
            split (``val`` names the training images).
        parts: an object in several pieces: ``"separate"`` (default) one line per piece, each
            exact; ``"joined"`` one line per object, its pieces joined by cuts that OpenCV
            paints as lines one pixel wide.
        labels, out, decisions, undecided, cache, config: as for :func:`to_coco`.

    Raises:
        ValidationError, ApiUnavailableError, AuthenticationError: as for :func:`to_coco`.
    """
    from cogseg_ml.exports.yolo import write_yolo

    return _run("yolo", labels, out, decisions, undecided, cache, config,
                lambda lab, fetch, folder: write_yolo(lab, fetch, folder,
                                                      val_fraction=val_fraction, parts=parts))


def to_labelstudio(labels: str | Path, out: str | Path, *, image_prefix: str = "images/",
                   model_version: str | None = None, from_name: str = "label",
                   to_name: str = "image", decisions: str | Path | None = None,
                   undecided: Undecided = "drop", cache: str | Path | MaskCache | None = None,
                   config: CdfConfig | None = None) -> ExportReport:
    """Export a labels file as Label Studio tasks with the masks as predictions.

    ``tasks.json`` (import it into a project with ``label_config.xml`` as its labelling
    config), ``images/``: a reviewer sees every mask as a pre-annotation (``polygonlabels``,
    points in percent, ``original_width``/``original_height``, score, model version).

    Args:
        image_prefix: put before each image's file name in ``data.image``: where Label Studio
            reads the images (a URL, or ``/data/local-files/?d=...`` for local storage).
        model_version: the predictions' model version (default: the backends that made the
            masks, from the labels' ``source``).
        from_name, to_name: the config's ``PolygonLabels`` and ``Image`` tag names.
        labels, out, decisions, undecided, cache, config: as for :func:`to_coco`.

    Raises:
        ValidationError, ApiUnavailableError, AuthenticationError: as for :func:`to_coco`.
    """
    from cogseg_ml.exports.labelstudio import write_labelstudio

    return _run("labelstudio", labels, out, decisions, undecided, cache, config,
                lambda lab, fetch, folder: write_labelstudio(
                    lab, fetch, folder, image_prefix=image_prefix, model_version=model_version,
                    from_name=from_name, to_name=to_name))


_OPTIONS = {"coco": {"segmentation"}, "yolo": {"val_fraction", "parts"},
            "labelstudio": {"image_prefix", "model_version", "from_name", "to_name"}}


def export_labels(labels: str | Path, to: ExportFormat, out: str | Path, *,
                  decisions: str | Path | None = None, undecided: Undecided = "drop",
                  cache: str | Path | MaskCache | None = None, config: CdfConfig | None = None,
                  **options: Any) -> ExportReport:
    """Export a labels file to ``to`` (``"coco"``, ``"yolo"`` or ``"labelstudio"``) in ``out``.

    ``options`` are the format's own: ``segmentation`` (coco, see :func:`to_coco`),
    ``val_fraction``, ``parts`` (yolo, :func:`to_yolo`), ``image_prefix``, ``model_version``,
    ``from_name``, ``to_name`` (labelstudio, :func:`to_labelstudio`). The other arguments
    are the same for every format (see :func:`to_coco`).

    Raises:
        ValidationError: an unknown format or an option of another format, and as for
            :func:`to_coco`.
    """
    if to not in _OPTIONS:
        raise ValidationError(f"unknown export format {to!r}; choose one of "
                              f"{', '.join(FORMATS)}")
    unknown = sorted(set(options) - _OPTIONS[to])
    if unknown:
        takes = ", ".join(sorted(_OPTIONS[to]))
        raise ValidationError(f"{', '.join(unknown)} does not apply to the {to} export (it "
                              f"takes {takes})")
    common: dict[str, Any] = {"decisions": decisions, "undecided": undecided, "cache": cache,
                              "config": config}
    writer: Any = {"coco": to_coco, "yolo": to_yolo, "labelstudio": to_labelstudio}[to]
    report: ExportReport = writer(labels, out, **common, **options)
    return report
