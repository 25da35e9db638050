"""``cogseg serve`` on Ray Serve: one ingress, many model replicas, one address.

The application has two deployments:

* ``SegmentIngress`` (one replica, pinned to the head node): the service's own ASGI app
  (:func:`~cogseg_ml.service.app.build_app`: the same routes, access checks, limits, metrics
  and job engine), whose answerer sends jobs to the model replicas instead of a local model;
* ``SegmentModel`` (``replicas``, or autoscaling between ``replicas`` and ``max_replicas``,
  each with ``num_gpus_per_replica`` GPUs): a local model that answers batches of jobs.

Where the state lives, and why: the jobs are in the ingress's SQLite file on the head node
(the same :class:`~cogseg_ml.service.job_store.JobStore` as the single-node service), written
before a POST is answered. Replicas hold no job state: a job is answered by whichever replica
Serve routes its image to, and recorded by the ingress. A replica that dies mid-job makes its
call fail; the ingress sends that image's jobs again, to another replica (Serve replaces the
dead one), so nothing is lost or recorded twice. The ingress restarting loses nothing: the
file stays on the head node and its jobs left ``Running`` are requeued at start. Its limits:
one ingress replica (SQLite wants one writer host), on the head node's disk; images pass
through the ingress (downloaded once per content version, kept in its image store).

Routing by content: each call carries the image's SHA-256 as Serve's multiplexed model id, so
Serve prefers the replica that already saw that content (and holds its embedding); all jobs
of one image in a batch go in one call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ray import serve

from cogseg_ml.api.wire_schema import JobStatus
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.service.app import ServiceLimits, build_app
from cogseg_ml.service.job_engine import JobOutcome
from cogseg_ml.service.job_store import StoredJob
from cogseg_ml.service.model_answers import ModelAnswerer, ModelStats

__all__ = ["FixedWaitModel", "RayAnswerer", "RayServeOptions", "ReplicaModel", "SamModel",
           "segment_application"]

_log = logging.getLogger("cogseg_ml.service")

APP_NAME = "cogseg"
MODEL_DEPLOYMENT = "SegmentModel"
INGRESS_DEPLOYMENT = "SegmentIngress"


class ReplicaModel(Protocol):
    """What a model replica runs: jobs plus their images' bytes in, outcomes and the work
    done out."""

    def answer(self, jobs: Sequence[StoredJob], images: Mapping[str, bytes]
               ) -> tuple[list[JobOutcome], ModelStats]:
        """One outcome per job, and the model's work for them."""
        ...


class _Bytes(dict[str, bytes]):
    def get_by_digest(self, digest: str) -> bytes | None:
        return self.get(digest)


class SamModel:
    """SAM 2.1 (or SAM) from a checkpoint folder, as a replica's model.

    Args:
        model_dir: the checkpoint folder.
        device: ``auto``, ``cpu``, ``cuda``, ...
    """

    def __init__(self, model_dir: str, device: str = "auto") -> None:
        from cogseg_ml.backends.local_sam import LocalSamBackend

        self.backend = LocalSamBackend.from_pretrained(model_dir, device=device)
        self._lock = threading.Lock()  # one backend run at a time on this replica's model

    def answer(self, jobs: Sequence[StoredJob], images: Mapping[str, bytes]
               ) -> tuple[list[JobOutcome], ModelStats]:
        """The jobs through one backend run (see :class:`ModelAnswerer`)."""
        with self._lock:
            answerer = ModelAnswerer(_Bytes(images), self.backend, cache=None, origin="")
            before = answerer.stats()
            out = answerer.answer(jobs)
            after = answerer.stats()
        return out, ModelStats(after.encoder_images - before.encoder_images,
                               after.decoder_calls - before.decoder_calls,
                               after.decoder_prompts - before.decoder_prompts)


class FixedWaitModel:
    """A model whose cost is a fixed wait per job and whose answer is no mask: how a
    GPU-bound model looks from the CPU (benchmarks and tests of routing and scale).

    Args:
        wait_s: seconds each job costs.
        gate: when given, every call also waits until this file exists (a run caught
            mid-way, e.g. to kill a replica while it holds jobs).
    """

    def __init__(self, wait_s: float, gate: str | None = None) -> None:
        self.wait_s = wait_s
        self.gate = None if gate is None else Path(gate)
        self._lock = threading.Lock()  # one "device" per replica

    def answer(self, jobs: Sequence[StoredJob], images: Mapping[str, bytes]
               ) -> tuple[list[JobOutcome], ModelStats]:
        """Every job ``Completed`` with no segments, after ``wait_s`` each."""
        while self.gate is not None and not self.gate.exists():
            time.sleep(0.01)
        with self._lock:
            time.sleep(self.wait_s * len(jobs))
        return ([JobOutcome(j.job_id, JobStatus.COMPLETED) for j in jobs],
                ModelStats(len(set(images)), 1, len(jobs)))


class _SegmentModel:
    """The model deployment: builds its model once, answers one image's jobs per call."""

    def __init__(self, make_model: Callable[[], ReplicaModel]) -> None:
        self.model = make_model()
        self.replica = serve.get_replica_context().replica_id.unique_id

    @serve.multiplexed(max_num_models_per_replica=4096)  # type: ignore[untyped-decorator]
    async def holds(self, digest: str) -> str:
        """Marks this replica as holding ``digest``'s content (what Serve routes by)."""
        return digest

    async def answer(self, jobs: list[StoredJob], images: dict[str, bytes]
                     ) -> tuple[list[JobOutcome], ModelStats, str]:
        """Answer ``jobs`` (of the image whose SHA-256 is the request's multiplexed id)."""
        await self.holds(serve.get_multiplexed_model_id())
        outcomes, stats = await asyncio.to_thread(self.model.answer, jobs, images)
        return outcomes, stats, self.replica


class RayAnswerer:
    """The ingress's answerer: each image's jobs go to a model replica, routed by content;
    a call lost with its replica is sent again (to another replica).

    Args:
        handle: the model deployment's handle.
        images: the ingress's image store (the jobs' bytes by SHA-256).
        attempts: tries per image before its jobs fail.
    """

    def __init__(self, handle: Any, images: ImageStore, *, attempts: int = 4) -> None:
        self.handle = handle
        self.images = images
        self.attempts = attempts
        self._stats = ModelStats()

    def stats(self) -> ModelStats:
        """The replicas' work, as they reported it."""
        return self._stats

    def answer(self, jobs: Sequence[StoredJob]) -> list[JobOutcome]:
        """Not used: the engine awaits :meth:`answer_async` on its loop."""
        raise NotImplementedError("RayAnswerer answers on the event loop (answer_async)")

    async def answer_async(self, jobs: Sequence[StoredJob]) -> list[JobOutcome]:
        """Each image's jobs to a replica, all images at once."""
        groups: dict[str, list[StoredJob]] = {}
        for job in jobs:
            groups.setdefault(job.digest, []).append(job)
        results = await asyncio.gather(*(self._one_image(d, g) for d, g in groups.items()))
        return [o for outcomes in results for o in outcomes]

    async def _one_image(self, digest: str, jobs: list[StoredJob]) -> list[JobOutcome]:
        from ray.exceptions import ActorUnavailableError, RayActorError

        data = await asyncio.to_thread(self.images.get_by_digest, digest)
        if data is None:
            return [JobOutcome(j.job_id, JobStatus.FAILED,
                               item_error=f"the image bytes {digest[:12]}... are no longer "
                                          "stored") for j in jobs]
        lost = ""
        for attempt in range(self.attempts):
            try:
                outcomes, stats, replica = await self.handle.options(
                    multiplexed_model_id=digest).answer.remote(jobs, {digest: data})
            except (RayActorError, ActorUnavailableError) as exc:  # the replica died
                lost = type(exc).__name__
                self._stats = self._stats + ModelStats(lost_calls=1)
                _log.warning("a model replica was lost with %d job(s) (try %d of %d): %s",
                             len(jobs), attempt + 1, self.attempts, lost)
                continue
            self._stats = self._stats + stats + ModelStats(
                jobs_by_replica={replica: len(outcomes)})
            return list(outcomes)
        return [JobOutcome(j.job_id, JobStatus.FAILED,
                           error=f"model replicas lost {self.attempts} times ({lost})")
                for j in jobs]


@dataclass(frozen=True)
class RayServeOptions:
    """How the Ray Serve application is laid out.

    Attributes:
        replicas: model replicas (the autoscaling floor when ``max_replicas`` is set).
        max_replicas: the autoscaling ceiling (``None``: a fixed ``replicas``).
        num_gpus_per_replica, num_cpus_per_replica: each model replica's resources.
        max_ongoing_requests: calls (images) a replica takes at once.
        batch_jobs: jobs the ingress hands the replicas per batch.
        pin_ingress_to_head: place the ingress (and its SQLite file) on the head node.
    """

    replicas: int = 1
    max_replicas: int | None = None
    num_gpus_per_replica: float = 0.0
    num_cpus_per_replica: float = 1.0
    max_ongoing_requests: int = 4
    batch_jobs: int = 64
    pin_ingress_to_head: bool = True


def segment_application(make_model: Callable[[], ReplicaModel], cdf_base_url: str, *,
                        jobs_db: str | Path, cache: str | Path | None = None,
                        limits: ServiceLimits | None = None,
                        options: RayServeOptions | None = None) -> Any:
    """The Ray Serve application (``serve.run(app, name="cogseg", route_prefix="/")``).

    Args:
        make_model: builds a replica's model, run once in each replica (e.g.
            ``functools.partial(SamModel, "models/sam21", "cuda")``); it must pickle.
        cdf_base_url, jobs_db, cache, limits: as :func:`~cogseg_ml.service.create_app`
            (``jobs_db`` and ``cache`` are paths on the ingress's node).
        options: replicas, resources and batching.
    """
    opts = options or RayServeOptions()
    if opts.replicas < 1 or (opts.max_replicas is not None
                             and opts.max_replicas < opts.replicas):
        raise ValueError("replicas must be >= 1 and max_replicas (if set) >= replicas")
    scale: dict[str, Any] = (
        {"num_replicas": opts.replicas} if opts.max_replicas is None else
        {"autoscaling_config": {"min_replicas": opts.replicas,
                                "max_replicas": opts.max_replicas,
                                "target_ongoing_requests": 2}})
    model: Any = serve.deployment(
        _SegmentModel, name=MODEL_DEPLOYMENT, max_ongoing_requests=opts.max_ongoing_requests,
        ray_actor_options={"num_gpus": opts.num_gpus_per_replica,
                           "num_cpus": opts.num_cpus_per_replica}, **scale)
    workers = 2 * (opts.max_replicas or opts.replicas) * opts.max_ongoing_requests
    db, cache_path = str(jobs_db), None if cache is None else str(cache)

    def build() -> Any:
        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=APP_NAME)

        def make_answerer(images: ImageStore, mask_cache: MaskCache, origin: str
                          ) -> RayAnswerer:
            return RayAnswerer(handle, images)

        return build_app(make_answerer, cdf_base_url, jobs_db=db, cache=cache_path,
                         limits=limits, workers=workers, batch_jobs=opts.batch_jobs)

    class SegmentIngress:
        """The service's routes; the model replicas are bound in for deployment."""

        def __init__(self, model_handle: Any) -> None:
            self.model_handle = model_handle

    actor: dict[str, Any] = {"num_cpus": 0}  # it waits on CDF and the replicas
    if opts.pin_ingress_to_head:
        actor["resources"] = {"node:__internal_head__": 0.001}
    ingress: Any = serve.deployment(serve.ingress(build)(SegmentIngress),
                                    name=INGRESS_DEPLOYMENT, num_replicas=1,
                                    ray_actor_options=actor)
    return ingress.bind(model.bind(make_model))
