"""``cogseg serve --ray`` as a user runs it: a local Ray cluster of its own, one JSON line,
a job through Serve's proxy over TLS, SIGTERM and exit 0; the jobs database keeps the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve", reason="the ray extra is needed")

from cogseg_ml.emulator.server import Emulator
from cogseg_ml.service.job_store import JobStore
from tests.service.conftest import SEGMENT, self_signed, until


@pytest.mark.ray_cluster
def test_serve_ray_answers_a_job_and_sigterm_exits_0(cdf: Emulator, model_dir: Path,
                                                     tmp_path: Path) -> None:
    import ssl

    cert, key = self_signed(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
    proc = subprocess.Popen(
        [sys.executable, "-m", "cogseg_ml.cli", "serve", "--ray", "--model", str(model_dir),
         "--tls-cert", str(cert), "--tls-key", str(key),
         "--cdf-base-url", cdf.base_url, "--port", "0", "--device", "cpu", "--replicas", "1",
         "--num-cpus-per-replica", "0.5", "--jobs-db", str(tmp_path / "jobs.sqlite"),
         "--cache", str(tmp_path / "cache.sqlite")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"cogseg serve --ray exited {proc.wait(60)}"
        info = json.loads(line)
        assert info["base_url"].startswith("https://")
        head = {"Authorization": f"Bearer {cdf.issue_token()}", "cdf-version": "beta"}
        root = f"/api/v1/projects/{cdf.project}{SEGMENT}"
        xid = sorted(f.external_id for f in cdf.state.files.values() if f.external_id)[0]
        tls = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=info["base_url"], timeout=60, verify=tls) as http:
            r = http.post(root, headers=head, json={
                "items": [{"fileExternalId": xid}],
                "points": [{"x": 0.5, "y": 0.5, "label": 1}]})
            assert r.status_code == 200, r.text
            job_id = r.json()["jobId"]

            def done() -> dict | None:
                body = http.get(f"{root}/{job_id}", headers=head).json()
                return body if body["status"] in ("Completed", "Failed") else None

            body = until(done, 120, "the job")
        assert body["status"] == "Completed" and body["items"][0]["segments"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    kept = JobStore(tmp_path / "jobs.sqlite").get(job_id)
    assert kept is not None and kept.status.value == "Completed"
