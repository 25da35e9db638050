"""``cogseg serve`` on Ray Serve: ``ray.init(num_cpus=2)``, an ingress and two model
replicas, the emulator as the CDF project, real HTTP through Serve's proxy."""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("ray.serve", reason="the ray extra is needed")

import ray
from ray import serve

from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.service.ray import (
    APP_NAME,
    FixedWaitModel,
    RayServeOptions,
    SamModel,
    segment_application,
)
from tests.service.conftest import SEGMENT, labelled_masks, until

BETA = {"cdf-version": "beta"}
TWO = RayServeOptions(replicas=2, num_cpus_per_replica=0.5, batch_jobs=8)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def deploy(http: httpx.Client, make_model: Any, cdf: Emulator, folder: Path) -> None:
    app = segment_application(make_model, cdf.base_url, jobs_db=folder / "jobs.sqlite",
                              cache=folder / "cache.sqlite", options=TWO)
    serve.run(app, name=APP_NAME, route_prefix="/")
    until(lambda: http.get("/readyz").status_code == 200, 120, "the ingress to be ready")


def metric(http: httpx.Client, name: str) -> dict[str, float]:
    """Every sample of one metric: labels (or "") to value."""
    out = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            if key == name or key.startswith(name + "{"):
                out[key[len(name):]] = float(value)
    return out


def actors(deployment: str) -> list[Any]:
    """The replica actors of one deployment."""
    return [ray.get_actor(a["name"], namespace=a["namespace"])
            for a in ray.util.list_named_actors(all_namespaces=True)
            if deployment in a["name"]]


def post_jobs(http: httpx.Client, cdf: Emulator, n: int
              ) -> tuple[dict[str, str], str, list[int]]:
    """``n`` point jobs over the emulator's files, in turn: headers, the route, job ids."""
    head = {"Authorization": f"Bearer {cdf.issue_token()}", **BETA}
    root = f"/api/v1/projects/{cdf.project}{SEGMENT}"
    xids = sorted(f.external_id for f in cdf.state.files.values() if f.external_id)
    ids = []
    for k in range(n):
        r = http.post(root, headers=head, json={
            "items": [{"fileExternalId": xids[k % len(xids)]}],
            "points": [{"x": 0.1 + 0.06 * k, "y": 0.5, "label": 1}]})
        assert r.status_code == 200, r.text
        ids.append(r.json()["jobId"])
    return head, root, ids


def test_labeller_through_the_ingress_gives_the_in_process_masks(
        base_url: str, http: httpx.Client, cdf: Emulator, model_dir: Path,
        images: list[SyntheticImage], tmp_path: Path) -> None:
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.config import CdfConfig, StaticToken
    from cogseg_ml.labeler import SegmentationLabeler
    from tests.test_labeler import samples_for

    deploy(http, functools.partial(SamModel, str(model_dir), "cpu"), cdf, tmp_path)
    samples = samples_for(images[:3])
    token = cdf.issue_token()
    got = {}
    for name, lab in (
            ("ray", SegmentationLabeler(
                CdfConfig(project=cdf.project, base_url=base_url, allow_insecure_http=True,
                          credentials=StaticToken(token)),
                cache=tmp_path / "ray-cache.sqlite", workdir=tmp_path / "rw", progress=False)),
            ("local", SegmentationLabeler(
                LocalSamBackend.from_pretrained(model_dir, device="cpu"),
                config=cdf.static_config(), cache=tmp_path / "local.sqlite",
                workdir=tmp_path / "lw", progress=False))):
        with lab:
            got[name] = labelled_masks(lab, samples, tmp_path / f"{name}.json")
    assert len(got["local"]) == sum(len(s.instances) for s in samples)
    assert got["ray"] == got["local"]
    by_replica = metric(http, "cogseg_service_replica_jobs")
    assert sum(by_replica.values()) == len(got["local"])
    # Routing by content is a preference (a busy replica is passed over), but no replica
    # encodes an image twice: at most one pass per image and replica, never one per job.
    assert 3 <= metric(http, "cogseg_service_encoder_images")[""] <= 2 * 3 < len(got["ray"])


def test_a_replica_killed_mid_run_loses_and_duplicates_no_job(
        http: httpx.Client, cdf: Emulator, tmp_path: Path) -> None:
    gate = tmp_path / "release"
    deploy(http, functools.partial(FixedWaitModel, 0.0, str(gate)), cdf, tmp_path)
    head, root, ids = post_jobs(http, cdf, 12)
    # Every replica holds jobs (the gate is shut): kill one of them mid-job.
    until(lambda: metric(http, "cogseg_service_jobs").get('{status="Running"}', 0) >= 2, 60,
          "jobs to be running")
    replicas = actors("SegmentModel")
    assert len(replicas) == 2, replicas
    ray.kill(replicas[0], no_restart=True)
    until(lambda: metric(http, "cogseg_service_replica_calls_lost").get("", 0) >= 1, 60,
          "the lost call to be seen")
    gate.touch()

    def status(job_id: int) -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(f"{root}/{job_id}", headers=head).json()
        return body if body["status"] in ("Completed", "Failed") else None

    done = [until(lambda j=j: status(j), 120, f"job {j}") for j in ids]  # type: ignore[misc]
    assert [d["status"] for d in done] == ["Completed"] * len(ids)
    assert sorted(d["jobId"] for d in done) == sorted(ids)
    jobs = metric(http, "cogseg_service_jobs")
    assert jobs['{status="Completed"}'] == len(ids) and sum(jobs.values()) == len(ids)
    assert sum(metric(http, "cogseg_service_replica_jobs").values()) == len(ids)  # once each


@pytest.mark.ray_cluster
def test_the_ingress_killed_with_jobs_accepted_loses_none(
        http: httpx.Client, cdf: Emulator, tmp_path: Path) -> None:
    gate = tmp_path / "release"
    deploy(http, functools.partial(FixedWaitModel, 0.0, str(gate)), cdf, tmp_path)
    head, root, ids = post_jobs(http, cdf, 6)
    until(lambda: metric(http, "cogseg_service_jobs").get('{status="Running"}', 0) >= 1, 60,
          "jobs to be running")
    (ingress,) = actors("SegmentIngress")
    ray.kill(ingress, no_restart=True)
    gate.touch()  # the replicas may finish now: their answers go to a dead ingress

    def status(job_id: int) -> str | None:
        try:
            r = http.get(f"{root}/{job_id}", headers=head)
        except httpx.TransportError:
            return None
        if r.status_code != 200:  # the new ingress is not up yet
            return None
        body: dict[str, Any] = r.json()
        return str(body["status"]) if body["status"] in ("Completed", "Failed") else None

    assert [until(lambda j=j: status(j), 120, f"job {j}") for j in ids] == \
        ["Completed"] * len(ids)  # type: ignore[misc]
    jobs = metric(http, "cogseg_service_jobs")
    assert sum(jobs.values()) == len(ids)  # nothing lost, no job made twice
