"""The one COCO instance-segmentation writer: streamed, atomic, one image per file.

:class:`CocoWriter` writes ``images`` as they are added and spools ``annotations`` to a side
file, so memory stays flat however large the set; :meth:`CocoWriter.close` joins both into the
final file under a temporary name and renames it into place (readers never see half a file).
Image ids come from one map, filled as images are added: the same file added twice is one image,
and an annotation names its image by the same key, so it can never point at another image.

Image records carry ``file_name`` (a usable name: the CDF file name, else the external id, else
the id) and ``cdf_file``, the CDF reference (``{"id": ...}``, ``{"externalId": ...}`` or
``{"instanceId": {...}}``), to map ground truth onto our image ids; the labeler adds ``sha256``,
the digest of the image bytes the masks were made on.

:func:`read_labels` reads such a file back (exports, review) and checks it is one of ours, so a
COCO file from elsewhere is refused with one line saying why rather than half exported.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import cogseg_ml.strict_json as strict_json
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.errors import ValidationError
from cogseg_ml.mask_codec import (
    Rle,
    area,
    bbox_of,
    decode,
    mask_to_rings,
    polygons_to_rle,
    run_lengths,
)
from cogseg_ml.outputs.owned_files import check_replaceable
from cogseg_ml.prompts import FileRef
from cogseg_ml.version import __version__

__all__ = ["CocoWriter", "LABELS_DESCRIPTION", "export_cache", "file_json", "read_labels",
           "segmentation_rle"]

#: ``info.description`` of the labels files the labeler writes (others start with "cogseg_ml").
LABELS_DESCRIPTION = "cogseg_ml labels"

SegmentationFormat = Literal["rle", "polygon"]


def file_json(ref: FileRef) -> dict[str, Any]:
    """The CDF reference of a file as COCO's ``cdf_file`` field (and our manifest) hold it."""
    if ref.id is not None:
        return {"id": ref.id}
    if ref.external_id is not None:
        return {"externalId": ref.external_id}
    assert ref.instance_id is not None
    return {"instanceId": {"space": ref.instance_id.space,
                           "externalId": ref.instance_id.external_id}}


class CocoWriter:
    """Stream a COCO instance-segmentation file to ``path``.

    Args:
        path: the output file (written atomically on :meth:`close`).
        categories: ``[{"id": ..., "name": ...}, ...]``.
        segmentation: ``"rle"`` (compressed RLE) or ``"polygon"`` (one ring per part along
            pixel corners, each hole joined to its part by a zero-width cut, see
            :func:`~cogseg_ml.mask_codec.mask_to_rings`). Both are exact: pycocotools'
            rasterisation of either gives back the mask, holes and every part included.
        description: the ``info.description`` text.

    Use as a context manager: on an exception nothing is written and the temporary files go.

    Only a file cogseg wrote is replaced (:mod:`cogseg_ml.outputs.owned_files`): ``path`` is checked
    when the writer starts and again just before the finished file is moved there; a user's
    file, another tool's COCO file, an empty file, a folder or a link is left as it was.

    Raises:
        ForeignOutputError: (a ``ValidationError``) ``path`` holds something cogseg did not
            write; raised by the constructor, or by :meth:`close` when it was put there while
            the file was being written (then nothing is written).
    """

    def __init__(self, path: str | Path, categories: list[dict[str, Any]], *,
                 segmentation: SegmentationFormat = "rle",
                 description: str = LABELS_DESCRIPTION) -> None:
        if segmentation not in ("rle", "polygon"):
            raise ValidationError(f"segmentation must be 'rle' or 'polygon', got "
                                  f"{segmentation!r}")
        self.path = Path(path)
        self.segmentation = segmentation
        self.category_ids = {int(c["id"]) for c in categories}
        self._image_ids: dict[str, int] = {}
        self._taken: set[int] = set()
        self._top_id = 0
        self._ann_ids: set[int] = set()
        self._top_ann_id = 0
        self.annotations = 0
        check_replaceable(self.path, "path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".incomplete",
                                    dir=self.path.parent)
        self._tmp = Path(name)
        self._out = os.fdopen(fd, "w", encoding="utf-8")
        self._anns = tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.path.parent)
        self._out.write('{"info":' + strict_json.dumps({"description": description,
                                                  "version": __version__}))
        self._out.write(',"categories":' + strict_json.dumps(categories))
        self._out.write(',"images":[')

    def __enter__(self) -> CocoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def images(self) -> int:
        """Images written so far."""
        return len(self._image_ids)

    def image_id(self, key: str) -> int | None:
        """The id of the image added under ``key``, if any."""
        return self._image_ids.get(key)

    def add_image(self, key: str, *, file_name: str, height: int, width: int,
                  image_id: int | None = None, **extra: Any) -> int:
        """Add an image once per ``key`` (e.g. the file's identity); returns its id.

        ``image_id``: the id to write (e.g. the input COCO file's, see
        :func:`~cogseg_ml.samples.image_ids`); by default the next after the largest so far.

        Raises:
            ValidationError: ``image_id`` is already taken by another image.
        """
        found = self._image_ids.get(key)
        if found is not None:
            return found
        if image_id is None:
            image_id = self._top_id + 1
        elif image_id in self._taken:
            raise ValidationError(f"image id {image_id} is given to two files (the second is "
                                  f"{file_name!r}): image ids must be unique")
        first = not self._image_ids
        self._image_ids[key] = image_id
        self._taken.add(image_id)
        self._top_id = max(self._top_id, image_id)
        self._out.write(("" if first else ",") + strict_json.dumps(
            {"id": image_id, "file_name": file_name, "height": height, "width": width,
             **extra}))
        return image_id

    def add_annotation(self, image_key: str, category_id: int, rle: Rle, score: float,
                       *, annotation_id: int | None = None, **extra: Any) -> int | None:
        """Add one mask to the image added under ``image_key``; ``None`` if it is empty.

        ``annotation_id``: the id to write (e.g. the input file's, so that review decisions
        keep naming the same masks); by default the next after the largest so far.

        Raises:
            ValidationError: no such image or category, or ``annotation_id`` is taken.
        """
        image_id = self._image_ids.get(image_key)
        if image_id is None:
            raise ValidationError(f"no image was added under {image_key!r}")
        if category_id not in self.category_ids:
            raise ValidationError(f"category id {category_id} is not among the categories")
        if annotation_id is not None and annotation_id in self._ann_ids:
            raise ValidationError(f"annotation id {annotation_id} is given twice: annotation "
                                  "ids must be unique")
        a = int(area([rle])[0])
        if a == 0:
            return None
        geom: Any = rle
        if self.segmentation == "polygon":
            geom = [[float(c) for xy in ring for c in xy]
                    for ring in mask_to_rings(decode([rle])[0])]
        ann_id = self._top_ann_id + 1 if annotation_id is None else int(annotation_id)
        self._ann_ids.add(ann_id)
        self._top_ann_id = max(self._top_ann_id, ann_id)
        self.annotations += 1
        self._anns.write(("," if self.annotations > 1 else "") + strict_json.dumps({
            "id": ann_id, "image_id": image_id, "category_id": category_id,
            "segmentation": geom, "area": a, "bbox": [float(v) for v in bbox_of([rle])[0]],
            "iscrowd": 0, "score": float(score), **extra}))
        return ann_id

    def close(self) -> None:
        """Finish the file and move it into place.

        Raises:
            ForeignOutputError: something cogseg did not write was put at ``path`` meanwhile:
                it is kept, and the finished file is dropped.
        """
        if self._out.closed:
            return
        try:
            self._out.write('],"annotations":[')
            self._anns.seek(0)
            while block := self._anns.read(1 << 20):
                self._out.write(block)
            self._out.write("]}")
            self._out.close()
            check_replaceable(self.path, "path")  # saved there while this file was written?
            os.replace(self._tmp, self.path)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop what was written (the output file is left as it was)."""
        if not self._out.closed:
            self._out.close()
        self._anns.close()
        self._tmp.unlink(missing_ok=True)


def _name_from_file_key(file_key: str) -> tuple[str, dict[str, Any] | None]:
    """A file name and CDF reference from a cache file key (``[origin, project, file]@v``)."""
    try:
        ident = json.loads(file_key.rsplit("@", 1)[0])
        ref = ident[2]
    except (ValueError, IndexError, TypeError):
        return file_key, None
    if not isinstance(ref, dict):
        return file_key, None
    if "externalId" in ref:
        return str(ref["externalId"]), ref
    if "id" in ref:
        return str(ref["id"]), ref
    if "instanceId" in ref and isinstance(ref["instanceId"], list):
        space, xid = ref["instanceId"]
        return f"{space}/{xid}", {"instanceId": {"space": space, "externalId": xid}}
    return file_key, ref


def export_cache(cache: MaskCache, path: str | Path, category: str = "object", *,
                 segmentation: SegmentationFormat = "rle") -> int:
    """Every cache entry's best segment as a COCO file (``cogseg cache export``).

    One image per cached file version, one annotation per entry with a non-empty best segment.
    Returns the number of annotations.

    Raises:
        ForeignOutputError: ``path`` holds something cogseg did not write (see
            :class:`CocoWriter`); it is left as it was.
    """
    with CocoWriter(path, [{"id": 1, "name": category}], segmentation=segmentation,
                    description="cogseg_ml cache export") as out:
        for file_key, _prompt, _key, res in cache.iter_entries():
            name, ref = _name_from_file_key(file_key)
            extra: dict[str, Any] = {"cdf_file": ref} if ref is not None else {}
            out.add_image(file_key, file_name=name, height=res.height, width=res.width, **extra)
            best = res.best
            if best is not None:
                out.add_annotation(file_key, 1, best.rle, best.score, source=res.backend)
    return out.annotations


# --- reading our labels files back --------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_ref(ref: Any) -> bool:
    """A ``cdf_file`` as :func:`file_json` writes it."""
    if not isinstance(ref, Mapping) or len(ref) != 1:
        return False
    if "id" in ref:
        return _is_int(ref["id"]) and ref["id"] > 0
    if "externalId" in ref:
        return isinstance(ref["externalId"], str) and bool(ref["externalId"])
    inst = ref.get("instanceId")
    return (isinstance(inst, Mapping) and isinstance(inst.get("space"), str)
            and isinstance(inst.get("externalId"), str))


def _check_segmentation(seg: Any, height: int, width: int) -> str | None:
    """Why ``seg`` is not a COCO segmentation of a ``height`` x ``width`` image, or ``None``."""
    if isinstance(seg, Mapping):
        size = seg.get("size")
        if not (isinstance(size, Sequence) and len(size) == 2 and all(map(_is_int, size))):
            return "its RLE has no [height, width] size"
        if list(size) != [height, width]:
            return f"its RLE is {size[0]}x{size[1]} but its image is {height}x{width}"
        counts = seg.get("counts")
        if not isinstance(counts, str | list):
            return "its RLE has no counts"
        return _check_runs(counts, height, width)
    if isinstance(seg, list) and seg:
        for poly in seg:
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                    and all(map(_is_number, poly))):
                return "its polygon is not a flat list of at least three x, y pairs"
        return None
    return "its segmentation is neither an RLE object nor a list of polygons"


def _check_runs(counts: str | list[Any], height: int, width: int) -> str | None:
    """Why RLE ``counts`` do not cover a ``height`` x ``width`` mask exactly, or ``None``
    (a decoder fed such counts would write outside the mask)."""
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts):
            return "its RLE counts are not whole numbers >= 0"
        total = sum(counts)
    else:
        try:
            runs = run_lengths(counts)
        except (ValidationError, UnicodeEncodeError):
            return "its RLE counts are corrupt (not COCO's compressed alphabet)"
        if runs.size and int(runs.min()) < 0:
            return "its RLE counts are corrupt (a negative run)"
        total = int(runs.sum())
    if total != height * width:
        return (f"its RLE counts are corrupt: the runs add up to {total} pixels, not "
                f"{height}x{width} = {height * width}")
    return None


def read_labels(path: str | Path) -> dict[str, Any]:
    """Read a COCO labels file cogseg_ml wrote (``cogseg label``, ``to_coco``, an export) and
    check it can be exported or reviewed.

    Ours: ``info.description`` starts with ``cogseg_ml``; every image has a positive ``height``
    and ``width``, a ``file_name`` and a ``cdf_file`` reference (where its bytes come from; a
    ``sha256`` when the labeler wrote it); every annotation names a listed image and category,
    with an RLE of its image's size or polygons; ids are unique; category names too.

    Returns:
        The COCO dict as read (``images``, ``annotations``, ``categories``, ``info``).

    Raises:
        ValidationError: the file cannot be read, is not JSON, not COCO, not ours, or an item
            is malformed; the message names the file, the item and what to fix.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ValidationError(f"{p}: no such labels file; check the path") from None
    except IsADirectoryError:
        raise ValidationError(f"{p} is a folder; give the labels JSON file inside it") from None
    except OSError as exc:
        raise ValidationError(f"{p} cannot be read ({exc.strerror or exc})") from None
    try:
        coco = strict_json.loads(raw, str(p))
    except ValidationError as exc:
        raise ValidationError(f"{exc}; give the COCO file `cogseg label` wrote",
                              path=str(p)) from None
    not_ours = (f"{p} is not a cogseg_ml labels file: {{why}}; export and review read the COCO "
                "files `cogseg label` writes (label the images with it first)")
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in
                                             ("images", "annotations", "categories")):
        raise ValidationError(not_ours.format(why="it has no images, annotations and "
                                                  "categories lists (not COCO)"))
    info = coco.get("info")
    desc = info.get("description") if isinstance(info, dict) else None
    if not (isinstance(desc, str) and desc.startswith("cogseg_ml")):
        why = (f"info.description is {desc!r}" if isinstance(desc, str)
               else "it has no info.description")
        raise ValidationError(not_ours.format(why=why + ", not one of ours"))

    def bad(kind: str, i: int, item: Any, why: str) -> ValidationError:
        ident = f" (id {item.get('id')!r})" if isinstance(item, dict) and "id" in item else ""
        return ValidationError(f"{p}: {kind}[{i}]{ident} {why}")

    cats: dict[int, str] = {}
    for i, c in enumerate(coco["categories"]):
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)
                and c["name"]):
            raise bad("categories", i, c, "needs an integer id and a non-empty name")
        if c["id"] in cats:
            raise bad("categories", i, c, "repeats an id")
        if c["name"] in cats.values():
            raise bad("categories", i, c, f"repeats the name {c['name']!r}: names must be "
                      "unique")
        cats[int(c["id"])] = c["name"]
    sizes: dict[int, tuple[int, int]] = {}
    for i, im in enumerate(coco["images"]):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise bad("images", i, im, "needs an integer id")
        if im["id"] in sizes:
            raise bad("images", i, im, "repeats an image id")
        h, w = im.get("height"), im.get("width")
        if not (isinstance(h, int) and isinstance(w, int) and not isinstance(h, bool)
                and not isinstance(w, bool) and h > 0 and w > 0):
            raise bad("images", i, im, "needs positive integer height and width")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise bad("images", i, im, "has no file_name")
        if not _check_ref(im.get("cdf_file")):
            raise bad("images", i, im, "has no cdf_file reference ({\"id\": ...}, "
                      "{\"externalId\": ...} or {\"instanceId\": {...}}): not one of ours, or "
                      "edited by hand")
        sha = im.get("sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise bad("images", i, im, "has a sha256 that is not 64 lowercase hex digits")
        sizes[int(im["id"])] = (h, w)
    seen: set[int] = set()
    for i, a in enumerate(coco["annotations"]):
        if not isinstance(a, dict) or not _is_int(a.get("id")):
            raise bad("annotations", i, a, "needs an integer id")
        if a["id"] in seen:
            raise bad("annotations", i, a, "repeats an annotation id")
        seen.add(int(a["id"]))
        size = sizes.get(a.get("image_id"))  # type: ignore[arg-type]
        if size is None:
            raise bad("annotations", i, a, f"names image {a.get('image_id')!r}, which is not "
                      "among the images")
        if a.get("category_id") not in cats:
            raise bad("annotations", i, a, f"names category {a.get('category_id')!r}, which "
                      "is not among the categories")
        if "score" in a and not _is_number(a["score"]):
            raise bad("annotations", i, a, "has a score that is not a number")
        problem = _check_segmentation(a.get("segmentation"), *size)
        if problem is not None:
            raise bad("annotations", i, a, problem)
    return coco


def segmentation_rle(segmentation: Rle | list[list[float]] | Mapping[str, Any], height: int,
                     width: int) -> Rle:
    """An annotation's mask as a compressed RLE, from its RLE or its pixel polygons (union)."""
    if isinstance(segmentation, Mapping):
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed: let the codec compress it
            from cogseg_ml.mask_codec import encode

            return encode(decode([{"size": [height, width], "counts": counts}]))[0]  # type: ignore[typeddict-item]
        return {"size": [int(height), int(width)], "counts": str(counts)}
    polys = [list(zip(p[0::2], p[1::2], strict=True)) for p in segmentation]
    return polygons_to_rle(polys, height, width, normalized=False)
