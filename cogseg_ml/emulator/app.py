"""The emulator's HTTP application: CDF's routes, one handler each, plus a few admin routes.

Route table (paths under ``/api/v1/projects/{project}`` unless absolute):

=======  ==================================  ===========================================
POST     ``/oauth2/token``                   OIDC-style client credentials (form body)
POST     ``/files/byids``                    file metadata [ref 2.1]
POST     ``/files/downloadlink``             short-lived download URLs [ref 2.2]
POST     ``/files/list``                     files by filter, cursor paging, partitions [ref 2.3]
GET      ``/files/download/{token}``         the bytes behind a download URL (absolute)
POST     ``/context/vision/segment``         start a segmentation job [ref 1.2]
GET      ``/context/vision/segment/{jobId}`` job status and result [ref 1.3]
POST     ``/annotations/list``               filter annotations, cursor paging [ref 3.3]
POST     ``/annotations``                    create annotations [ref 3.3]
POST     ``/models/instances/list``          CogniteFile nodes by filter, cursor paging [ref 2.4]
PUT      ``/_emulator/files``                register or overwrite an image (body = bytes; not CDF)
POST     ``/_emulator/faults``               replace the fault rules (not CDF)
GET      ``/_emulator/requests``             the request log (not CDF)
GET      ``/_emulator/stats``                job and fault counters (not CDF)
=======  ==================================  ===========================================

Where the reference is silent the emulator makes a choice and says so here:

* a vision call without a beta ``cdf-version`` header gets 400 (CDF's exact answer is not
  documented);
* an unknown ``jobId`` gets 400 with ``missing: [{"jobId": N}]`` (CDF's convention for unknown
  ids; the reference leaves the status open);
* a project other than the emulator's gets 403; ``POST /annotations`` answers 201;
* a token scoped to data sets (``Emulator.issue_token(data_set_ids=...)``) reads only their
  files: ``files/byids``, ``files/downloadlink``, a new segment job and a job's result answer
  403 for another file (the reference does not give CDF's answer), and listings leave such
  files out;
* download URLs need no bearer token (they carry their own short-lived secret);
* a retired Vision API (``Emulator(retired=True)``, ``cogseg emulator --retired``) answers both
  segment routes 404 with CDF's error body and no ``missing``, before any check of the token
  or the body: ``{"error": {"code": 404, "message": "Not Found"}}``, exactly what any unknown
  route gets here. How CDF will answer once the endpoint is retired is not documented; an
  unknown route is the plainest reading. Files, tokens and annotations keep working;
* ``files/list``: files come in id order; a partition ``M/N`` holds the files whose
  ``id % N == M - 1`` (CDF's split is not documented); an unknown data set in ``dataSetIds``
  matches nothing (the reference leaves open whether CDF answers 400 or an empty page); the
  filter fields about assets hierarchies and geometry (``assetExternalIds``, ``rootAssetIds``,
  ``assetSubtreeIds``, ``geoLocation``) get a 400 saying the emulator does not model them;
  ``EmulatorState.list_page_cap`` makes pages shorter than ``limit`` while a ``nextCursor``
  follows (the reference allows that);
* ``models/instances/list`` serves ``cdf_cdm:CogniteFile/v1`` nodes only (the files with an
  instance id): any other view in ``sources`` is a 400 naming it, as is an ``edge`` listing;
  nodes come in ``(space, externalId)`` order; without ``sources`` their ``properties`` are
  empty; the filter language is the subset :meth:`EmulatorState.list_nodes` documents;
* cursors of both listings are opaque strings bound to the request they continue: a cursor
  sent with another filter, partition or view is a 400 (CDF's answer to that is not
  documented);
* a download link for a file listed with ``uploaded: false`` (no content yet) is a 400 (the
  reference does not say how CDF answers it);
* replacing a file's content (``PUT /_emulator/files?overwrite=true``) stands in for CDF's upload
  with overwrite, whose protocol the reference does not describe: only its documented effect is
  emulated (same id, new bytes, ``lastUpdatedTime`` and ``uploadedTime`` bumped, strictly).
  Jobs created before a replacement finish on the content they were created on.

The request log (``GET /_emulator/requests``, ``Emulator.requests``) keeps, per CDF request,
time, method, path, status, request id, injected fault, duration and the client's TCP port
(``client_port``), never headers (they hold tokens) nor bodies. Admin routes are not logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import cogseg_ml.strict_json as strict_json
from cogseg_ml.api.wire_schema import (
    AnnotationCreateRequest,
    AnnotationListRequest,
    DownloadLinkRequest,
    FileIdentifier,
    FilesByIdsRequest,
    FilesListRequest,
    InstancesListRequest,
)
from cogseg_ml.emulator.faults import (
    NO_BODY_STATUSES,
    REQUEST_FAULT_KINDS,
    FaultInjector,
    check_seed,
    faults_from_data,
)
from cogseg_ml.emulator.state import (
    COGNITE_FILE_VIEW,
    EmulatorState,
    FileRecord,
    FilterProblem,
    RequestLogEntry,
)
from cogseg_ml.emulator.synthetic_answers import SyntheticAnswerer
from cogseg_ml.errors import ValidationError
from cogseg_ml.service.job_engine import JobEngine
from cogseg_ml.service.job_store import StoredJob
from cogseg_ml.service.problems import ApiProblem, error_response, parse_body
from cogseg_ml.service.segment_routes import AcceptedFile, SegmentRoutes, api_app
from cogseg_ml.service.segment_wire import check_beta, check_segmentable

__all__ = ["ApiProblem", "Availability", "ConnectionDropped", "build_app"]

UNKNOWN_ROUTE = "Not Found"  # the message of a 404 for a route the emulator does not serve
#: The answer to a file the token may not read (a token scoped to other data sets).
FORBIDDEN = "Resource not found. This may also be due to insufficient access rights."


@dataclass
class Availability:
    """Which parts of CDF the emulator offers; may be switched while it serves.

    Attributes:
        vision_retired: the segment endpoint is gone (its routes answer 404 as unknown ones).
    """

    vision_retired: bool = False


class ConnectionDropped(Exception):
    """Raised after a response has started, so the server closes the connection mid-response."""


def _cursor_for(request: BaseModel, offset: int) -> str:
    """An opaque cursor: where the next page starts, bound to the request it continues."""
    raw = json.dumps({"o": offset, "q": _request_key(request)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _request_key(request: BaseModel) -> str:
    body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    body.pop("cursor", None)
    body.pop("limit", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _cursor_offset(request: BaseModel, cursor: str | None) -> int:
    """Where a cursor says the page starts (0 without one); 400 for a foreign cursor."""
    if cursor is None:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset = int(data["o"])
        key = str(data["q"])
    except (ValueError, KeyError, TypeError):
        raise ApiProblem(400, "Invalid cursor: not a cursor this listing issued") from None
    if key != _request_key(request) or offset < 0:
        raise ApiProblem(400, "Invalid cursor: it continues a listing with another filter, "
                              "partition or source")
    return offset


class Handlers:
    """One method per endpoint; ``state``, ``jobs`` and ``faults`` are shared with the server."""

    def __init__(self, state: EmulatorState, jobs: JobEngine, answers: SyntheticAnswerer,
                 faults: FaultInjector, availability: Availability | None = None) -> None:
        self.state = state
        self.jobs = jobs
        self.answers = answers
        self.faults = faults
        self.availability = availability or Availability()

    def route_exists(self) -> None:
        """A retired segment endpoint answers as an unknown route does (404, no ``missing``)."""
        if self.availability.vision_retired:
            raise ApiProblem(404, UNKNOWN_ROUTE)

    # --- guards ------------------------------------------------------------------------------
    def authorize(self, request: Request, *, beta: bool = False) -> str:
        """Bearer token, project and (for vision) the beta version header; the token."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiProblem(401, "Unauthorized: missing bearer token")
        if self.faults.first("token_expiry", request.method, request.url.path):
            self.state.expire_token(token)
        if not self.state.token_valid(token):
            raise ApiProblem(401, "Unauthorized: the token is unknown or has expired")
        project = request.path_params.get("project")
        if project != self.state.project:
            raise ApiProblem(403, f"Project {project!r} is not accessible with this token")
        if beta:
            check_beta(request.headers.get("cdf-version", ""))
        return token

    def _readable(self, token: str, records: list[Any]) -> list[Any]:
        """The records this token reads (a token scoped to data sets reads only theirs)."""
        return [r for r in records if self.state.can_read(token, r)]

    def _resolve_all(self, idents: list[FileIdentifier], token: str, *,
                     ignore_unknown: bool = False) -> list[Any]:
        keys = [i.to_wire() for i in idents]
        seen: set[str] = set()
        dup = []
        for k in keys:
            s = json.dumps(k, sort_keys=True)
            if s in seen:
                dup.append(k)
            seen.add(s)
        if dup:
            raise ApiProblem(400, "Duplicate identifiers in request", duplicated=dup)
        records = [self.state.resolve(i) for i in idents]
        missing = [k for k, r in zip(keys, records, strict=True) if r is None]
        if missing and not ignore_unknown:
            raise ApiProblem(400, "Files not found", missing=missing)
        if any(r is not None and not self.state.can_read(token, r) for r in records):
            raise ApiProblem(403, FORBIDDEN)
        return [(k, r) for k, r in zip(keys, records, strict=True) if r is not None]

    # --- endpoints ---------------------------------------------------------------------------
    async def token(self, request: Request) -> Response:
        """OAuth client credentials: form body, or HTTP Basic for the client id and secret."""
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        cid, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            import base64

            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                cid = secret = None
        if cid != self.state.client_id or secret != self.state.client_secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token, ttl = self.state.issue_token()
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": int(ttl)})

    async def files_byids(self, request: Request) -> Response:
        """``POST /files/byids``."""
        token = self.authorize(request)
        body = await parse_body(request, FilesByIdsRequest)
        found = self._resolve_all(body.items, token, ignore_unknown=body.ignore_unknown_ids)
        return JSONResponse({"items": [r.metadata().to_wire() for _, r in found]})

    async def files_downloadlink(self, request: Request) -> Response:
        """``POST /files/downloadlink`` (``?extendedExpiration=true`` gives 1 h links)."""
        token = self.authorize(request)
        body = await parse_body(request, DownloadLinkRequest)
        ttl = 3600.0 if request.query_params.get("extendedExpiration") == "true" else 30.0
        items = []
        found = self._resolve_all(body.items, token)
        empty = [key for key, rec in found if not rec.uploaded]
        if empty:
            raise ApiProblem(400, f"Files have no content yet (uploaded: false): {empty}")
        for key, rec in found:
            link = self.state.new_link(rec.id, ttl)
            items.append({**key, "downloadUrl": f"{request.base_url}files/download/{link}"})
        return JSONResponse({"items": items})

    def _page(self, body: Any, matches: list[Any]) -> tuple[list[Any], str | None]:
        start = _cursor_offset(body, body.cursor)
        size = body.limit if self.state.list_page_cap is None else \
            min(body.limit, self.state.list_page_cap)
        page = matches[start:start + size]
        end = start + len(page)
        return page, (_cursor_for(body, end) if end < len(matches) else None)

    async def files_list(self, request: Request) -> Response:
        """``POST /files/list``: filter, ``limit``, ``cursor``, ``partition`` [ref 2.3]."""
        token = self.authorize(request)
        body = await parse_body(request, FilesListRequest)
        part = None
        if body.partition is not None:
            m, n = body.partition.split("/")
            part = (int(m), int(n))
        try:
            matches = self._readable(token, self.state.list_files(body.filter, part))
        except FilterProblem as exc:
            raise ApiProblem(400, f"Invalid filter: {exc}") from None
        page, nxt = self._page(body, matches)
        out: dict[str, Any] = {"items": [r.metadata().to_wire() for r in page]}
        if nxt is not None:
            out["nextCursor"] = nxt
        return JSONResponse(out)

    async def instances_list(self, request: Request) -> Response:
        """``POST /models/instances/list`` for CogniteFile nodes [ref 2.4]."""
        token = self.authorize(request)
        body = await parse_body(request, InstancesListRequest)
        if body.instance_type != "node":
            raise ApiProblem(400, "instanceType: the emulator lists nodes only")
        with_properties = False
        for k, sel in enumerate(body.sources or []):
            v = sel.source
            if (v.space, v.external_id, v.version) != COGNITE_FILE_VIEW:
                raise ApiProblem(400, f"sources[{k}]: view {v.space}:{v.external_id}/"
                                      f"{v.version} does not exist (the emulator has "
                                      f"{COGNITE_FILE_VIEW[0]}:{COGNITE_FILE_VIEW[1]}/"
                                      f"{COGNITE_FILE_VIEW[2]} only)")
            with_properties = True
        try:
            matches = self._readable(token, self.state.list_nodes(body.filter))
        except FilterProblem as exc:
            raise ApiProblem(400, f"Invalid filter: {exc}") from None
        page, nxt = self._page(body, matches)
        return JSONResponse({"items": [r.node(with_properties) for r in page],
                             "nextCursor": nxt})

    async def files_download(self, request: Request) -> Response:
        """``GET`` a download URL."""
        rec = self.state.open_link(request.path_params["token"])
        if rec is None:
            return Response("the download link is unknown or has expired", status_code=403,
                            media_type="text/plain")
        return Response(rec.data, media_type="application/octet-stream")

    # --- SegmentFiles: the segment routes' view of the emulator's files -----------------
    async def authorize_segment(self, request: Request) -> str:
        """A retired endpoint is an unknown route; then token, project and beta header."""
        self.route_exists()
        self.authorize(request, beta=True)
        return self.state.project

    def _token(self, request: Request) -> str:
        return request.headers.get("authorization", "").partition(" ")[2]

    async def accept(self, request: Request, project: str, ident: FileIdentifier
                     ) -> AcceptedFile:
        """The file as it is now (a later replacement does not change the job's bytes)."""
        ((_, rec),) = self._resolve_all([ident], self._token(request))
        check_segmentable(rec.id, rec.name, rec.mime_type)
        # Hashing and decoding (once per record) stay off the event loop.
        digest, (h, w) = await asyncio.to_thread(
            lambda: (self.answers.remember(rec), _size(rec)))
        return AcceptedFile(rec.id, rec.external_id, str(rec.last_updated_time), digest, h, w)

    def stored(self, request: Request) -> Callable[[StoredJob], None]:
        """Draw the job's injected failure (``job_fail``, else ``item_fail``) for it."""
        method, path = request.method, request.url.path
        job_fault = self.faults.first("job_fail", method, path)
        item_fault = None if job_fault else self.faults.first("item_fail", method, path)

        def hook(job: StoredJob) -> None:
            self.answers.set_faults(job.job_id,
                                    fail_job=job_fault.message if job_fault else None,
                                    fail_item=item_fault.message if item_fault else None)
        return hook

    async def may_read(self, request: Request, job: StoredJob) -> None:
        """A job's result goes to a token that reads its file (403 otherwise; the reference
        does not say how CDF answers a job whose file the caller cannot read)."""
        rec = self.state.files.get(job.file_id)
        if rec is not None and not self.state.can_read(self._token(request), rec):
            raise ApiProblem(403, FORBIDDEN)

    async def annotations_list(self, request: Request) -> Response:
        """``POST /annotations/list`` with the filter keys of the reference."""
        self.authorize(request)
        body = await parse_body(request, AnnotationListRequest)
        f = body.filter
        if "annotatedResourceType" not in f or "annotatedResourceIds" not in f:
            raise ApiProblem(400, "filter needs annotatedResourceType and annotatedResourceIds")
        ids = {d.get("id") for d in f["annotatedResourceIds"] if isinstance(d, dict)}
        data_filter = f.get("data") or {}
        with self.state.lock:
            rows = sorted(self.state.annotations.values(), key=lambda a: a["id"])
        out = []
        for a in rows:
            if a["annotatedResourceType"] != f["annotatedResourceType"]:
                continue
            if a["annotatedResourceId"] not in ids:
                continue
            if any(k in f and a.get(k) != f[k] for k in
                   ("annotationType", "status", "creatingApp", "creatingAppVersion")):
                continue
            if "creatingUser" in f and a.get("creatingUser") != f["creatingUser"]:
                continue
            if any(a["data"].get(k) != v for k, v in data_filter.items()):
                continue
            out.append(a)
        start = int(body.cursor) if body.cursor and body.cursor.isdigit() else 0
        page = out[start:start + body.limit]
        nxt = str(start + body.limit) if start + body.limit < len(out) else None
        return JSONResponse({"items": page, "nextCursor": nxt})

    async def annotations_create(self, request: Request) -> Response:
        """``POST /annotations`` (201)."""
        self.authorize(request)
        body = await parse_body(request, AnnotationCreateRequest)
        missing = [{"id": a.annotated_resource_id} for a in body.items
                   if a.annotated_resource_type == "file"
                   and a.annotated_resource_id not in self.state.files]
        if missing:
            raise ApiProblem(400, "Annotated files not found", missing=missing)
        for a in body.items:
            if a.annotation_type == "images.ObjectDetection":
                geoms = [k for k in ("boundingBox", "polygon", "polyline") if k in a.data]
                if len(geoms) != 1 or "label" not in a.data:
                    raise ApiProblem(400, "images.ObjectDetection data needs a label and exactly "
                                          "one of boundingBox, polygon, polyline")
        stored = [self.state.add_annotation(a.to_wire()) for a in body.items]
        return JSONResponse({"items": stored}, status_code=201)

    # --- admin (not CDF) ------------------------------------------------------------------------
    async def admin_add_file(self, request: Request) -> Response:
        """Register an image: body = bytes; query ``name``, ``externalId``, ``mimeType``,
        ``overwrite``.

        A new file answers 201 with its metadata; an existing ``externalId`` is a 409 unless
        ``overwrite=true``, which replaces that file's content (and its name and MIME type when
        given; ``name`` is optional then) and answers 200 with the updated metadata.
        """
        q = request.query_params
        name = q.get("name") or None
        xid = q.get("externalId")
        overwrite = q.get("overwrite", "false").lower()
        if overwrite not in ("true", "false"):
            raise ApiProblem(400, "query parameter 'overwrite' must be true or false")
        if overwrite == "true" and not xid:
            raise ApiProblem(400, "overwrite=true needs the query parameter 'externalId'")
        data = await request.body()
        with self.state.lock:  # look-up and replace-or-add as one step
            if overwrite == "true" and self.state.resolve(FileIdentifier(external_id=xid)):
                rec = self.state.replace_file(FileIdentifier(external_id=xid), data, name=name,
                                              mime_type=q.get("mimeType"))
                return JSONResponse(rec.metadata().to_wire(), status_code=200)
            # A new file (an upload with overwrite of an unknown externalId creates it too).
            if not name:
                raise ApiProblem(400, "query parameter 'name' is required")
            try:
                rec = self.state.add_file(data, name, mime_type=q.get("mimeType"),
                                          external_id=xid)
            except ValueError as exc:
                raise ApiProblem(409, str(exc)) from None
        return JSONResponse(rec.metadata().to_wire(), status_code=201)

    async def admin_faults(self, request: Request) -> Response:
        """Replace the fault rules: ``{"seed": int, "faults": [Fault as dict, ...]}``.

        Everything is checked first (strict JSON, every rule's fields, the seed in
        0..:data:`~cogseg_ml.emulator.faults.MAX_SEED`): a 400 naming the rule and field
        leaves the rules in force unchanged."""
        try:
            data = strict_json.loads(await request.body(), "the fault list")
            if not isinstance(data, dict):
                raise ValidationError('the fault list must be a JSON object {"seed": int, '
                                      '"faults": [rule, ...]}')
            seed = data.get("seed")
            if seed is not None:
                seed = check_seed(seed, "'seed'")
            faults = faults_from_data(data.get("faults", []), "'faults'")
        except ValidationError as exc:
            raise ApiProblem(400, f"bad fault list: {exc}") from None
        self.faults.reset(faults, seed)
        return JSONResponse({"faults": len(faults)})

    async def admin_stats(self, request: Request) -> Response:
        """Counters for benchmarks: jobs, statuses, peak concurrency, injected faults."""
        counts = await asyncio.to_thread(self.jobs.store.counts)
        statuses = {status: n for status, n in counts.items() if n}
        with self.state.lock:
            n_requests = len(self.state.request_log)
        return JSONResponse({"jobs": sum(counts.values()), "statuses": statuses,
                             "max_running": self.jobs.max_running, "requests": n_requests,
                             "tokens_issued": self.state.tokens_issued,
                             "faults_injected": self.faults.injected,
                             "vision_retired": self.availability.vision_retired})

    async def admin_requests(self, request: Request) -> Response:
        """The request log as JSON."""
        with self.state.lock:
            rows = [e.__dict__ for e in self.state.request_log]
        return JSONResponse({"items": rows})


class FaultAndLogMiddleware:
    """Adds ``x-request-id``, injects request faults, enforces the rate limit, logs requests."""

    def __init__(self, app: ASGIApp, state: EmulatorState, faults: FaultInjector,
                 rate_limit_rps: float | None) -> None:
        self.app = app
        self.state = state
        self.faults = faults
        self.rate = rate_limit_rps
        self._allowance = float(rate_limit_rps or 0.0)
        self._last = time.monotonic()

    def _rate_limited(self) -> bool:
        if not self.rate:
            return False
        now = time.monotonic()
        self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
        self._last = now
        if self._allowance < 1.0:
            return True
        self._allowance -= 1.0
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if path.startswith("/_emulator/"):
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        client = scope.get("client")  # (host, port) of the TCP peer, or None
        client_port = int(client[1]) if client else None
        t0 = time.perf_counter()
        fault_name: str | None = None
        logged = False

        def log(status: int) -> None:
            nonlocal logged
            if not logged:
                logged = True
                self.state.log(RequestLogEntry(time=time.time(), method=method, path=path,
                                               status=status, request_id=rid, fault=fault_name,
                                               duration_s=time.perf_counter() - t0,
                                               client_port=client_port))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = rid
                # Logged before the response leaves, so a client that got it sees the entry.
                log(0 if fault_name in ("drop", "drop-after") else message["status"])
            await send(message)

        try:
            fired = self.faults.draw(REQUEST_FAULT_KINDS, method, path)
            for f in fired:
                if f.kind == "delay":
                    await asyncio.sleep(f.delay_s)
                    fault_name = "delay"
            raw = next((f for f in fired if f.kind == "body"), None)
            if raw is not None:
                fault_name = f"body-{raw.status}"
                await Response(raw.body.encode(), status_code=raw.status,
                               media_type=raw.content_type)(scope, receive, send_with_id)
                return
            drop = next((f for f in fired if f.kind == "drop"), None)
            reject = next((f for f in fired if f.kind == "status"), None)
            if drop is not None:
                fault_name = "drop-after" if drop.after else "drop"
                if drop.after:
                    await self.app(scope, receive, _discard)
                await send_with_id({"type": "http.response.start", "status": 200,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", b"4096")]})
                await send({"type": "http.response.body", "body": b'{"status":',
                            "more_body": True})
                raise ConnectionDropped
            if reject is not None:
                fault_name = f"status-{reject.status}"
                headers = {"Retry-After": reject.retry_after} if reject.retry_after else None
                answer = (Response(status_code=reject.status, headers=headers)
                          if reject.status in NO_BODY_STATUSES else
                          error_response(ApiProblem(reject.status, reject.message,
                                                    headers=headers)))
                await answer(scope, receive, send_with_id)
            elif self._rate_limited():
                fault_name = "rate-limit"
                await error_response(ApiProblem(429, "Too many requests: rate limit exceeded"))(
                    scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            log(0)


async def _discard(message: Message) -> None:
    return None


def build_app(state: EmulatorState, jobs: JobEngine, answers: SyntheticAnswerer,
              faults: FaultInjector, *, rate_limit_rps: float | None = None,
              availability: Availability | None = None) -> ASGIApp:
    """The ASGI app: routes (the segment routes shared with ``cogseg serve``), one error
    handler, the fault/log middleware, job-engine lifespan.

    ``availability`` is read on every request (switch it to retire the Vision API while the
    app serves)."""
    h = Handlers(state, jobs, answers, faults, availability)
    p = "/api/v1/projects/{project}"
    routes = [
        Route("/oauth2/token", h.token, methods=["POST"]),
        Route(p + "/files/byids", h.files_byids, methods=["POST"]),
        Route(p + "/files/downloadlink", h.files_downloadlink, methods=["POST"]),
        Route(p + "/files/list", h.files_list, methods=["POST"]),
        Route("/files/download/{token}", h.files_download, methods=["GET"]),
        *SegmentRoutes(_EmulatorFiles(h), jobs).routes(),
        Route(p + "/annotations/list", h.annotations_list, methods=["POST"]),
        Route(p + "/annotations", h.annotations_create, methods=["POST"]),
        Route(p + "/models/instances/list", h.instances_list, methods=["POST"]),
        Route("/_emulator/files", h.admin_add_file, methods=["PUT"]),
        Route("/_emulator/faults", h.admin_faults, methods=["POST"]),
        Route("/_emulator/requests", h.admin_requests, methods=["GET"]),
        Route("/_emulator/stats", h.admin_stats, methods=["GET"]),
    ]
    inner = api_app(routes, startup=jobs.start, shutdown=jobs.stop)
    return FaultAndLogMiddleware(inner, state, faults, rate_limit_rps)


def _size(rec: FileRecord) -> tuple[int, int]:
    """``(height, width)`` of a file's image; ``(0, 0)`` when it does not decode (the job's
    item fails when it runs)."""
    try:
        h, w = rec.pixels().shape[:2]
    except (OSError, ValueError):
        return 0, 0
    return int(h), int(w)


class _EmulatorFiles:
    """The handlers as the segment routes' :class:`SegmentFiles`."""

    def __init__(self, h: Handlers) -> None:
        self.authorize = h.authorize_segment
        self.accept = h.accept
        self.stored = h.stored
        self.may_read = h.may_read
