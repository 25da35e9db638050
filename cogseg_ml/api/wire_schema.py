"""Request and response bodies of the CDF endpoints we use, as one set of pydantic models.

camelCase on the wire, snake_case in Python. Response models ignore unknown fields (CDF adds
fields over time) but reject wrong types: validate JSON with ``Model.model_validate_json`` (strict
mode, so ``"12"`` is not an int). The client and the emulator both use these definitions.

Facts and their sources are in the project's API reference (sections in brackets below).
Where the reference is silent, the model says so in a comment.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "MAX_PARTITIONS",
    "Annotation",
    "AnnotationCreateRequest",
    "AnnotationListRequest",
    "AnnotationListResponse",
    "DownloadLinkItem",
    "DownloadLinkRequest",
    "ErrorBody",
    "ErrorDetail",
    "FailedItemGroup",
    "FileFilter",
    "FileIdentifier",
    "FileListResponse",
    "FileMetadata",
    "FilesListRequest",
    "FilesByIdsRequest",
    "InstanceIdWire",
    "ItemsResponse",
    "IdEither",
    "InstancesListRequest",
    "JobStatus",
    "LabelFilter",
    "LabelRef",
    "NodeItem",
    "NodeListResponse",
    "SegmentBoundingBox",
    "SegmentFileRef",
    "SegmentJob",
    "SegmentJobCreateRequest",
    "SegmentJobItem",
    "SegmentPoint",
    "SegmentPolygon",
    "SegmentPrompt",
    "SegmentResult",
    "SegmentVertex",
    "SourceSelector",
    "TERMINAL_JOB_STATUSES",
    "TimeRange",
    "TokenResponse",
    "ViewReference",
]


class WireModel(BaseModel):
    """Base for every wire body: camelCase aliases, strict types, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        strict=True,
        extra="ignore",
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict (camelCase keys, ``None`` fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class RequestModel(WireModel):
    """Request bodies: unknown fields are an error (the emulator answers 400)."""

    model_config = ConfigDict(extra="forbid")


class JobStatus(str, Enum):
    """Segmentation job status, exact strings [1.1]."""

    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        """Whether the job will not change any more."""
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})


class InstanceIdWire(WireModel):
    """``{"space", "externalId"}``."""

    space: str = Field(min_length=1)
    external_id: str = Field(min_length=1)


# --- vision segment [1.2, 1.3] -----------------------------------------------------------------


class SegmentFileRef(WireModel):
    """A file in a segment job: one of ``fileId``, ``fileExternalId``, ``fileInstanceId``.

    Responses may carry several of them (the file's id plus its external id); requests carry
    exactly one (checked by :class:`SegmentJobCreateRequest`). Whether beta accepts
    ``fileInstanceId`` is open in the reference [1.2].
    """

    file_id: int | None = None
    file_external_id: str | None = None
    file_instance_id: InstanceIdWire | None = None


class SegmentPoint(WireModel):
    """A point prompt; ``label`` 1 foreground, 0 background. Range [0, 1] is inferred [1.2]."""

    x: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    y: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    label: Literal[0, 1]


class SegmentBoundingBox(WireModel):
    """A box prompt, normalized; strict ``min < max`` (inferred from the Vision schemas)."""

    x_min: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    y_min: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    x_max: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    y_max: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> SegmentBoundingBox:
        if not (self.x_min < self.x_max and self.y_min < self.y_max):
            raise ValueError("boundingBox needs xMin < xMax and yMin < yMax")
        return self


class SegmentJobCreateRequest(RequestModel):
    """Body of ``POST /context/vision/segment``.

    ``items`` holds exactly one file [1.2]. ``points`` is required by the schema; we always send
    it, possibly empty when a box is given (whether CDF accepts an empty list is open).
    """

    items: list[SegmentFileRef] = Field(min_length=1, max_length=1)
    points: list[SegmentPoint]
    bounding_box: SegmentBoundingBox | None = None

    @model_validator(mode="after")
    def _check(self) -> SegmentJobCreateRequest:
        for item in self.items:
            n = sum(
                v is not None
                for v in (item.file_id, item.file_external_id, item.file_instance_id)
            )
            if n != 1:
                raise ValueError("each item needs exactly one of fileId, fileExternalId, "
                                 "fileInstanceId")
        keys = [(p.x, p.y, p.label) for p in self.points]
        if len(set(keys)) != len(keys):
            raise ValueError("points must be unique")
        if not self.points and self.bounding_box is None:
            raise ValueError("at least one point or a boundingBox is required")
        return self


class SegmentVertex(WireModel):
    """A polygon vertex, normalized (inferred); ``confidence`` is nullable [1.3]."""

    x: float = Field(allow_inf_nan=False)
    y: float = Field(allow_inf_nan=False)
    confidence: float | None = None


class SegmentPolygon(WireModel):
    """One closed polygon (first and last vertex joined; inferred) [1.3]."""

    vertices: list[SegmentVertex]
    confidence: float | None = None


class SegmentResult(WireModel):
    """One candidate segment: a score and the polygons whose union is the object [1.3]."""

    score: float = Field(allow_inf_nan=False)
    polygons: list[SegmentPolygon] = Field(default_factory=list)


class SegmentJobItem(SegmentFileRef):
    """A result item: the file reference plus its segments (empty until Completed)."""

    segments: list[SegmentResult] = Field(default_factory=list)


class SegmentPrompt(WireModel):
    """The prompt echoed by ``GET`` (nested; ``POST`` echoes it at the top level) [1.3]."""

    points: list[SegmentPoint] = Field(default_factory=list)
    bounding_box: SegmentBoundingBox | None = None


class FailedItemGroup(WireModel):
    """A group of items that failed with one message [1.3]."""

    error_message: str | None = None
    items: list[SegmentFileRef] = Field(default_factory=list)


class SegmentJob(WireModel):
    """Response of both ``POST /context/vision/segment`` and ``GET .../segment/{jobId}``.

    Times are milliseconds since the Unix epoch. ``points``/``bounding_box`` are the POST's
    top-level echo, ``prompt`` the GET's nested echo.
    """

    status: JobStatus
    job_id: int
    created_time: int = Field(ge=0)
    start_time: int | None = Field(default=None, ge=0)
    status_time: int = Field(ge=0)
    items: list[SegmentJobItem] = Field(default_factory=list)
    points: list[SegmentPoint] | None = None
    bounding_box: SegmentBoundingBox | None = None
    prompt: SegmentPrompt | None = None
    error_message: str | None = None
    failed_items: list[FailedItemGroup] | None = None


# --- files [2] ---------------------------------------------------------------------------------


class FileIdentifier(WireModel):
    """``{"id"}`` | ``{"externalId"}`` | ``{"instanceId"}`` for the Files API."""

    id: int | None = None
    external_id: str | None = None
    instance_id: InstanceIdWire | None = None

    @model_validator(mode="after")
    def _one(self) -> FileIdentifier:
        n = sum(v is not None for v in (self.id, self.external_id, self.instance_id))
        if n != 1:
            raise ValueError("an identifier needs exactly one of id, externalId, instanceId")
        return self


class FilesByIdsRequest(RequestModel):
    """Body of ``POST /files/byids``: 1..1000 unique identifiers [2.1]."""

    items: list[FileIdentifier] = Field(min_length=1, max_length=1000)
    ignore_unknown_ids: bool = False


class LabelRef(WireModel):
    """A label on a file, ``{"externalId"}`` [2.1, 2.3]."""

    external_id: str = Field(min_length=1)


class FileMetadata(WireModel):
    """A file's metadata (a selection of the fields CDF returns) [2.1]."""

    id: int
    external_id: str | None = None
    instance_id: InstanceIdWire | None = None
    name: str
    directory: str | None = None
    source: str | None = None
    mime_type: str | None = None
    uploaded: bool = False
    created_time: int = 0
    last_updated_time: int = 0
    uploaded_time: int | None = None
    metadata: dict[str, str] | None = None
    data_set_id: int | None = None
    asset_ids: list[int] | None = None
    labels: list[LabelRef] | None = None


class DownloadLinkRequest(RequestModel):
    """Body of ``POST /files/downloadlink``: 1..100 identifiers [2.2]."""

    items: list[FileIdentifier] = Field(min_length=1, max_length=100)


class DownloadLinkItem(WireModel):
    """A download link; the item echoes the identifier kind it was asked with [2.2]."""

    id: int | None = None
    external_id: str | None = None
    instance_id: InstanceIdWire | None = None
    download_url: str


# --- files/list [2.3] ---------------------------------------------------------------------------


class IdEither(RequestModel):
    """``{"id"}`` or ``{"externalId"}``: how list filters name data sets and assets [2.3]."""

    id: int | None = Field(default=None, ge=1)
    external_id: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> IdEither:
        if (self.id is None) == (self.external_id is None):
            raise ValueError("needs exactly one of id, externalId")
        return self


class TimeRange(RequestModel):
    """``{"min", "max"}`` in epoch milliseconds, both inclusive, either optional [2.3]."""

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)


class LabelFilter(RequestModel):
    """``{"containsAny": [...]}`` or ``{"containsAll": [...]}`` of label external ids [2.3].

    How many labels one filter may name is not in the reference.
    """

    contains_any: list[LabelRef] | None = Field(default=None, min_length=1)
    contains_all: list[LabelRef] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> LabelFilter:
        if (self.contains_any is None) == (self.contains_all is None):
            raise ValueError("needs exactly one of containsAny, containsAll")
        return self


class FileFilter(RequestModel):
    """``filter`` of ``POST /files/list``: every field optional, all given ones must match [2.3].

    Prefixes are case-sensitive. ``geoLocation``'s shape is not spelled out in the reference,
    so it is taken as an object as it is. The alpha-only ``space`` and
    ``instanceExternalIdPrefix`` are not GA and not accepted here.
    """

    name: str | None = None
    mime_type: str | None = None
    source: str | None = None
    directory_prefix: str | None = None
    external_id_prefix: str | None = None
    metadata: dict[str, str] | None = None
    asset_ids: list[int] | None = Field(default=None, min_length=1, max_length=100)
    asset_external_ids: list[str] | None = Field(default=None, min_length=1, max_length=100)
    root_asset_ids: list[IdEither] | None = Field(default=None, min_length=1)
    asset_subtree_ids: list[IdEither] | None = Field(default=None, min_length=1)
    data_set_ids: list[IdEither] | None = Field(default=None, min_length=1)
    labels: LabelFilter | None = None
    geo_location: dict[str, Any] | None = None
    created_time: TimeRange | None = None
    last_updated_time: TimeRange | None = None
    uploaded_time: TimeRange | None = None
    source_created_time: TimeRange | None = None
    source_modified_time: TimeRange | None = None
    uploaded: bool | None = None


_PARTITION = re.compile(r"^(\d+)/(\d+)$")
#: The most partitions ``files/list`` splits into ("N > 10 is a 400") [2.3].
MAX_PARTITIONS = 10


class FilesListRequest(RequestModel):
    """Body of ``POST /files/list``: ``limit`` 1..1000 (default 100), ``partition`` ``"M/N"``
    with 1 <= M <= N <= 10; the ``cursor`` of the previous page with the same body [2.3].

    The cursor's form is CDF's business (opaque); its length limit is not in the reference.
    """

    filter: FileFilter | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, min_length=1)
    partition: str | None = None

    @field_validator("partition")
    @classmethod
    def _partition(cls, value: str | None) -> str | None:
        if value is None:
            return value
        m = _PARTITION.match(value)
        if m is None or not 1 <= int(m[1]) <= int(m[2]) <= MAX_PARTITIONS:
            raise ValueError(f"partition must be 'M/N' with 1 <= M <= N <= {MAX_PARTITIONS}, "
                             f"got {value!r}")
        return value


class FileListResponse(WireModel):
    """``{"items": [File, ...], "nextCursor"}``: no ``nextCursor`` means the last page [2.3]."""

    items: list[FileMetadata]
    next_cursor: str | None = None


# --- data modeling: CogniteFile nodes [2.4] ----------------------------------------------------


class ViewReference(WireModel):
    """A view, ``{"type": "view", "space", "externalId", "version"}`` [2.4]."""

    type: Literal["view"] = "view"
    space: str = Field(min_length=1)
    external_id: str = Field(min_length=1)
    version: str = Field(min_length=1)


class SourceSelector(WireModel):
    """``{"source": ViewReference}``: whose properties a listing returns [2.4]."""

    source: ViewReference


class InstancesListRequest(RequestModel):
    """Body of ``POST /models/instances/list`` as this project sends it [2.4].

    ``filter`` is the data-modeling filter language (``and``, ``equals``, ``prefix``, ...),
    kept as an object; the reference shows it only as ``...``. The reference's example sends
    ``limit: 1000``; neither the default nor the range is stated there, so clients always send
    it (1..1000 is assumed, as for the other list endpoints). ``includeTyping`` and ``sort``
    exist in the Instances API but are not in the reference, so they are not sent.
    """

    instance_type: Literal["node", "edge"] = "node"
    sources: list[SourceSelector] | None = None
    filter: dict[str, Any] | None = None
    limit: int = Field(default=1000, ge=1, le=1000)
    cursor: str | None = Field(default=None, min_length=1)


class NodeItem(WireModel):
    """A node of a listing; ``properties`` is ``{space: {"view/version": {name: value}}}``.

    Time fields other than ``createdTime``/``lastUpdatedTime`` are not in the reference and are
    ignored here.
    """

    instance_type: Literal["node"]
    space: str
    external_id: str
    version: int = 0
    created_time: int = 0
    last_updated_time: int = 0
    properties: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)


class NodeListResponse(WireModel):
    """``{"items": [...], "nextCursor"}`` of ``POST /models/instances/list`` [2.4]."""

    items: list[NodeItem]
    next_cursor: str | None = None


ItemT = TypeVar("ItemT")


class ItemsResponse(WireModel, Generic[ItemT]):
    """``{"items": [...]}``."""

    items: list[ItemT]


# --- annotations [3] ---------------------------------------------------------------------------


class Annotation(WireModel):
    """An annotation; ``data`` is validated per ``annotation_type`` by the caller [3.1]."""

    id: int | None = None
    created_time: int | None = None
    last_updated_time: int | None = None
    annotated_resource_type: str
    annotated_resource_id: int
    annotation_type: str
    creating_app: str
    creating_app_version: str
    creating_user: str | None
    status: Literal["suggested", "approved", "rejected"]
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """Like :meth:`WireModel.to_wire` but keeps ``creatingUser: null`` (required)."""
        body = super().to_wire()
        body.setdefault("creatingUser", None)
        return body


class AnnotationListRequest(RequestModel):
    """Body of ``POST /annotations/list`` [3.3]."""

    filter: dict[str, Any]
    limit: int = Field(default=25, ge=1, le=1000)
    cursor: str | None = Field(default=None, min_length=1, max_length=255)


class AnnotationListResponse(WireModel):
    """``{"items": [...], "nextCursor": str | null}``."""

    items: list[Annotation]
    next_cursor: str | None = None


class AnnotationCreateRequest(RequestModel):
    """Body of ``POST /annotations``: 1..1000 annotations [3.3]."""

    items: list[Annotation] = Field(min_length=1, max_length=1000)


# --- errors and tokens [4, 5] ------------------------------------------------------------------


class ErrorDetail(WireModel):
    """``error`` in CDF's error body; ``missing``/``duplicated`` only when relevant [4]."""

    code: int
    message: str
    missing: list[dict[str, Any]] | None = None
    duplicated: list[dict[str, Any]] | None = None


class ErrorBody(WireModel):
    """``{"error": {"code", "message", ...}}`` [4]."""

    error: ErrorDetail


class TokenResponse(BaseModel):
    """OAuth 2.0 token response (RFC 6749 section 5.1; snake_case on the wire)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    access_token: str = Field(min_length=1)
    token_type: str = "Bearer"
    expires_in: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
