"""Run the emulator: in-process on loopback (a context manager) or from the command line.

Example::

    with Emulator(images=make_dataset(4)) as emu:
        client = SegmentationClient(emu.config)
        ...

The server (uvicorn) runs on its own thread with its own event loop, on ``127.0.0.1`` and an
ephemeral port unless told otherwise; leaving the ``with`` block stops it and joins the thread.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import shlex
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cogseg_ml.api.wire_schema import FileIdentifier
from cogseg_ml.config import CdfConfig, ClientCredentials, Secret, StaticToken
from cogseg_ml.emulator.app import Availability, ConnectionDropped, build_app
from cogseg_ml.emulator.faults import Fault, FaultInjector
from cogseg_ml.emulator.segmentation_engines import RegionGrowingEngine, SegmentationEngine
from cogseg_ml.emulator.state import EmulatorState, FileRecord, RequestLogEntry
from cogseg_ml.emulator.synthetic_answers import SyntheticAnswerer
from cogseg_ml.emulator.synthetic_images import SyntheticImage, encode_image
from cogseg_ml.errors import ValidationError
from cogseg_ml.service.job_engine import JobEngine
from cogseg_ml.service.job_store import JobStore, StoredJob

__all__ = ["Emulator", "check_host", "shell_env"]

_log = logging.getLogger("cogseg_ml.emulator")


class _QuietDrops(logging.Filter):
    """Keep injected connection drops out of uvicorn's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


def check_host(host: str, name: str = "host") -> str:
    """``host`` as an address to listen on: an IPv4 or IPv6 address (``::1``; brackets as in a
    URL are taken off) or a host name, without a port or a scheme.

    Raises:
        ValidationError: empty, a URL, ``host:port`` or holding spaces; the message names
            ``name`` (e.g. ``--host``).
    """
    if not isinstance(host, str) or not host.strip():
        raise ValidationError(f"{name} is empty: give an address to listen on, e.g. 127.0.0.1 "
                              "or ::1")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "/" in bare or any(c.isspace() for c in bare):
        raise ValidationError(f"{name} {host}: give an address or a host name (e.g. "
                              "127.0.0.1 or ::1), not a URL or a path")
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ValidationError(f"{name} {host}: give the address alone (e.g. 127.0.0.1 or "
                                  "::1); the port goes in --port") from None
    return bare


def _loopback(host: str) -> bool:
    """Whether a client configured from the environment accepts plain HTTP to ``host``
    without ``COGSEG_ALLOW_INSECURE_HTTP`` (loopback, ``localhost``)."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def shell_env(variables: Mapping[str, str]) -> str:
    """``export NAME=VALUE`` lines a POSIX shell evaluates (each value quoted)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())


class Emulator:
    """A local CDF emulator serving real HTTP on loopback.

    Args:
        images: what to serve from the start: :class:`SyntheticImage` objects (registered as
            PNG, their shapes kept as ground truth), a folder of ``.png``/``.jpg``/``.jpeg``
            files, or ``(name, bytes)`` pairs; each file's name is also its external id.
        project: the CDF project name it answers for.
        processing_time_s: how long each job takes (queueing not included).
        concurrency: jobs processed at once; the rest wait Queued.
        rate_limit_rps: requests per second before 429 (``None``: no limit).
        faults: fault rules (see :mod:`cogseg_ml.emulator.faults`), drawn from ``seed``.
        token_ttl_s: lifetime of issued tokens.
        engine: the segmentation engine (default :class:`RegionGrowingEngine`).
        image_format: how synthetic images are stored, ``"png"`` or ``"jpeg"``.
        host, port: where to listen: an IPv4 or IPv6 address or a host name (see
            :func:`check_host`), and a port (``port=0``: an ephemeral one).
        retired: start with the Vision API retired: both segment routes answer 404 with
            CDF's error body and no ``missing``, as unknown routes do (files, tokens and
            annotations keep working). Switch it while serving with :attr:`retired`.
        jobs_db: the jobs' SQLite file (default: a temporary one, removed with the emulator).
            Jobs run on the job engine ``cogseg serve`` uses (:attr:`jobs`).
    """

    def __init__(
        self,
        images: Iterable[SyntheticImage | tuple[str, bytes]] | str | Path | None = None,
        *,
        project: str = "emulated-project",
        processing_time_s: float = 0.05,
        concurrency: int = 8,
        rate_limit_rps: float | None = None,
        faults: Iterable[Fault] = (),
        seed: int = 0,
        token_ttl_s: float = 3600.0,
        engine: SegmentationEngine | None = None,
        image_format: str = "png",
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "cogseg-emulator",
        retired: bool = False,
        jobs_db: str | Path | None = None,
    ) -> None:
        self.host = check_host(host)
        self._port = port
        self.image_format = image_format
        self.state = EmulatorState(project, client_id=client_id,
                                   client_secret=secrets.token_urlsafe(24),
                                   token_ttl_s=token_ttl_s)
        self.faults = FaultInjector(tuple(faults), seed)
        if jobs_db is None:
            folder = tempfile.mkdtemp(prefix="cogseg-emulator-")
            weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
            jobs_db = Path(folder) / "jobs.sqlite"
        self.answers = SyntheticAnswerer(engine or RegionGrowingEngine())
        #: The jobs (``jobs.jobs`` maps id to :class:`~cogseg_ml.service.job_store.StoredJob`;
        #: ``jobs.end_limit`` holds jobs ``Running`` once that many ended).
        self.jobs = JobEngine(JobStore(jobs_db), self.answers, workers=concurrency,
                              batch_jobs=1, min_job_time_s=processing_time_s, threads=2)
        self.availability = Availability(vision_retired=bool(retired))
        self._app = build_app(self.state, self.jobs, self.answers, self.faults,
                              rate_limit_rps=rate_limit_rps, availability=self.availability)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        if images is not None:
            if isinstance(images, (str, Path)):
                self.add_folder(images)
            else:
                for img in images:
                    if isinstance(img, SyntheticImage):
                        self.add_synthetic(img)
                    else:
                        name, data = img
                        self.add_image(data, name, external_id=name)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Emulator:
        """Start serving; returns when the server accepts connections.

        Raises:
            socket.gaierror: the host name does not resolve (an :class:`OSError`).
            OSError: the address cannot be bound (``errno.EADDRINUSE``: the port is in use;
                ``errno.EADDRNOTAVAIL``: the host is not an address of this machine).
        """
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        where = f"{self._url_host}:{self._port}"
        try:
            family, _, _, _, address = socket.getaddrinfo(
                self.host, self._port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
        except socket.gaierror as exc:
            raise socket.gaierror(exc.errno, f"cannot listen on {where}: the host does not "
                                             f"resolve ({exc.strerror or exc})") from exc
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
        # says TCP, and without it every response waits ~40 ms for a delayed ACK.
        try:
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        except OSError as exc:  # e.g. IPv6 switched off
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}"
                          ) from exc
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:  # e.g. the port is in use: say where, and free the socket
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}"
                          ) from exc
        self._socket = sock
        config = uvicorn.Config(self._app, log_level="warning", access_log=False,
                                lifespan="on", timeout_keep_alive=30, backlog=2048)
        server = uvicorn.Server(config)
        self._server = server
        logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name="cogseg-emulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator failed to start")
            time.sleep(0.005)
        _log.info("emulator serving project %r at %s", self.state.project, self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and join the server thread (idempotent)."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.jobs.store.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def retired(self) -> bool:
        """Whether the Vision API is retired (its segment routes answer 404); settable while
        serving, e.g. to retire it in the middle of a run."""
        return self.availability.vision_retired

    @retired.setter
    def retired(self, value: bool) -> None:
        self.availability.vision_retired = bool(value)

    # --- addresses and credentials -------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        if self._socket is None:
            raise RuntimeError("the emulator is not running")
        return int(self._socket.getsockname()[1])

    @property
    def _url_host(self) -> str:
        """The host as a URL writes it (an IPv6 address in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:{port}`` (``http://[::1]:{port}`` on IPv6)."""
        return f"http://{self._url_host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The client-credentials token endpoint."""
        return f"{self.base_url}/oauth2/token"

    @property
    def project(self) -> str:
        """The project name."""
        return self.state.project

    @property
    def client_secret(self) -> Secret:
        """The client secret the token endpoint accepts."""
        return Secret(self.state.client_secret)

    @property
    def config(self) -> CdfConfig:
        """A ready client config using client credentials against this emulator."""
        creds = ClientCredentials(token_url=self.token_url, client_id=self.state.client_id,
                                  client_secret=self.client_secret,
                                  scopes=(f"{self.base_url}/.default",))
        # Plain HTTP by design, with throwaway credentials: allowed on any interface it binds.
        return CdfConfig(project=self.project, base_url=self.base_url, credentials=creds,
                         allow_insecure_http=True)

    def static_config(self, ttl_s: float | None = None) -> CdfConfig:
        """A client config with a freshly issued static token."""
        token, _ = self.state.issue_token(ttl_s)
        return CdfConfig(project=self.project, base_url=self.base_url,
                         credentials=StaticToken(token), allow_insecure_http=True)

    def issue_token(self, ttl_s: float | None = None, *,
                    data_set_ids: Iterable[int] | None = None) -> str:
        """A valid bearer token (for raw-HTTP tests); with ``data_set_ids`` it reads only the
        files of those data sets (others answer 403)."""
        return self.state.issue_token(ttl_s, data_set_ids=data_set_ids)[0]

    def env(self, ttl_s: float | None = None) -> dict[str, str]:
        """The variables :meth:`CdfConfig.from_env <cogseg_ml.config.CdfConfig.from_env>`
        (and every ``cogseg`` command) reads to use this emulator: ``COGNITE_PROJECT``,
        ``COGNITE_BASE_URL`` and ``COGNITE_TOKEN``, a static token issued now that lives
        ``ttl_s`` seconds (default: the emulator's ``token_ttl_s``). Served on an address
        other than loopback, ``COGSEG_ALLOW_INSECURE_HTTP=1`` too (the emulator speaks plain
        HTTP, with throwaway credentials)."""
        variables = {"COGNITE_PROJECT": self.project, "COGNITE_BASE_URL": self.base_url,
                     "COGNITE_TOKEN": self.issue_token(ttl_s)}
        if not _loopback(self.host):
            variables["COGSEG_ALLOW_INSECURE_HTTP"] = "1"
        return variables

    # --- content -----------------------------------------------------------------------------
    def add_image(self, data: bytes, name: str, *, mime_type: str | None = None,
                  external_id: str | None = None,
                  ground_truth: list[tuple[str, np.ndarray]] | None = None,
                  directory: str | None = None, source: str | None = None,
                  data_set_id: int | None = None, labels: Iterable[str] = (),
                  metadata: Mapping[str, str] | None = None, asset_ids: Iterable[int] = (),
                  instance_id: tuple[str, str] | None = None,
                  uploaded: bool = True) -> FileRecord:
        """Register one file (any bytes; eligibility is checked when a job is created).

        The listing fields (``directory`` ... ``uploaded``, ``instance_id`` for a CogniteFile
        node) are those of :meth:`~cogseg_ml.emulator.state.EmulatorState.add_file`, which
        list filters match.
        """
        return self.state.add_file(data, name, mime_type=mime_type, external_id=external_id,
                                   ground_truth=ground_truth, directory=directory,
                                   source=source, data_set_id=data_set_id, labels=labels,
                                   metadata=metadata, asset_ids=asset_ids,
                                   instance_id=instance_id, uploaded=uploaded)

    def add_synthetic(self, image: SyntheticImage, *, external_id: str | None = None,
                      fmt: str | None = None) -> FileRecord:
        """Register a synthetic image with its ground truth."""
        fmt = fmt or self.image_format
        name = image.name
        if fmt == "jpeg" and name.endswith(".png"):
            name = name[:-4] + ".jpg"
        data = encode_image(image.pixels, "jpeg" if fmt == "jpeg" else "png")
        return self.add_image(data, name, external_id=external_id or name,
                              ground_truth=[(o.category, o.mask) for o in image.objects])

    def add_folder(self, folder: str | Path) -> list[FileRecord]:
        """Register every ``.png``/``.jpg``/``.jpeg`` file of a folder (external id = name).

        Raises:
            FileNotFoundError, NotADirectoryError: ``folder`` is missing or not a folder.
        """
        root = Path(folder)
        if not root.is_dir():
            cls = NotADirectoryError if root.exists() else FileNotFoundError
            raise cls(f"{root} is not a folder of images" if root.exists()
                      else f"no such folder: {root}")
        out = []
        for path in sorted(root.iterdir()):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg") and path.is_file():
                out.append(self.add_image(path.read_bytes(), path.name, external_id=path.name))
        return out

    def replace_file(self, ref: int | str | FileIdentifier, data: bytes, *,
                     name: str | None = None, mime_type: str | None = None,
                     ground_truth: list[tuple[str, np.ndarray]] | None = None) -> FileRecord:
        """Replace a registered file's content (CDF's upload with overwrite); the new record.

        ``ref`` is the file's id (``int``), external id (``str``) or a :class:`FileIdentifier`.
        The id stays; ``lastUpdatedTime`` and ``uploadedTime`` become strictly greater than
        before; downloads and new jobs see the new bytes, while jobs created before finish on
        the old ones (see :meth:`EmulatorState.replace_file`). ``KeyError`` if there is no such
        file.
        """
        if isinstance(ref, FileIdentifier):
            ident = ref
        elif isinstance(ref, str):
            ident = FileIdentifier(external_id=ref)
        else:
            ident = FileIdentifier(id=ref)
        return self.state.replace_file(ident, data, name=name, mime_type=mime_type,
                                       ground_truth=ground_truth)

    def coco_boxes(self) -> dict[str, Any]:
        """A COCO detection file of the served files whose objects are known (the synthetic
        images), ready for ``cogseg label --coco-boxes`` and
        :func:`~cogseg_ml.samples.samples_from_coco`.

        One image per such file in the order they were added: ``id`` from 1, ``file_name``
        its external id (what ``--coco-file-key file_name`` looks up), ``width`` and
        ``height``. One annotation per object: ``bbox`` ``[x, y, w, h]`` in pixels, tight
        around its mask. Categories are the objects' names, sorted, numbered from 1. Files
        without ground truth (a folder of photos) are left out.
        """
        with self.state.lock:
            known = [f for f in sorted(self.state.files.values(), key=lambda f: f.id)
                     if f.ground_truth and f.external_id is not None]
        names = sorted({category for f in known for category, _ in f.ground_truth})
        ids = {name: i + 1 for i, name in enumerate(names)}
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for image_id, record in enumerate(known, start=1):
            height, width = record.ground_truth[0][1].shape
            images.append({"id": image_id, "file_name": record.external_id, "width": int(width),
                           "height": int(height)})
            for category, mask in record.ground_truth:
                ys, xs = np.nonzero(mask)
                if not len(xs):
                    continue
                x0, y0 = int(xs.min()), int(ys.min())
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": ids[category],
                                    "bbox": [x0, y0, int(xs.max()) + 1 - x0,
                                             int(ys.max()) + 1 - y0],
                                    "area": int(mask.sum()), "iscrowd": 0})
        return {"images": images, "annotations": annotations,
                "categories": [{"id": ids[n], "name": n} for n in names]}

    def write_boxes(self, path: str | Path) -> Path:
        """Write :meth:`coco_boxes` to a new file at ``path``, never over an existing one.

        The file appears whole or not at all (written beside it, then linked into place).

        Raises:
            FileExistsError: ``path`` exists (it is left as it was).
        """
        target = Path(path)
        text = json.dumps(self.coco_boxes(), indent=1) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".incomplete",
                                   dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            try:
                os.link(tmp, target)  # fails, never replaces, when target exists
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links
                with open(target, "x", encoding="utf-8") as out:
                    out.write(text)
        finally:
            os.unlink(tmp)
        return target

    def set_faults(self, *faults: Fault, seed: int | None = None) -> None:
        """Replace the fault rules (counts and the random stream start again)."""
        self.faults.reset(faults, seed)

    @property
    def requests(self) -> list[RequestLogEntry]:
        """A copy of the request log."""
        with self.state.lock:
            return list(self.state.request_log)

    def job(self, job_id: int) -> StoredJob:
        """A job's record (for tests)."""
        return self.jobs.jobs[job_id]
