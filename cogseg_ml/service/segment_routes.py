"""CDF's two segment routes, written once for the service and the emulator [ref 1.2, 1.3].

``POST /context/vision/segment`` checks the caller, parses the body (400 with CDF's error
shape), lets the app's :class:`SegmentFiles` resolve and fetch the file, and stores a
``Queued`` job in the shared :class:`~cogseg_ml.service.job_engine.JobEngine`.
``GET /context/vision/segment/{jobId}`` answers a job of the caller's project to a caller
who may read its file. The apps differ only in their :class:`SegmentFiles`: the service reads
a real CDF project with the caller's token; the emulator its in-memory files, with its faults.
:func:`api_app` wraps routes with the error handlers and lifespan both apps use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cogseg_ml.api.wire_schema import FileIdentifier, SegmentJobCreateRequest
from cogseg_ml.prompts import Box, Point, Prompt
from cogseg_ml.service.job_engine import JobEngine
from cogseg_ml.service.job_store import StoredJob
from cogseg_ml.service.problems import ApiProblem, error_response, parse_body
from cogseg_ml.service.segment_wire import job_id_from_path, unknown_job

__all__ = ["PROJECT_PREFIX", "AcceptedFile", "SegmentFiles", "SegmentRoutes", "api_app"]

PROJECT_PREFIX = "/api/v1/projects/{project}"


@dataclass(frozen=True)
class AcceptedFile:
    """A file a job may run on: its identity, content version and the bytes' SHA-256 and
    size (the bytes themselves are where the app's answerer finds them by that digest)."""

    id: int
    external_id: str | None
    version: str
    digest: str
    height: int
    width: int


class SegmentFiles(Protocol):
    """Where an app's files come from, and who may see its jobs."""

    async def authorize(self, request: Request) -> str:
        """Check the caller (bearer token, project, beta header); the project, else raise
        :class:`~cogseg_ml.service.problems.ApiProblem`."""
        ...

    async def accept(self, request: Request, project: str, ident: FileIdentifier
                     ) -> AcceptedFile:
        """The file a new job names, checked segmentable and its bytes at hand."""
        ...

    def stored(self, request: Request) -> Callable[[StoredJob], None] | None:
        """A hook run with the new job before any worker can take it (or ``None``)."""
        ...

    async def may_read(self, request: Request, job: StoredJob) -> None:
        """Raise unless this caller may read ``job``'s result."""
        ...


def prompt_of(body: SegmentJobCreateRequest) -> Prompt:
    """The request's points and box as a :class:`~cogseg_ml.prompts.Prompt`."""
    b = body.bounding_box
    return Prompt(points=tuple(Point(p.x, p.y, p.label) for p in body.points),
                  box=Box(b.x_min, b.y_min, b.x_max, b.y_max) if b else None)


class SegmentRoutes:
    """The segment routes on ``files`` and ``engine``."""

    def __init__(self, files: SegmentFiles, engine: JobEngine) -> None:
        self.files = files
        self.engine = engine

    async def create(self, request: Request) -> Response:
        """``POST /context/vision/segment``: a ``Queued`` job, stored before the answer."""
        project = await self.files.authorize(request)
        body = await parse_body(request, SegmentJobCreateRequest)
        item = body.items[0]
        ident = FileIdentifier(id=item.file_id, external_id=item.file_external_id,
                               instance_id=item.file_instance_id)
        f = await self.files.accept(request, project, ident)
        job = await self.engine.submit(
            project=project, file_id=f.id, file_external_id=f.external_id,
            file_version=f.version, prompt=prompt_of(body), digest=f.digest, height=f.height,
            width=f.width, on_stored=self.files.stored(request))
        return Response(job.view(created=True).model_dump_json(by_alias=True,
                                                               exclude_none=True),
                        media_type="application/json")

    async def retrieve(self, request: Request) -> Response:
        """``GET /context/vision/segment/{jobId}``: the job's status and result."""
        project = await self.files.authorize(request)
        job_id = job_id_from_path(request.path_params["job_id"])
        job = await self.engine.get(job_id)
        if job is None or job.project != project:
            raise unknown_job(job_id)
        await self.files.may_read(request, job)
        return Response(self.engine.retrieve_body(job), media_type="application/json")

    def routes(self) -> list[BaseRoute]:
        """The two routes under ``/api/v1/projects/{project}``."""
        p = PROJECT_PREFIX + "/context/vision/segment"
        return [Route(p, self.create, methods=["POST"]),
                Route(p + "/{job_id}", self.retrieve, methods=["GET"])]


def api_app(routes: Sequence[BaseRoute], *, startup: Callable[[], Awaitable[None]],
            shutdown: Callable[[], Awaitable[None]]) -> Starlette:
    """A Starlette app answering errors in CDF's shape (``ApiProblem``, unknown routes 404,
    wrong methods 405), running ``startup``/``shutdown`` with its lifespan."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        return error_response(exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        code = int(getattr(exc, "status_code", 500))
        return error_response(ApiProblem(code, str(getattr(exc, "detail", "error"))))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await startup()
        try:
            yield
        finally:
            await shutdown()

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ApiProblem: on_problem, 404: on_http, 405: on_http}
    return Starlette(routes=list(routes), exception_handlers=handlers, lifespan=lifespan)
