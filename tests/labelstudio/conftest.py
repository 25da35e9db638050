"""A real Label Studio server on loopback (``make test-labelstudio``; not in the default run).

Label Studio (pip ``label-studio`` 1.23) lives in a virtual environment of its own,
``COGSEG_LABELSTUDIO_VENV`` (default ``build/labelstudio-venv``, made by the make target): its
Django and its pins stay out of ``.venv``. The server runs with SQLite and its media in a
temporary folder, a user with a known legacy token (``--user-token``, legacy tokens enabled for
the organisation: ``--enable-legacy-api-token``), no telemetry (``SENTRY_DSN`` empty,
``COLLECT_ANALYTICS=false``, no version check), and local-file serving on for the folder route
(its document root: the session's folder for folder exports).

Predictions are checked with ``label_studio_sdk``'s own validator, run in that environment
(label-studio pulls it in): installed into ``.venv`` it would move numpy back to 2.2 (its
opencv-python-headless 4.12 pin) and bring black, isort, nltk and requests-mock along, so it is
not in the ``dev`` extra.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = Path(__file__).with_name("validate_predictions.py")
USER, PASSWORD, TOKEN = "cogseg@example.com", "cogseg-test-pass", "cogseg0123456789abcdef"
#: The first start migrates the SQLite database: about a minute on an idle 2-core machine,
#: over three under load.
START_DEADLINE_S = 600.0


def _venv() -> Path:
    venv = Path(os.environ.get("COGSEG_LABELSTUDIO_VENV", ROOT / "build" / "labelstudio-venv"))
    if not (venv / "bin" / "label-studio").is_file():
        raise pytest.UsageError(f"no Label Studio in {venv}; `make test-labelstudio` installs "
                                "it there (or set COGSEG_LABELSTUDIO_VENV)")
    return venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """The running server: its URL, token, the folder it may serve local files from, and an
    httpx client authenticated with the token."""

    url: str
    token: str
    venv: Path
    document_root: Path
    http: httpx.Client

    def tasks(self, project: int) -> list[dict[str, Any]]:
        """Every task of ``project`` with its predictions and annotations."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.http.get("/api/tasks/", params={"project": project, "page": page,
                                                        "page_size": 100, "fields": "all"})
            body.raise_for_status()
            data = body.json()
            out.extend(data["tasks"])
            if not data["tasks"] or len(out) >= data["total"]:
                return out
            page += 1

    def project_id(self, title: str) -> int:
        found = [p for p in self.http.get("/api/projects/", params={"title": title}).json()
                 ["results"] if p["title"] == title]
        assert len(found) == 1, found
        return int(found[0]["id"])

    def validate(self, config: str, predictions: Sequence[dict[str, Any]]) -> list[str]:
        """Label Studio SDK's own validator (``LabelInterface.validate_prediction``), run in
        Label Studio's environment: the errors it finds, one string each."""
        run = subprocess.run([str(self.venv / "bin" / "python"), str(VALIDATOR)],
                             input=json.dumps({"config": config, "predictions": predictions}),
                             capture_output=True, text=True, check=True, timeout=300)
        errors: list[str] = json.loads(run.stdout)
        return errors


@dataclass
class _Started:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    document_root: Path
    venv: Path


@pytest.fixture(scope="session")
def _started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Started]:
    """The server process, started (it boots while the demo labels its images)."""
    venv = _venv()
    data = tmp_path_factory.mktemp("labelstudio-data")
    docs = tmp_path_factory.mktemp("labelstudio-files")
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "SENTRY_DSN": "",
           "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false",
           "LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(docs)}
    env.pop("LABEL_STUDIO_API_KEY", None)
    log = data / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host",
             "127.0.0.1", "--port", str(port), "--data-dir", str(data), "--username", USER,
             "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        yield _Started(proc, f"http://127.0.0.1:{port}", log, docs, venv)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="session")
def server(_started: _Started, demo: Demo) -> Iterator[Server]:
    """The server once it answers with the token."""
    http = httpx.Client(base_url=_started.url, headers={"Authorization": f"Token {TOKEN}"},
                        timeout=120)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:  # readiness: bounded by the deadline, not a timing assumption
            if _started.proc.poll() is not None:
                raise RuntimeError("Label Studio exited on start:\n" +
                                   _started.log.read_text(errors="replace")[-3000:])
            try:
                if http.get("/api/current-user/whoami").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio did not answer in {START_DEADLINE_S:.0f} s")
            time.sleep(0.5)
        yield Server(_started.url, TOKEN, _started.venv, _started.document_root, http)
    finally:
        http.close()


@dataclass
class Demo:
    """``cogseg demo``'s labels file and mask cache (the images' bytes)."""

    labels: Path
    cache: Path


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    subprocess.run([sys.executable, "-m", "cogseg_ml.cli", "demo", "--out", str(out),
                    "--quiet"], check=True, timeout=600, cwd=ROOT)
    return Demo(out / "coco.json", out / "cache")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test here needs the server: marked ``labelstudio`` (deselected by the default
    ``-m`` of pyproject.toml; ``make test-labelstudio`` runs ``-m labelstudio``)."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.labelstudio)
