"""Which images to label: CDF files listed by filter, kept when the segment endpoint takes them.

:func:`samples_from_files` lists files through ``POST /files/list`` (data set, directory
prefix, MIME type, labels, metadata, upload state, any filter field of the reference),
following the cursor (and the partitions, when asked), or, for data-modeling projects, the
``cdf_cdm:CogniteFile/v1`` nodes of a space through ``POST /models/instances/list``
(referenced by instance id). It keeps the files the segment endpoint accepts (a ``.jpg``,
``.jpeg`` or ``.png`` name, MIME type ``image/jpeg`` or ``image/png``, content uploaded
[ref 1.1]) and counts the others by reason. The listing feeds
:func:`~cogseg_ml.samples.from_text.samples_from_text`.

:func:`read_file_refs` reads a file of references (one a line) for the same purpose.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import cogseg_ml.strict_json as strict_json
from cogseg_ml.api.client import COGNITE_FILE_VIEW, SegmentationClient
from cogseg_ml.api.file_checks import SEGMENTABLE_EXTENSIONS, SEGMENTABLE_MIME_TYPES
from cogseg_ml.api.wire_schema import FileFilter, NodeItem
from cogseg_ml.config import CdfConfig
from cogseg_ml.errors import ApiError, AuthenticationError, NotFoundError, ValidationError
from cogseg_ml.prompts import FileRef, InstanceId

__all__ = ["FILTER_FIELDS", "FileListing", "read_file_refs", "samples_from_files"]

#: The ``files/list`` filter fields of the reference, camelCase [ref 2.3].
FILTER_FIELDS = tuple(sorted(f.alias or n for n, f in FileFilter.model_fields.items()))
#: Filter fields that have a CogniteFile node property to match (``space=...`` listings).
NODE_FILTERS = ("directoryPrefix", "externalIdPrefix", "mimeType", "name", "uploaded")
NOT_UPLOADED = "not uploaded (no content yet)"
BAD_MIME = "mimeType not image/jpeg or image/png"
BAD_NAME = "name not ending in .jpg, .jpeg or .png"
_EXAMPLES = 5


def _problems(name: str | None, mime: str | None, uploaded: bool | None) -> list[str]:
    out = []
    if not uploaded:
        out.append(NOT_UPLOADED)
    if mime not in SEGMENTABLE_MIME_TYPES:
        out.append(BAD_MIME)
    if not (name or "").lower().endswith(SEGMENTABLE_EXTENSIONS):
        out.append(BAD_NAME)
    return out


class FileListing(list[FileRef]):
    """The files a listing kept, in the order CDF listed them, and what it skipped and why.

    Attributes:
        listed: files (or nodes) CDF listed.
        skipped: ``{reason: count}`` of the files left out (a file with several problems is
            counted once, under all of them joined by ``"; "``).
        examples: up to five file descriptions per reason.
        names: the listed file names, by reference.
        config: the CDF connection the listing came from (so
            :func:`~cogseg_ml.samples.from_text.samples_from_text` can read the images).
        source: ``"files/list"`` or ``"models/instances/list"``.
    """

    def __init__(self, files: Iterable[FileRef] = (), *, config: CdfConfig | None = None,
                 source: str = "files/list") -> None:
        super().__init__(files)
        self.listed = 0
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.names: dict[FileRef, str] = {}
        self.config = config
        self.source = source

    @property
    def skipped_total(self) -> int:
        """Files left out."""
        return sum(self.skipped.values())

    def _add(self, ref: FileRef, name: str | None, mime: str | None,
             uploaded: bool | None) -> None:
        self.listed += 1
        problems = _problems(name, mime, uploaded)
        if name:
            self.names[ref] = name
        if not problems:
            self.append(ref)
            return
        reason = "; ".join(problems)
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < _EXAMPLES:
            ex.append(f"{ref.describe()} ({name!r}, mimeType {mime!r})")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the counts."""
        return {"source": self.source, "listed": self.listed, "kept": len(self),
                "skipped": dict(self.skipped), "examples": self.examples}

    def summary(self) -> str:
        """One line a person can read (plus one per skip reason)."""
        lines = [f"{self.source}: {self.listed} files listed, {len(self)} JPEG/PNG images "
                 f"kept, {self.skipped_total} skipped"]
        for reason, n in self.skipped.most_common():
            lines.append(f"  skipped {n}: {reason} (e.g. {self.examples[reason][0]})")
        return "\n".join(lines)


def _checked_filter(flt: Mapping[str, Any] | None) -> dict[str, Any]:
    if flt is None:
        return {}
    if not isinstance(flt, Mapping):
        raise ValidationError(f"the files filter must be a JSON object of filter fields, got "
                              f"{type(flt).__name__}")
    for key in flt:
        if key not in FILTER_FIELDS:
            close = difflib.get_close_matches(str(key), FILTER_FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValidationError(f"{key!r} is not a files/list filter field (they are "
                                  f"{', '.join(FILTER_FIELDS)}){hint}")
    return dict(flt)


def _refused(exc: ApiError, what: str, flt: Mapping[str, Any] | None) -> ValidationError:
    shown = json.dumps(flt, sort_keys=True) if flt else "(none)"
    return ValidationError(f"CDF refused the {what} filter {shown}: {exc.message}",
                           status_code=exc.status_code, request_id=exc.request_id)


def _node_filter(space: str, flt: Mapping[str, Any], extra: Mapping[str, Any] | None
                 ) -> dict[str, Any]:
    """The data-modeling filter for the nodes of ``space`` matching the file filter fields
    that have a CogniteFile property."""
    view = f"{COGNITE_FILE_VIEW[1]}/{COGNITE_FILE_VIEW[2]}"

    def prop(name: str) -> list[str]:
        return [COGNITE_FILE_VIEW[0], view, name]

    parts: list[dict[str, Any]] = [{"equals": {"property": ["node", "space"], "value": space}}]
    for key, value in flt.items():
        if key == "directoryPrefix":
            parts.append({"prefix": {"property": prop("directory"), "value": value}})
        elif key == "externalIdPrefix":
            parts.append({"prefix": {"property": ["node", "externalId"], "value": value}})
        elif key in ("mimeType", "name"):
            parts.append({"equals": {"property": prop(key), "value": value}})
        elif key == "uploaded":
            parts.append({"equals": {"property": prop("isUploaded"), "value": value}})
        else:
            raise ValidationError(
                f"filter field {key!r} has no CogniteFile property to match when listing the "
                f"nodes of a space; use {', '.join(NODE_FILTERS)}, or give a data-modeling "
                "filter as instance_filter=")
    if extra:
        if not isinstance(extra, Mapping):
            raise ValidationError("instance_filter must be a data-modeling filter object, e.g. "
                                  '{"prefix": {"property": ["node", "externalId"], '
                                  '"value": "cam-"}}')
        parts.append(dict(extra))
    return parts[0] if len(parts) == 1 else {"and": parts}


def _node_file(node: NodeItem) -> tuple[FileRef, str | None, str | None, bool | None]:
    view = f"{COGNITE_FILE_VIEW[1]}/{COGNITE_FILE_VIEW[2]}"
    props = node.properties.get(COGNITE_FILE_VIEW[0], {}).get(view, {})
    ref = FileRef(instance_id=InstanceId(node.space, node.external_id))
    name, mime, up = props.get("name"), props.get("mimeType"), props.get("isUploaded")
    return (ref, name if isinstance(name, str) else None, mime if isinstance(mime, str) else None,
            up if isinstance(up, bool) else None)


def samples_from_files(client: SegmentationClient, filter: Mapping[str, Any] | None = None, *,
                       space: str | None = None, instance_filter: Mapping[str, Any] | None = None,
                       partitions: int | None = None, page_size: int = 1000,
                       max_files: int | None = None) -> FileListing:
    """The segmentable files among those a filter lists, and what was skipped and why.

    Args:
        client: a connected client.
        filter: CDF's ``files/list`` filter, camelCase as on the wire, e.g. ``{"dataSetIds":
            [{"externalId": "inspections"}], "directoryPrefix": "/site-a/", "mimeType":
            "image/jpeg", "labels": {"containsAny": [{"externalId": "valve-survey"}]},
            "metadata": {"camera": "drone"}, "uploaded": True}``; ``None``: every file.
        space: list the ``cdf_cdm:CogniteFile/v1`` nodes of this space instead, through the
            Instances API (data-modeling projects); files are then referenced by instance id.
            ``filter`` may then use ``directoryPrefix``, ``externalIdPrefix`` (of the node),
            ``mimeType``, ``name`` and ``uploaded``.
        instance_filter: with ``space``, a data-modeling filter ANDed to the rest.
        partitions: read ``files/list`` in this many partitions (1..10) at once; files then
            come in no particular order (not with ``space``).
        page_size: items asked for per page (1..1000).
        max_files: stop once this many files were kept.

    Returns:
        The kept files (:class:`FileListing`, a list of :class:`~cogseg_ml.prompts.FileRef`)
        with the counts of what was skipped.

    Raises:
        ValidationError: a filter field that is not CDF's (naming it, with the closest one), a
            field with no node property under ``space``, bad ``partitions`` or ``page_size``
            (all before any request); or CDF refused the filter (its 400 message, as
            :class:`~cogseg_ml.errors.ValidationError` with ``status_code``).
        ApiUnavailableError, AuthenticationError: CDF cannot be reached or refused the
            credentials.
    """
    flt = _checked_filter(filter)
    if max_files is not None and (isinstance(max_files, bool) or not isinstance(max_files, int)
                                  or max_files < 1):
        raise ValidationError(f"max_files must be a positive integer, got {max_files!r}")
    if space is not None:
        if not isinstance(space, str) or not space:
            raise ValidationError(f"space must be a non-empty string, got {space!r}")
        if partitions is not None:
            raise ValidationError("partitions split files/list; the Instances API listing of "
                                  "a space reads one cursor")
        node_flt = _node_filter(space, flt, instance_filter)
        listing = FileListing(config=client.config, source="models/instances/list")
        nodes = client.list_nodes(node_flt, limit=page_size)
        return _collect(listing, (_node_file(n) for n in nodes), max_files, "instances list",
                        node_flt)
    if instance_filter is not None:
        raise ValidationError("instance_filter goes with space= (the Instances API listing)")
    listing = FileListing(config=client.config, source="files/list")
    metas = client.list_files(flt or None, limit=page_size, partitions=partitions)
    files = ((FileRef(id=m.id), m.name, m.mime_type, m.uploaded) for m in metas)
    return _collect(listing, files, max_files, "files/list", flt)


def _collect(listing: FileListing,
             files: Iterator[tuple[FileRef, str | None, str | None, bool | None]],
             max_files: int | None, what: str, flt: Mapping[str, Any]) -> FileListing:
    try:
        for ref, name, mime, uploaded in files:
            listing._add(ref, name, mime, uploaded)
            if max_files is not None and len(listing) >= max_files:
                break
    except (AuthenticationError, NotFoundError):
        raise
    except ApiError as exc:
        if exc.status_code is not None and 400 <= exc.status_code < 500:
            raise _refused(exc, what, flt) from None
        raise
    finally:
        close = getattr(files, "close", None)
        if close is not None:
            close()
    return listing


def read_file_refs(path: str | Path) -> list[FileRef]:
    """File references from a text file, one a line: a number is an internal id, a JSON
    object a reference (``{"externalId": ...}``, ``{"instanceId": {"space", "externalId"}}``),
    anything else an external id; blank lines and lines starting with ``#`` are skipped.

    Raises:
        ValidationError: the file cannot be read, holds no reference, or a line is not one
            (naming the line).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValidationError(f"{p}: no such file; check the path") from None
    except IsADirectoryError:
        raise ValidationError(f"{p} is a folder; give the file of file ids") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{p} cannot be read as UTF-8 text ({exc})") from None
    refs: list[FileRef] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("{"):
                refs.append(FileRef.parse(strict_json.loads(line, f"{p} line {n}")))
            elif line.isdigit():
                refs.append(FileRef(id=int(line)))
            else:
                refs.append(FileRef(external_id=line))
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"{p} line {n}: {line!r} is not a file reference "
                                  f"(an id, an external id or a JSON reference): {exc}") from None
    if not refs:
        raise ValidationError(f"{p} holds no file reference (one id or external id a line)")
    return list(dict.fromkeys(refs))
