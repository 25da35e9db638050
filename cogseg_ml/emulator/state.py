"""The emulator's in-memory world: files, tokens, download links, annotations, request log.

A :class:`FileRecord` is one version of a file's content. Replacing the content
(:meth:`EmulatorState.replace_file`) swaps in a new record under the same id, so whoever holds
the old record (a segmentation job created before the replacement) keeps the bytes it was
created on.
"""

from __future__ import annotations

import dataclasses
import io
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cogseg_ml.api.wire_schema import FileIdentifier, FileMetadata, InstanceIdWire

__all__ = ["EmulatorState", "FileRecord", "RequestLogEntry"]

MIME_BY_EXTENSION = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def now_ms(clock: Callable[[], float] = time.time) -> int:
    """Milliseconds since the Unix epoch."""
    return int(clock() * 1000)


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
    _pixels: np.ndarray | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def metadata(self) -> FileMetadata:
        """The Files API view of this file."""
        inst = (InstanceIdWire(space=self.instance_id[0], external_id=self.instance_id[1])
                if self.instance_id else None)
        return FileMetadata(
            id=self.id, external_id=self.external_id, instance_id=inst, name=self.name,
            mime_type=self.mime_type, uploaded=True, created_time=self.created_time,
            last_updated_time=self.last_updated_time, uploaded_time=self.uploaded_time,
        )

    def pixels(self) -> np.ndarray:
        """The decoded RGB image ``(H, W, 3)`` uint8 (decoded once, then kept)."""
        with self._lock:
            if self._pixels is None:
                from PIL import Image

                with Image.open(io.BytesIO(self.data)) as img:
                    self._pixels = np.asarray(img.convert("RGB"))
            return self._pixels


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


class EmulatorState:
    """Files, tokens, links and annotations, guarded by one lock (the server runs in a thread)."""

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
        self.links: dict[str, tuple[int, float]] = {}  # link token -> (file id, expiry)
        self.annotations: dict[int, dict[str, Any]] = {}
        self._next_annotation_id = 1
        self.request_log: list[RequestLogEntry] = []
        self.tokens_issued = 0

    # --- files -----------------------------------------------------------------------------
    def add_file(self, data: bytes, name: str, *, mime_type: str | None = None,
                 external_id: str | None = None, instance_id: tuple[str, str] | None = None,
                 ground_truth: list[tuple[str, np.ndarray]] | None = None) -> FileRecord:
        """Register a file; ``mime_type`` defaults from the name's extension."""
        if mime_type is None:
            mime_type = _mime_from_name(name)
        with self.lock:
            if external_id is not None and external_id in self._by_xid:
                raise ValueError(f"externalId {external_id!r} already exists")
            fid = self._next_file_id
            self._next_file_id += 1
            t = now_ms(self.clock)
            rec = FileRecord(id=fid, name=name, data=data, mime_type=mime_type,
                             external_id=external_id, instance_id=instance_id, created_time=t,
                             last_updated_time=t, uploaded_time=t,
                             ground_truth=list(ground_truth or []))
            self.files[fid] = rec
            if external_id is not None:
                self._by_xid[external_id] = fid
            if instance_id is not None:
                self._by_inst[instance_id] = fid
            return rec

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
                _pixels=None, _lock=threading.Lock())
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
    def issue_token(self, ttl_s: float | None = None) -> tuple[str, float]:
        """A new bearer token and its lifetime in seconds."""
        ttl = self.token_ttl_s if ttl_s is None else ttl_s
        token = "emu-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = self.clock() + ttl
            self.tokens_issued += 1
        return token, ttl

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
