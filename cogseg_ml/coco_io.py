"""The one COCO instance-segmentation writer: streamed, atomic, one image per file.

:class:`CocoWriter` writes ``images`` as they are added and spools ``annotations`` to a side
file, so memory stays flat however large the set; :meth:`CocoWriter.close` joins both into the
final file under a temporary name and renames it into place (readers never see half a file).
Image ids come from one map, filled as images are added: the same file added twice is one image,
and an annotation names its image by the same key, so it can never point at another image.

Image records carry ``file_name`` (a usable name: the CDF file name, else the external id, else
the id) and ``cdf_file``, the CDF reference (``{"id": ...}``, ``{"externalId": ...}`` or
``{"instanceId": {...}}``), to map ground truth onto our image ids.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.errors import ValidationError
from cogseg_ml.mask_codec import Rle, area, bbox_of, decode, mask_to_polygons
from cogseg_ml.prompts import FileRef
from cogseg_ml.version import __version__

__all__ = ["CocoWriter", "export_cache", "file_json"]

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
        segmentation: ``"rle"`` (compressed RLE, exact) or ``"polygon"`` (pixel-corner
            outlines; exact for masks without holes, holes are filled).
        description: the ``info.description`` text.

    Use as a context manager: on an exception nothing is written and the temporary files go.
    """

    def __init__(self, path: str | Path, categories: list[dict[str, Any]], *,
                 segmentation: SegmentationFormat = "rle",
                 description: str = "cogseg_ml labels") -> None:
        if segmentation not in ("rle", "polygon"):
            raise ValidationError(f"segmentation must be 'rle' or 'polygon', got "
                                  f"{segmentation!r}")
        self.path = Path(path)
        self.segmentation = segmentation
        self.category_ids = {int(c["id"]) for c in categories}
        self._image_ids: dict[str, int] = {}
        self._taken: set[int] = set()
        self._top_id = 0
        self.annotations = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".incomplete",
                                    dir=self.path.parent)
        self._tmp = Path(name)
        self._out = os.fdopen(fd, "w", encoding="utf-8")
        self._anns = tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.path.parent)
        self._out.write('{"info":' + json.dumps({"description": description,
                                                  "version": __version__}))
        self._out.write(',"categories":' + json.dumps(categories))
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
        self._out.write(("" if first else ",") + json.dumps(
            {"id": image_id, "file_name": file_name, "height": height, "width": width,
             **extra}))
        return image_id

    def add_annotation(self, image_key: str, category_id: int, rle: Rle, score: float,
                       **extra: Any) -> int | None:
        """Add one mask to the image added under ``image_key``; ``None`` if it is empty."""
        image_id = self._image_ids.get(image_key)
        if image_id is None:
            raise ValidationError(f"no image was added under {image_key!r}")
        if category_id not in self.category_ids:
            raise ValidationError(f"category id {category_id} is not among the categories")
        a = int(area([rle])[0])
        if a == 0:
            return None
        geom: Any = rle
        if self.segmentation == "polygon":
            geom = [[float(c) for xy in poly for c in xy]
                    for poly in mask_to_polygons(decode([rle])[0])]
        self.annotations += 1
        self._anns.write(("," if self.annotations > 1 else "") + json.dumps({
            "id": self.annotations, "image_id": image_id, "category_id": category_id,
            "segmentation": geom, "area": a, "bbox": [float(v) for v in bbox_of([rle])[0]],
            "iscrowd": 0, "score": float(score), **extra}))
        return self.annotations

    def close(self) -> None:
        """Finish the file and move it into place."""
        if self._out.closed:
            return
        try:
            self._out.write('],"annotations":[')
            self._anns.seek(0)
            while block := self._anns.read(1 << 20):
                self._out.write(block)
            self._out.write("]}")
            self._out.close()
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
