"""The emulator's in-memory world: files, data sets, tokens, download links, annotations, the
request log, and the listings of files (``files/list``) and CogniteFile nodes
(``models/instances/list``) with their filters.

A :class:`FileRecord` is one version of a file's content. Replacing the content
(:meth:`EmulatorState.replace_file`) swaps in a new record under the same id, so whoever holds
the old record (a segmentation job created before the replacement) keeps the bytes it was
created on.

A file with an ``instance_id`` stands for a file created through data modeling: it is also a
``cdf_cdm:CogniteFile/v1`` node of that space [ref 2.4], listed by
:meth:`EmulatorState.list_nodes`. Its node properties are the file's ``name``, ``mimeType``
and ``directory`` (named by the reference), plus ``isUploaded`` and ``uploadedTime`` from
Cognite's core data model (not in the reference; ``uploadedTime`` as an ISO 8601 string, the
form data modeling gives timestamps).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cogseg_ml.api.wire_schema import (
    FileFilter,
    FileIdentifier,
    FileMetadata,
    IdEither,
    InstanceIdWire,
    LabelRef,
    TimeRange,
)
from cogseg_ml.service.job_store import now_ms

__all__ = ["COGNITE_FILE_VIEW", "EmulatorState", "FileRecord", "FilterProblem",
           "RequestLogEntry"]

#: ``(space, externalId, version)`` of the core data model's file view [ref 2.4].
COGNITE_FILE_VIEW = ("cdf_cdm", "CogniteFile", "v1")

MIME_BY_EXTENSION = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}




def _mime_from_name(name: str) -> str:
    ext = name[name.rfind("."):].lower() if "." in name else ""
    return MIME_BY_EXTENSION.get(ext, "application/octet-stream")


@dataclass
class FileRecord:
    """A file the emulator serves, with optional ground truth for tests."""

    id: int
    name: str
    data: bytes
    mime_type: str | None
    external_id: str | None = None
    instance_id: tuple[str, str] | None = None
    created_time: int = 0
    last_updated_time: int = 0
    uploaded_time: int = 0
    ground_truth: list[tuple[str, np.ndarray]] = field(default_factory=list)
    directory: str | None = None
    source: str | None = None
    data_set_id: int | None = None
    labels: tuple[str, ...] = ()
    metadata_fields: dict[str, str] = field(default_factory=dict)
    asset_ids: tuple[int, ...] = ()
    uploaded: bool = True
    _pixels: np.ndarray | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def metadata(self) -> FileMetadata:
        """The Files API view of this file (``uploadedTime`` only once it is uploaded)."""
        inst = (InstanceIdWire(space=self.instance_id[0], external_id=self.instance_id[1])
                if self.instance_id else None)
        return FileMetadata(
            id=self.id, external_id=self.external_id, instance_id=inst, name=self.name,
            directory=self.directory, source=self.source, mime_type=self.mime_type,
            uploaded=self.uploaded, created_time=self.created_time,
            last_updated_time=self.last_updated_time,
            uploaded_time=self.uploaded_time if self.uploaded else None,
            metadata=dict(self.metadata_fields) or None, data_set_id=self.data_set_id,
            asset_ids=list(self.asset_ids) or None,
            labels=[LabelRef(external_id=x) for x in self.labels] or None,
        )

    def node_properties(self) -> dict[str, Any]:
        """The node's ``cdf_cdm:CogniteFile/v1`` properties (see the module docstring)."""
        props: dict[str, Any] = {"name": self.name, "mimeType": self.mime_type,
                                 "directory": self.directory, "isUploaded": self.uploaded}
        if self.uploaded:
            props["uploadedTime"] = _iso(self.uploaded_time)
        return {k: v for k, v in props.items() if v is not None}

    def node(self, with_properties: bool) -> dict[str, Any]:
        """The node as ``models/instances/list`` returns it."""
        assert self.instance_id is not None
        space, xid = COGNITE_FILE_VIEW[0], f"{COGNITE_FILE_VIEW[1]}/{COGNITE_FILE_VIEW[2]}"
        return {"instanceType": "node", "space": self.instance_id[0],
                "externalId": self.instance_id[1], "version": 1,
                "createdTime": self.created_time, "lastUpdatedTime": self.last_updated_time,
                "properties": {space: {xid: self.node_properties()}} if with_properties else {}}

    def pixels(self) -> np.ndarray:
        """The decoded RGB image ``(H, W, 3)`` uint8 (decoded once, then kept)."""
        with self._lock:
            if self._pixels is None:
                from PIL import Image

                with Image.open(io.BytesIO(self.data)) as img:
                    self._pixels = np.asarray(img.convert("RGB"))
            return self._pixels

    def digest(self) -> str:
        """The SHA-256 of the bytes (hex; computed once, then kept)."""
        if self._digest is None:
            self._digest = hashlib.sha256(self.data).hexdigest()
        return self._digest


@dataclass(frozen=True)
class RequestLogEntry:
    """One request the emulator answered (no headers kept: they may hold tokens)."""

    time: float
    method: str
    path: str
    status: int
    request_id: str
    fault: str | None
    duration_s: float
    #: The client's TCP source port (ASGI ``scope["client"]``): which connection it came on.
    client_port: int | None = None


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(
        timespec="milliseconds")


class FilterProblem(ValueError):
    """A listing filter the emulator refuses (answered as a 400 naming the field)."""


class EmulatorState:
    """Files, tokens, links and annotations, guarded by one lock (the server runs in a thread).

    Attributes:
        list_page_cap: at most this many items in one page of a listing, whatever its
            ``limit`` (``None``: the limit). CDF may answer a page with fewer items than asked
            for and still carry a ``nextCursor`` [ref 2.3]; this makes the emulator do so.
    """

    def __init__(self, project: str, *, client_id: str, client_secret: str,
                 token_ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.project = project
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl_s = token_ttl_s
        self.clock = clock
        self.lock = threading.RLock()
        self.files: dict[int, FileRecord] = {}
        self._by_xid: dict[str, int] = {}
        self._by_inst: dict[tuple[str, str], int] = {}
        self._next_file_id = 1_000_001
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self.token_scopes: dict[str, frozenset[int]] = {}  # token -> data sets it reads
        self.links: dict[str, tuple[int, float]] = {}  # link token -> (file id, expiry)
        self.annotations: dict[int, dict[str, Any]] = {}
        self._next_annotation_id = 1
        self.request_log: list[RequestLogEntry] = []
        self.tokens_issued = 0
        self.data_sets: dict[int, str | None] = {}  # data set id -> its external id
        self._next_data_set_id = 7_000_001
        self.list_page_cap: int | None = None

    # --- files -----------------------------------------------------------------------------
    def add_file(self, data: bytes, name: str, *, mime_type: str | None = None,
                 external_id: str | None = None, instance_id: tuple[str, str] | None = None,
                 ground_truth: list[tuple[str, np.ndarray]] | None = None,
                 directory: str | None = None, source: str | None = None,
                 data_set_id: int | None = None, labels: Iterable[str] = (),
                 metadata: Mapping[str, str] | None = None, asset_ids: Iterable[int] = (),
                 uploaded: bool = True) -> FileRecord:
        """Register a file; ``mime_type`` defaults from the name's extension.

        ``directory``, ``source``, ``data_set_id`` (see :meth:`add_data_set`), ``labels``
        (external ids), ``metadata`` and ``asset_ids`` are the File fields list filters match
        [ref 2.1, 2.3]; ``uploaded=False`` is a file without content yet (listed, never
        downloadable). An ``instance_id`` ``(space, externalId)`` makes it a CogniteFile node.
        """
        if mime_type is None:
            mime_type = _mime_from_name(name)
        with self.lock:
            if external_id is not None and external_id in self._by_xid:
                raise ValueError(f"externalId {external_id!r} already exists")
            if instance_id is not None and tuple(instance_id) in self._by_inst:
                raise ValueError(f"instanceId {tuple(instance_id)!r} already exists")
            if data_set_id is not None and data_set_id not in self.data_sets:
                raise ValueError(f"data set {data_set_id} does not exist (add_data_set first)")
            fid = self._next_file_id
            self._next_file_id += 1
            t = now_ms(self.clock)
            rec = FileRecord(id=fid, name=name, data=data, mime_type=mime_type,
                             external_id=external_id,
                             instance_id=None if instance_id is None else
                             (str(instance_id[0]), str(instance_id[1])), created_time=t,
                             last_updated_time=t, uploaded_time=t,
                             ground_truth=list(ground_truth or []), directory=directory,
                             source=source, data_set_id=data_set_id, labels=tuple(labels),
                             metadata_fields=dict(metadata or {}), asset_ids=tuple(asset_ids),
                             uploaded=bool(uploaded))
            self.files[fid] = rec
            if external_id is not None:
                self._by_xid[external_id] = fid
            if rec.instance_id is not None:
                self._by_inst[rec.instance_id] = fid
            return rec

    def add_data_set(self, external_id: str | None = None) -> int:
        """Register a data set; returns its id."""
        with self.lock:
            if external_id is not None and external_id in self.data_sets.values():
                raise ValueError(f"data set externalId {external_id!r} already exists")
            did = self._next_data_set_id
            self._next_data_set_id += 1
            self.data_sets[did] = external_id
            return did

    def replace_file(self, ident: FileIdentifier, data: bytes, *, name: str | None = None,
                     mime_type: str | None = None,
                     ground_truth: list[tuple[str, np.ndarray]] | None = None) -> FileRecord:
        """Replace a file's content, as CDF's upload with overwrite does; returns the new record.

        The id, external id, instance id and ``createdTime`` stay; ``lastUpdatedTime`` and
        ``uploadedTime`` move to now, and always strictly past their previous values (one
        millisecond on when the clock has not moved), so a replacement is visible in
        ``/files/byids``. ``name``/``mime_type`` replace the old ones when given (the MIME type
        follows a new name's extension unless given); ``ground_truth`` is cleared unless given.
        The reference documents the File fields (2.1) but not the upload protocol itself, so
        only this effect of an overwrite is emulated.

        The new record is a new object under the same id: jobs created before keep the old
        record, so they finish on the content they were created on. Download links resolve the
        file id when used, so they serve the new bytes. Raises ``KeyError`` for an unknown file.
        """
        with self.lock:
            old = self.resolve(ident)
            if old is None:
                raise KeyError(f"no file {ident.to_wire()}")
            if mime_type is None:
                mime_type = _mime_from_name(name) if name is not None else old.mime_type
            t = max(now_ms(self.clock), old.last_updated_time + 1, old.uploaded_time + 1)
            rec = dataclasses.replace(
                old, data=data, name=old.name if name is None else name, mime_type=mime_type,
                last_updated_time=t, uploaded_time=t, ground_truth=list(ground_truth or []),
                _pixels=None, _digest=None, _lock=threading.Lock())
            self.files[rec.id] = rec
            return rec

    def resolve(self, ident: FileIdentifier) -> FileRecord | None:
        """The file an identifier names, or ``None``."""
        with self.lock:
            if ident.id is not None:
                return self.files.get(ident.id)
            if ident.external_id is not None:
                fid = self._by_xid.get(ident.external_id)
            else:
                assert ident.instance_id is not None
                fid = self._by_inst.get((ident.instance_id.space, ident.instance_id.external_id))
            return self.files.get(fid) if fid is not None else None

    # --- tokens ----------------------------------------------------------------------------
    def issue_token(self, ttl_s: float | None = None, *,
                    data_set_ids: Iterable[int] | None = None) -> tuple[str, float]:
        """A new bearer token and its lifetime in seconds; with ``data_set_ids`` it reads
        only the files of those data sets (as a group scoped to data sets does)."""
        ttl = self.token_ttl_s if ttl_s is None else ttl_s
        token = "emu-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = self.clock() + ttl
            if data_set_ids is not None:
                self.token_scopes[token] = frozenset(data_set_ids)
            self.tokens_issued += 1
        return token, ttl

    def can_read(self, token: str, rec: FileRecord) -> bool:
        """Whether ``token`` (valid) may read the file: unscoped tokens read every file."""
        with self.lock:
            scope = self.token_scopes.get(token)
        return scope is None or rec.data_set_id in scope

    def token_valid(self, token: str) -> bool:
        """Whether a bearer token is known and unexpired."""
        with self.lock:
            exp = self.tokens.get(token)
            return exp is not None and exp > self.clock()

    def expire_token(self, token: str) -> None:
        """Expire a token now."""
        with self.lock:
            self.tokens.pop(token, None)

    # --- download links ----------------------------------------------------------------------
    def new_link(self, file_id: int, ttl_s: float) -> str:
        """A one-file download token valid for ``ttl_s`` seconds."""
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.links[token] = (file_id, self.clock() + ttl_s)
        return token

    def open_link(self, token: str) -> FileRecord | None:
        """The file behind an unexpired link, or ``None``."""
        with self.lock:
            entry = self.links.get(token)
            if entry is None or entry[1] <= self.clock():
                self.links.pop(token, None)
                return None
            return self.files.get(entry[0])

    # --- annotations -------------------------------------------------------------------------
    def add_annotation(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store an annotation body (wire form) and return it with id and times."""
        with self.lock:
            aid = self._next_annotation_id
            self._next_annotation_id += 1
            t = now_ms(self.clock)
            stored = {**body, "id": aid, "createdTime": t, "lastUpdatedTime": t}
            self.annotations[aid] = stored
            return stored

    def log(self, entry: RequestLogEntry) -> None:
        """Append to the request log."""
        with self.lock:
            self.request_log.append(entry)

    # --- listings ------------------------------------------------------------------------------
    def list_files(self, flt: FileFilter | None, partition: tuple[int, int] | None = None
                   ) -> list[FileRecord]:
        """Files matching a ``files/list`` filter, by id; ``partition`` ``(m, n)`` keeps the
        ones with ``id % n == m - 1`` (how CDF splits files into partitions is not documented;
        any split that covers every file once fits the reference).

        Raises:
            FilterProblem: a filter field the emulator does not model (assets, geoLocation).
        """
        with self.lock:
            files = sorted(self.files.values(), key=lambda r: r.id)
            data_sets = dict(self.data_sets)
        if flt is not None:
            for unmodelled in ("asset_external_ids", "root_asset_ids", "asset_subtree_ids",
                               "geo_location"):
                if getattr(flt, unmodelled) is not None:
                    alias = FileFilter.model_fields[unmodelled].alias or unmodelled
                    raise FilterProblem(f"filter.{alias}: the emulator does not model asset "
                                        "hierarchies or geometry, so it cannot filter on it")
            files = [r for r in files if _file_matches(r, flt, data_sets)]
        if partition is not None:
            m, n = partition
            files = [r for r in files if r.id % n == m - 1]
        return files

    def list_nodes(self, flt: Mapping[str, Any] | None) -> list[FileRecord]:
        """The files that are CogniteFile nodes matching a data-modeling filter, by
        ``(space, externalId)``.

        Filters understood: ``and``, ``or``, ``not``, ``equals``, ``in``, ``prefix``,
        ``exists``, ``range`` (``gt``, ``gte``, ``lt``, ``lte``) on ``["node", "space" |
        "externalId" | "createdTime" | "lastUpdatedTime"]`` and on ``["cdf_cdm",
        "CogniteFile/v1", <property>]``.

        Raises:
            FilterProblem: another filter or property (naming it).
        """
        with self.lock:
            nodes = sorted((r for r in self.files.values() if r.instance_id is not None),
                           key=lambda r: r.instance_id or ("", ""))
        if flt is None:
            return nodes
        return [r for r in nodes if _node_matches(r, flt, "filter")]


def _in_range(value: int | None, rng: TimeRange | None) -> bool:
    if rng is None:
        return True
    if value is None:
        return False
    return (rng.min is None or value >= rng.min) and (rng.max is None or value <= rng.max)


def _data_set_ids(wanted: Sequence[IdEither], data_sets: Mapping[int, str | None]) -> set[int]:
    # The reference leaves open whether an unknown data set in a list filter is a 400 or an
    # empty page [ref 2.3]: the emulator answers an empty page (an unknown one matches nothing).
    by_xid = {x: i for i, x in data_sets.items() if x is not None}
    out = set()
    for d in wanted:
        if d.id is not None:
            out.add(d.id)
        elif d.external_id in by_xid:
            out.add(by_xid[d.external_id])
    return out


def _file_matches(r: FileRecord, f: FileFilter, data_sets: Mapping[int, str | None]) -> bool:
    checks = [
        f.name is None or r.name == f.name,
        f.mime_type is None or r.mime_type == f.mime_type,
        f.source is None or r.source == f.source,
        f.directory_prefix is None or (r.directory or "").startswith(f.directory_prefix)
        and r.directory is not None,
        f.external_id_prefix is None or (r.external_id or "").startswith(f.external_id_prefix)
        and r.external_id is not None,
        f.metadata is None or all(r.metadata_fields.get(k) == v for k, v in f.metadata.items()),
        f.asset_ids is None or bool(set(f.asset_ids) & set(r.asset_ids)),
        f.data_set_ids is None or r.data_set_id in _data_set_ids(f.data_set_ids, data_sets),
        f.uploaded is None or r.uploaded == f.uploaded,
        _in_range(r.created_time, f.created_time),
        _in_range(r.last_updated_time, f.last_updated_time),
        _in_range(r.uploaded_time if r.uploaded else None, f.uploaded_time),
        # The emulator's files carry no source times: a range on them matches nothing.
        _in_range(None, f.source_created_time),
        _in_range(None, f.source_modified_time),
    ]
    if f.labels is not None:
        have = set(r.labels)
        if f.labels.contains_any is not None:
            checks.append(bool(have & {x.external_id for x in f.labels.contains_any}))
        if f.labels.contains_all is not None:
            checks.append({x.external_id for x in f.labels.contains_all} <= have)
    return all(checks)


_MISSING = object()
_NODE_FIELDS = {"space": lambda r: r.instance_id[0], "externalId": lambda r: r.instance_id[1],
                "createdTime": lambda r: r.created_time,
                "lastUpdatedTime": lambda r: r.last_updated_time}


def _node_property(r: FileRecord, ref: object, where: str) -> Any:
    """The value a property reference names on a node (``_MISSING`` when it has none)."""
    view = f"{COGNITE_FILE_VIEW[1]}/{COGNITE_FILE_VIEW[2]}"
    if isinstance(ref, list) and len(ref) == 2 and ref[0] == "node" and ref[1] in _NODE_FIELDS:
        return _NODE_FIELDS[ref[1]](r)
    if isinstance(ref, list) and len(ref) == 3 and ref[0] == COGNITE_FILE_VIEW[0] and \
            ref[1] == view and isinstance(ref[2], str):
        return r.node_properties().get(ref[2], _MISSING)
    raise FilterProblem(f"{where}.property {ref!r}: the emulator knows [\"node\", "
                        f"\"space\"|\"externalId\"|\"createdTime\"|\"lastUpdatedTime\"] and "
                        f"[\"cdf_cdm\", \"{view}\", <property>]")


def _node_matches(r: FileRecord, flt: Any, where: str) -> bool:
    if not isinstance(flt, Mapping) or len(flt) != 1:
        raise FilterProblem(f"{where}: a filter is an object with exactly one key "
                            "(and, or, not, equals, in, prefix, exists, range)")
    ((kind, arg),) = flt.items()
    here = f"{where}.{kind}"
    if kind in ("and", "or"):
        if not isinstance(arg, list) or not arg:
            raise FilterProblem(f"{here}: takes a non-empty list of filters")
        results = [_node_matches(r, f, f"{here}[{i}]") for i, f in enumerate(arg)]
        return all(results) if kind == "and" else any(results)
    if kind == "not":
        return not _node_matches(r, arg, here)
    if kind not in ("equals", "in", "prefix", "exists", "range") or not isinstance(arg, Mapping):
        raise FilterProblem(f"{here}: not a filter the emulator understands (and, or, not, "
                            "equals, in, prefix, exists, range)")
    value = _node_property(r, arg.get("property"), here)
    if kind == "exists":
        return value is not _MISSING and value is not None
    if value is _MISSING:
        return False
    if kind == "equals":
        return bool(value == arg.get("value"))
    if kind == "in":
        values = arg.get("values")
        if not isinstance(values, list):
            raise FilterProblem(f"{here}.values: must be a list")
        return value in values
    if kind == "prefix":
        prefix = arg.get("value")
        if not isinstance(prefix, str):
            raise FilterProblem(f"{here}.value: must be a string")
        return isinstance(value, str) and value.startswith(prefix)
    bounds = {k: v for k, v in arg.items() if k in ("gt", "gte", "lt", "lte")}
    if not bounds:
        raise FilterProblem(f"{here}: needs one of gt, gte, lt, lte")
    try:
        return all({"gt": value > b, "gte": value >= b, "lt": value < b,
                    "lte": value <= b}[k] for k, b in bounds.items())
    except TypeError:
        raise FilterProblem(f"{here}: cannot compare {value!r} with {bounds}") from None
