"""``cogseg serve --ray``: the segment service on Ray Serve (see
:mod:`cogseg_ml.service.ray`).

Joins the Ray cluster ``RAY_ADDRESS`` names (or starts a local one), starts Serve's HTTP proxy
on ``--host``/``--port`` (TLS with ``--tls-cert``/``--tls-key``, the same rule as the
single-node service off loopback), deploys the application, prints one JSON line
(``base_url``, ``pid``) and serves until SIGTERM or SIGINT: then it deletes the application
(the jobs database keeps every accepted job for the next start) and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import socket
from pathlib import Path

from cogseg_ml.cli.common import EXIT_OK, local_model
from cogseg_ml.errors import ValidationError


def _free_port(host: str) -> int:
    bare = host[1:-1] if host.startswith("[") else host
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((bare, 0))
        return int(s.getsockname()[1])


def run_on_ray(args: argparse.Namespace, host: str) -> int:
    """Deploy and serve until stopped (see the module docstring)."""
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise ValidationError("--max-replicas must be >= --replicas")
    if not args.num_gpus_per_replica >= 0 or not args.num_cpus_per_replica >= 0:
        raise ValidationError("--num-gpus-per-replica and --num-cpus-per-replica take >= 0")
    local_model(args.model, "cpu", "cogseg serve").close()  # a bad folder: exit 2 here
    from cogseg_ml.cache.mask_cache import MaskCache, default_cache_dir
    from cogseg_ml.service.job_store import JobStore

    jobs_db = Path(args.jobs_db) if args.jobs_db else default_cache_dir() / "service-jobs.sqlite"
    jobs_db.parent.mkdir(parents=True, exist_ok=True)
    # Another kind of file as either: exit 2 here, before Ray starts (the ingress, which opens
    # them, would refuse them out of the user's sight).
    JobStore(jobs_db).close()
    MaskCache(args.cache).close()
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValidationError("--ray needs the ray extra: pip install 'cogseg-ml[ray]'"
                              ) from None
    from cogseg_ml.service.app import ServiceLimits
    from cogseg_ml.service.ray import (
        APP_NAME,
        RayServeOptions,
        SamModel,
        segment_application,
    )

    model_dir = str(Path(args.model).resolve())
    port = args.port or _free_port(host)
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
             logging_level=logging.WARNING)
    http: dict[str, object] = {"host": host.strip("[]"), "port": port}
    if args.tls_cert:
        http.update(ssl_certfile=str(Path(args.tls_cert).resolve()),
                    ssl_keyfile=str(Path(args.tls_key).resolve()))
    serve.start(http_options=http)
    limits = ServiceLimits(max_body_bytes=args.max_body_bytes, rate_per_s=args.rate_limit,
                           burst=args.burst)
    options = RayServeOptions(replicas=args.replicas, max_replicas=args.max_replicas,
                              num_gpus_per_replica=args.num_gpus_per_replica,
                              num_cpus_per_replica=args.num_cpus_per_replica)
    device = "cuda" if args.num_gpus_per_replica > 0 and args.device == "auto" else args.device
    app = segment_application(functools.partial(SamModel, model_dir, device),
                              args.cdf_base_url, jobs_db=jobs_db.resolve(),
                              cache=None if args.cache is None else Path(args.cache).resolve(),
                              limits=limits, options=options)
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    serve.run(app, name=APP_NAME, route_prefix="/")
    scheme = "https" if args.tls_cert else "http"
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    print(json.dumps({"base_url": f"{scheme}://{shown}:{port}", "pid": os.getpid(),
                      "replicas": args.replicas}), flush=True)
    signal.sigwait(stop)
    serve.delete(APP_NAME)
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()
    return EXIT_OK
