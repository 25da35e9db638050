"""The segment service's ASGI app: CDF's segment routes on a local model.

Routes (paths under ``/api/v1/projects/{project}`` unless absolute):

=======  ==================================  ===========================================
POST     ``/context/vision/segment``         start a job [ref 1.2]
GET      ``/context/vision/segment/{jobId}`` status and result [ref 1.3]
any      any other project path              passed through to CDF with the caller's token
GET      ``/healthz``                        the process answers
GET      ``/readyz``                         the model is loaded and CDF reachable (else 503)
GET      ``/metrics``                        Prometheus text format
=======  ==================================  ===========================================

Where CDF's behaviour is not documented the service makes a choice and says so here:

* a token CDF refuses gets CDF's own answer (the reference does not say what the segment route
  answers; ``files/byids`` answers 401) and no job is created;
* a file that does not exist is a 400 with ``error.missing`` as CDF's ``files/byids`` gives it;
* an unknown ``jobId`` (or one of another project) is a 400 with ``missing: [{"jobId": N}]``,
  as the emulator answers;
* reading a job needs a token that can read the job's file (``files/byids`` with that token);
  CDF's answer is remembered for ``access_ttl_s`` by a SHA-256 of the token, never the token;
* other project routes (``files/byids``, ``files/downloadlink``, ``files/list``, annotations,
  instances) are forwarded to CDF unchanged, so a client pointed at the service (cogseg's
  labeller and dataset) reads its files as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from cogseg_ml.api.wire_schema import FileIdentifier
from cogseg_ml.backends.local_sam import LocalSamBackend
from cogseg_ml.cache.cache_keys import file_key, origin_of
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.errors import CogsegError
from cogseg_ml.image_decode import image_size
from cogseg_ml.prompts import FileRef
from cogseg_ml.service.cdf_files import FORWARDED_HEADERS, CdfFiles
from cogseg_ml.service.guards import BodyLimit, RateLimit, bearer_token, token_hash
from cogseg_ml.service.job_engine import JobEngine
from cogseg_ml.service.job_store import JobStore, StoredJob
from cogseg_ml.service.model_answers import MAX_BATCH_JOBS, ModelAnswerer, ServiceAnswerer
from cogseg_ml.service.problems import ApiProblem
from cogseg_ml.service.segment_routes import (
    PROJECT_PREFIX,
    AcceptedFile,
    SegmentRoutes,
    api_app,
)
from cogseg_ml.service.segment_wire import check_beta, check_segmentable
from cogseg_ml.store import file_version

__all__ = ["AnswererFactory", "ServiceLimits", "build_app", "create_app"]

_log = logging.getLogger("cogseg_ml.service")

#: Builds the service's answerer from its image store, mask cache and CDF cluster origin.
AnswererFactory = Callable[[ImageStore, MaskCache, str], ServiceAnswerer]


@dataclass(frozen=True)
class ServiceLimits:
    """The service's limits.

    Attributes:
        max_body_bytes: the largest request body (413 beyond).
        rate_per_s, burst: each token's request rate and burst (429 with Retry-After beyond;
            ``rate_per_s <= 0`` turns the limit off).
        access_ttl_s: how long CDF's answer to "can this token read this file" is reused.
        max_image_bytes: the largest image the service downloads.
    """

    max_body_bytes: int = 1024 * 1024
    rate_per_s: float = 200.0
    burst: int = 400
    access_ttl_s: float = 60.0
    max_image_bytes: int = 64 * 1024 * 1024


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("cogseg_service_jobs", "Jobs by status", ["status"], registry=r)
        self.queue = Gauge("cogseg_service_queue_depth", "Jobs waiting for the model",
                           registry=r)
        self.accepted = Counter("cogseg_service_jobs_accepted", "Jobs accepted", registry=r)
        self.encoder_images = Gauge("cogseg_service_encoder_images",
                                    "Images through the image encoder since start", registry=r)
        self.decoder_calls = Gauge("cogseg_service_decoder_calls",
                                   "Mask decoder calls since start", registry=r)
        self.decoder_prompts = Gauge("cogseg_service_decoder_prompts",
                                     "Prompts through the mask decoder since start", registry=r)
        self.latency = Histogram("cogseg_service_job_latency_seconds",
                                 "From accepted to finished", registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.cdf_errors = Counter("cogseg_service_cdf_errors", "CDF calls that failed",
                                  ["reason"], registry=r)
        self.rate_limited = Counter("cogseg_service_rate_limited", "Requests answered 429",
                                    registry=r)
        self.replica_jobs = Gauge("cogseg_service_replica_jobs",
                                  "Jobs answered by each model replica (Ray Serve)",
                                  ["replica"], registry=r)
        self.lost_calls = Gauge("cogseg_service_replica_calls_lost",
                                "Calls lost with a model replica and sent again (Ray Serve)",
                                registry=r)


class _Service:
    """The service's state and routes; its :class:`SegmentFiles` side reads the caller's
    CDF project with the caller's token."""

    def __init__(self, make_answerer: AnswererFactory, cdf_base_url: str, jobs: JobStore,
                 cache: MaskCache, limits: ServiceLimits,
                 http: httpx.AsyncClient | None, *, workers: int, batch_jobs: int) -> None:
        self.origin = origin_of(cdf_base_url)
        self.jobs = jobs
        self.cache = cache
        self.images = ImageStore(cache)
        self.limits = limits
        self.metrics = _Metrics()
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(follow_redirects=False)
        self.cdf = CdfFiles(cdf_base_url, self.http, max_image_bytes=limits.max_image_bytes,
                            on_error=lambda reason: self.metrics.cdf_errors.labels(reason).inc())
        self.answerer = make_answerer(self.images, cache, self.origin)
        self.engine = JobEngine(jobs, self.answerer, workers=workers, batch_jobs=batch_jobs,
                                on_finished=self.metrics.latency.observe)
        self._access: dict[tuple[str, str, int], float] = {}
        self._fetching: dict[str, asyncio.Lock] = {}
        self._sizes: dict[str, tuple[str, int, int]] = {}

    # --- helpers ------------------------------------------------------------------------------
    @staticmethod
    def token(request: Request) -> str:
        token = bearer_token(dict(request.headers))
        if token is None:
            raise ApiProblem(401, "Unauthorized: missing bearer token")
        return token

    async def image(self, project: str, token: str, meta_id: int, xid: str | None,
                    version: str) -> tuple[str, int, int]:
        """``(sha256, height, width)`` of the file's content version, downloaded once."""
        key = file_key(self.origin, project, FileRef(id=meta_id), version)
        known = self._sizes.get(key)
        if known is not None:
            return known
        lock = self._fetching.setdefault(key, asyncio.Lock())
        async with lock:
            known = self._sizes.get(key)
            if known is not None:
                return known
            found = await asyncio.to_thread(self.images.get_with_digest, key)
            if found is None:
                data = await self.cdf.download(project, token, meta_id)
                digest = await asyncio.to_thread(self.images.put, key, data)
                if xid is not None:
                    xkey = file_key(self.origin, project, FileRef(external_id=xid), version)
                    await asyncio.to_thread(self.images.put, xkey, data)
            else:
                data, digest = found
            try:
                h, w = image_size(data, FileRef(id=meta_id))
            except CogsegError as exc:
                raise ApiProblem(400, f"File {meta_id} is not a readable image: {exc}") from None
            self._sizes[key] = out = (digest, h, w)
            if len(self._sizes) > 100_000:
                self._sizes.clear()
        self._fetching.pop(key, None)
        return out

    async def can_read(self, project: str, token: str, file_id: int) -> None:
        """CDF says this token reads this file (answer reused ``access_ttl_s``)."""
        key = (token_hash(token), project, file_id)
        now = time.monotonic()
        if self._access.get(key, 0.0) > now:
            return
        await self.cdf.metadata(project, token, {"id": file_id})
        if len(self._access) > 100_000:
            self._access.clear()
        self._access[key] = now + self.limits.access_ttl_s

    # --- SegmentFiles: the segment routes' view of CDF ------------------------------------
    async def authorize(self, request: Request) -> str:
        """A bearer token and the beta header; the project (CDF checks the token)."""
        self.token(request)
        check_beta(request.headers.get("cdf-version", ""))
        return str(request.path_params["project"])

    async def accept(self, request: Request, project: str, ident: FileIdentifier
                     ) -> AcceptedFile:
        """The file's metadata with the caller's token (401 or 400 ``missing`` as CDF
        answers), then its bytes, downloaded once per content version."""
        token = self.token(request)
        meta = await self.cdf.metadata(project, token, ident.to_wire())
        check_segmentable(meta.id, meta.name, meta.mime_type)
        version = file_version(meta)
        digest, h, w = await self.image(project, token, meta.id, meta.external_id, version)
        return AcceptedFile(meta.id, meta.external_id, version, digest, h, w)

    def stored(self, request: Request) -> Callable[[StoredJob], None]:
        """Remember that the caller reads the job's file; count and log the job."""
        token_key = token_hash(self.token(request))

        def hook(job: StoredJob) -> None:
            self._access[(token_key, job.project, job.file_id)] = \
                time.monotonic() + self.limits.access_ttl_s
            self.metrics.accepted.inc()
            _log.info("job %d accepted: file %d, %d point(s)%s", job.job_id, job.file_id,
                      len(job.prompt.points), " and a box" if job.prompt.box else "")
        return hook

    async def may_read(self, request: Request, job: StoredJob) -> None:
        """The caller's token reads the job's file (see :meth:`can_read`)."""
        await self.can_read(job.project, self.token(request), job.file_id)

    # --- other routes ---------------------------------------------------------------------
    async def forward(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}
        resp = await self.cdf.forward(request.method, request.url.path, request.url.query,
                                      headers, await request.body())
        keep = {k: v for k, v in resp.headers.items()
                if k.lower() in ("content-type", "x-request-id", "retry-after")}
        return Response(resp.content, status_code=resp.status_code, headers=keep)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(self, request: Request) -> Response:
        model = self.engine.alive
        cdf = await self.cdf.reachable()
        return JSONResponse({"ready": model and cdf, "model": model, "cdf": cdf},
                            status_code=200 if model and cdf else 503)

    async def metrics_route(self, request: Request) -> Response:
        m = self.metrics
        counts = await asyncio.to_thread(self.jobs.counts)
        for status, n in counts.items():
            m.jobs.labels(status).set(n)
        m.queue.set(counts.get("Queued", 0))
        stats = self.answerer.stats()
        m.encoder_images.set(stats.encoder_images)
        m.decoder_calls.set(stats.decoder_calls)
        m.decoder_prompts.set(stats.decoder_prompts)
        for replica, n in stats.jobs_by_replica.items():
            m.replica_jobs.labels(replica).set(n)
        m.lost_calls.set(stats.lost_calls)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.stop(drain_s=60.0)  # what still runs then is requeued at start
        if self._own_http:
            await self.http.aclose()


def create_app(backend: LocalSamBackend, cdf_base_url: str, *, jobs_db: str | Path,
               cache: str | Path | MaskCache | None = None,
               limits: ServiceLimits | None = None,
               http_client: httpx.AsyncClient | None = None) -> ASGIApp:
    """The segment service as an ASGI app (serve it with uvicorn; the job engine starts
    and stops with the app's lifespan).

    Args:
        backend: the model (e.g. ``LocalSamBackend.from_pretrained(folder)``).
        cdf_base_url: the CDF cluster files come from, e.g. ``https://api.cognitedata.com``.
        jobs_db: the jobs' SQLite file (created when missing; kept across restarts).
        cache: the mask cache file (or a :class:`MaskCache`) the results are also written to,
            and whose image store keeps downloaded images (default: the user's cache).
        limits: body size, rate and access-check limits.
        http_client: the client for CDF calls (default: one of the app's own).
    """
    def make_answerer(images: ImageStore, mask_cache: MaskCache, origin: str
                      ) -> ServiceAnswerer:
        return ModelAnswerer(images, backend, cache=mask_cache, origin=origin)

    return build_app(make_answerer, cdf_base_url, jobs_db=jobs_db, cache=cache, limits=limits,
                     http_client=http_client)


def build_app(make_answerer: AnswererFactory, cdf_base_url: str, *, jobs_db: str | Path,
              cache: str | Path | MaskCache | None = None,
              limits: ServiceLimits | None = None,
              http_client: httpx.AsyncClient | None = None, workers: int = 1,
              batch_jobs: int = MAX_BATCH_JOBS) -> ASGIApp:
    """The service's app on any answerer (:func:`create_app` uses the local model; the Ray
    Serve ingress its model replicas).

    Args:
        make_answerer: builds the answerer from the app's image store, mask cache and the
            CDF cluster's origin.
        cdf_base_url, jobs_db, cache, limits, http_client: as :func:`create_app`.
        workers: the job engine's workers (batches in flight at once).
        batch_jobs: the most jobs one worker hands the answerer at once.
    """
    mask_cache = cache if isinstance(cache, MaskCache) else MaskCache(cache)
    svc = _Service(make_answerer, cdf_base_url, JobStore(jobs_db), mask_cache,
                   limits or ServiceLimits(), http_client, workers=workers,
                   batch_jobs=batch_jobs)
    routes = [
        *SegmentRoutes(svc, svc.engine).routes(),
        Route(PROJECT_PREFIX + "/{rest:path}", svc.forward,
              methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/healthz", svc.healthz, methods=["GET"]),
        Route("/readyz", svc.readyz, methods=["GET"]),
        Route("/metrics", svc.metrics_route, methods=["GET"]),
    ]
    inner = api_app(routes, startup=svc.start, shutdown=svc.close)
    inner.state.service = svc
    limits = svc.limits
    limited = RateLimit(inner, limits.rate_per_s, limits.burst,
                        on_limited=svc.metrics.rate_limited.inc)
    return BodyLimit(limited, limits.max_body_bytes)
