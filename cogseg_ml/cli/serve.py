"""``cogseg serve``: CDF's segment API on this machine's model, for a team.

Loads the model first (a bad folder stops with exit 2 before anything listens), binds, prints
one JSON line (``base_url``, ``pid``) and serves until SIGTERM or SIGINT: then it stops
accepting, lets the requests in flight finish, persists what the model has not finished (the
next start runs it) and exits 0.

Binding anything but loopback needs ``--tls-cert``/``--tls-key``, or ``--allow-insecure-http``
for a service behind a TLS-terminating reverse proxy on the same host or network: bearer
tokens must not cross a network in clear text.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cogseg_ml.cli.common import (
    EXIT_OK,
    MODEL_HELP,
    device,
    input_file,
    local_model,
    port,
    positive,
)
from cogseg_ml.errors import ValidationError

LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether ``host`` listens on this machine only."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def check_transport(host: str, cert: str | None, key: str | None, insecure: bool) -> None:
    """Refuse a non-loopback bind without TLS or an explicit ``--allow-insecure-http``."""
    if (cert is None) != (key is None):
        raise ValidationError("--tls-cert and --tls-key go together: give both or neither")
    if cert is not None and key is not None:
        input_file(cert, "--tls-cert")
        input_file(key, "--tls-key")
        return
    if not is_loopback(host) and not insecure:
        raise ValidationError(f"--host {host} is reachable from other machines: give "
                              "--tls-cert and --tls-key, or --allow-insecure-http when a "
                              "TLS-terminating proxy stands in front (tokens must not cross a "
                              "network in clear text)")


def _bind(host: str, port_: int) -> socket.socket:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    family, _, _, _, address = socket.getaddrinfo(bare, port_, type=socket.SOCK_STREAM,
                                                  proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    return sock


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):  # type: ignore[misc]
        """uvicorn's server, whose SIGTERM/SIGINT end in a clean exit 0 (uvicorn re-raises
        the signal after its graceful shutdown, which would end the process with 143/130)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handle_exit)
            yield

    return Server


def run(args: argparse.Namespace) -> int:
    """Serve until stopped (see the module docstring)."""
    from cogseg_ml.emulator.server import check_host

    host = check_host(args.host, "--host")
    check_transport(host, args.tls_cert, args.tls_key, args.allow_insecure_http)
    if not args.cdf_base_url.startswith(("https://", "http://")):
        raise ValidationError(f"--cdf-base-url {args.cdf_base_url}: give the cluster's URL, "
                              "e.g. https://westeurope-1.cognitedata.com")
    if not args.rate_limit >= 0 or args.burst < 1 or args.max_body_bytes < 1:
        raise ValidationError("--rate-limit takes requests/s >= 0 (0: off), --burst a count "
                              ">= 1, --max-body-bytes a size >= 1")
    if args.ray:
        from cogseg_ml.cli.serve_ray import run_on_ray

        return run_on_ray(args, host)
    import uvicorn

    from cogseg_ml.cache.mask_cache import default_cache_dir
    from cogseg_ml.service.app import ServiceLimits, create_app

    backend = local_model(args.model, args.device, "cogseg serve")
    # The model's objects live as long as the process: keep the collector from walking them
    # again and again while the service builds each answer's many small objects.
    gc.collect()
    gc.freeze()
    jobs_db = Path(args.jobs_db) if args.jobs_db else default_cache_dir() / "service-jobs.sqlite"
    jobs_db.parent.mkdir(parents=True, exist_ok=True)
    limits = ServiceLimits(max_body_bytes=args.max_body_bytes, rate_per_s=args.rate_limit,
                           burst=args.burst)
    app = create_app(backend, args.cdf_base_url, jobs_db=jobs_db, cache=args.cache,
                     limits=limits)
    sock = _bind(host, args.port)
    bound = sock.getsockname()
    scheme = "https" if args.tls_cert else "http"
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(json.dumps({"base_url": f"{scheme}://{shown}:{bound[1]}", "pid": os.getpid(),
                      "model_version": backend.model_version}), flush=True)
    logging.getLogger("cogseg_ml.service").setLevel(logging.INFO)
    # Every log line goes to stderr (uvicorn sends access lines to stdout by default): stdout
    # carries the one JSON line, and a caller that reads only that must not stall the server.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config: Any = uvicorn.Config(app, log_level="info", access_log=True, log_config=log_config,
                                 ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key,
                                 timeout_graceful_shutdown=30)
    server = _server_class()(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    sys.stdout.flush()
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``serve`` to the subcommands ``sub``."""
    s = sub.add_parser("serve", help="serve CDF's segment API on a local model (for a team)",
                       description="Serve CDF's segment routes on a local SAM 2.1 model; files "
                                   "are read from your CDF project with each caller's own "
                                   "token. Prints one JSON line with base_url once bound.")
    s.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    s.add_argument("--cdf-base-url", required=True, metavar="URL",
                   help="the CDF cluster files come from, e.g. https://api.cognitedata.com")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; others need TLS or "
                        "--allow-insecure-http)")
    s.add_argument("--port", type=port, default=8000, help="port (0: an ephemeral one)")
    s.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:1, ...")
    s.add_argument("--jobs-db", metavar="PATH",
                   help="the jobs' SQLite file, kept across restarts (default: "
                        "service-jobs.sqlite in the cache folder)")
    s.add_argument("--cache", metavar="PATH",
                   help="mask cache file the results also go to (default: the user's cache)")
    s.add_argument("--tls-cert", metavar="FILE", help="TLS certificate (PEM)")
    s.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM)")
    s.add_argument("--allow-insecure-http", action="store_true",
                   help="serve plain HTTP on a non-loopback address (behind a TLS proxy)")
    s.add_argument("--rate-limit", type=float, default=200.0,
                   help="requests a second per token before 429 (default 200; 0: off)")
    s.add_argument("--burst", type=int, default=400, help="requests per token in a burst")
    s.add_argument("--max-body-bytes", type=int, default=1024 * 1024,
                   help="largest request body (default 1 MiB)")
    r = s.add_argument_group("Ray Serve (the ray extra): one address, many model replicas")
    r.add_argument("--ray", action="store_true",
                   help="serve on Ray Serve: an ingress on the head node and model replicas "
                        "(joins RAY_ADDRESS's cluster, or starts a local one)")
    r.add_argument("--replicas", type=positive, default=1,
                   help="model replicas (the autoscaling floor with --max-replicas)")
    r.add_argument("--max-replicas", type=positive,
                   help="autoscale the model replicas up to this many")
    r.add_argument("--num-gpus-per-replica", type=float, default=0.0, metavar="G",
                   help="GPUs each model replica takes (e.g. 1, or 0.5 to share one)")
    r.add_argument("--num-cpus-per-replica", type=float, default=1.0, metavar="C",
                   help="CPUs each model replica takes (default 1)")
    s.set_defaults(func=run)
