"""``cogseg serve`` end to end on the CPU: the emulator is the CDF project, the service a
subprocess on a tiny random SAM 2.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from tests.service.conftest import SEGMENT, Service, labelled_masks, self_signed, until

BETA = {"cdf-version": "beta"}


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **BETA}


def post_job(svc: Service, cdf: Emulator, token: str, body: dict[str, Any]) -> httpx.Response:
    return svc.http.post(svc.root(cdf.project) + SEGMENT, json=body, headers=headers(token))


def wait_done(svc: Service, cdf: Emulator, token: str, job_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = svc.http.get(f"{svc.root(cdf.project)}{SEGMENT}/{job_id}",
                            headers=headers(token)).json()
        return body if body["status"] in ("Completed", "Failed") else None
    return until(done, 60, f"job {job_id}")


def box_prompts(images: list[SyntheticImage]) -> list[tuple[str, dict[str, float]]]:
    out = []
    for im in images[:3]:
        for o in im.objects:
            b = o.box()
            out.append((im.name, {"xMin": b.x_min, "yMin": b.y_min, "xMax": b.x_max,
                                  "yMax": b.y_max}))
    return out


def test_labeller_through_the_service_gives_the_in_process_masks(
        serve: Any, cdf: Emulator, model_dir: Path, images: list[SyntheticImage],
        tmp_path: Path) -> None:
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.config import CdfConfig, StaticToken
    from cogseg_ml.labeler import SegmentationLabeler
    from cogseg_ml.prompts import FileRef, Point, Prompt
    from tests.test_labeler import samples_for

    svc = serve()
    token = cdf.issue_token()
    samples = samples_for(images[:3])
    # A point prompt too: exactness must not depend on the prompt kind.
    samples[0] = type(samples[0])(samples[0].file, samples[0].instances + (
        type(samples[0].instances[0])(Prompt(points=(Point(0.5, 0.5, 1),)), "object"),))
    remote = SegmentationLabeler(
        CdfConfig(project=cdf.project, base_url=svc.base_url, credentials=StaticToken(token),
                  allow_insecure_http=True),
        cache=tmp_path / "remote-cache.sqlite", workdir=tmp_path / "rw", progress=False)
    local = SegmentationLabeler(LocalSamBackend.from_pretrained(model_dir, device="cpu"),
                                config=cdf.static_config(), cache=tmp_path / "local.sqlite",
                                workdir=tmp_path / "lw", progress=False)
    got = {}
    for name, lab in (("remote", remote), ("local", local)):
        got[name] = labelled_masks(lab, samples, tmp_path / f"{name}.json")
    assert len(got["local"]) == sum(len(s.instances) for s in samples)
    assert got["remote"] == got["local"]
    assert FileRef(external_id=images[0].name)  # the samples name files by external id


def test_refused_token_missing_file_and_unknown_job(serve: Any, cdf: Emulator) -> None:
    svc = serve()
    token = cdf.issue_token()
    body = {"items": [{"fileExternalId": "does-not-exist"}], "points": [{"x": 0.5, "y": 0.5,
                                                                         "label": 1}]}
    missing = post_job(svc, cdf, token, body)
    assert missing.status_code == 400
    assert missing.json()["error"]["missing"] == [{"externalId": "does-not-exist"}]

    real = {"items": [{"fileExternalId": cdf_external_ids(cdf)[0]}],
            "points": [{"x": 0.5, "y": 0.5, "label": 1}]}
    refused = post_job(svc, cdf, "not-a-token-cdf-knows", real)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == 401
    no_header = svc.http.post(svc.root(cdf.project) + SEGMENT, json=real, headers=BETA)
    assert no_header.status_code == 401
    assert svc.metric("cogseg_service_jobs_accepted_total") == 0

    ok = post_job(svc, cdf, token, real)
    assert ok.status_code == 200, ok.text
    job = ok.json()
    assert job["status"] == "Queued" and job["points"] == real["points"]
    # Reading the result needs a token CDF accepts for the job's file.
    denied = svc.http.get(f"{svc.root(cdf.project)}{SEGMENT}/{job['jobId']}",
                          headers=headers("another-unknown-token"))
    assert denied.status_code == 401
    done = wait_done(svc, cdf, token, job["jobId"])
    assert done["status"] == "Completed"
    assert done["items"][0]["segments"][0]["polygons"]
    unknown = svc.http.get(f"{svc.root(cdf.project)}{SEGMENT}/123", headers=headers(token))
    assert unknown.status_code == 400
    assert unknown.json()["error"]["missing"] == [{"jobId": 123}]


def cdf_external_ids(cdf: Emulator) -> list[str]:
    with cdf.state.lock:
        return sorted(r.external_id for r in cdf.state.files.values() if r.external_id)


def cdf_images_first(cdf: Emulator) -> str:
    return cdf_external_ids(cdf)[0]


def test_twelve_prompts_on_one_image_cost_one_encoder_pass(serve: Any, cdf: Emulator) -> None:
    svc = serve()
    token = cdf.issue_token()
    xid = cdf_external_ids(cdf)[1]
    before = svc.metric("cogseg_service_encoder_images")
    downloads = sum("/files/download/" in r.path for r in cdf.requests)
    ids = []
    for k in range(12):
        body = {"items": [{"fileExternalId": xid}],
                "points": [{"x": 0.1 + 0.06 * k, "y": 0.5, "label": 1}]}
        r = post_job(svc, cdf, token, body)
        assert r.status_code == 200, r.text
        ids.append(r.json()["jobId"])
    for job_id in ids:
        assert wait_done(svc, cdf, token, job_id)["status"] == "Completed"
    assert svc.metric("cogseg_service_encoder_images") - before == 1
    # The image was downloaded once for the twelve jobs (once per content version).
    assert sum("/files/download/" in r.path for r in cdf.requests) - downloads == 1
    assert svc.metric("cogseg_service_decoder_prompts") >= 12
    assert svc.metric('cogseg_service_jobs{status="Completed"}') >= 12
    assert svc.metric("cogseg_service_job_latency_seconds_count") >= 12


def test_sigkill_loses_no_accepted_job_and_the_token_is_never_kept(
        serve: Any, cdf: Emulator, tmp_path: Path) -> None:
    svc = serve()
    token = cdf.issue_token()
    ids = []
    responses = []
    for k, xid in enumerate(cdf_external_ids(cdf) * 3):
        body = {"items": [{"fileExternalId": xid}],
                "points": [{"x": 0.2 + 0.05 * k, "y": 0.4, "label": 1}]}
        r = post_job(svc, cdf, token, body)
        assert r.status_code == 200, r.text
        responses.append(r.text)
        ids.append(r.json()["jobId"])
    assert svc.stop(signal.SIGKILL) == -signal.SIGKILL
    again = serve()
    for job_id in ids:
        done = wait_done(again, cdf, token, job_id)
        assert done["status"] == "Completed", (done, again.log.read_text(errors="replace"))
        responses.append(json.dumps(done))
    assert again.stop(signal.SIGTERM) == 0  # SIGTERM: stop accepting, persist, exit 0
    kept = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("jobs.sqlite") for p in kept)
    assert (tmp_path / "service.log").read_text(errors="replace").count("accepted") >= len(ids)
    for p in kept:
        assert token.encode() not in p.read_bytes(), p
    assert not any(token in text for text in responses)


def test_sdk_generic_requests_create_and_read_a_job(serve: Any, cdf: Emulator) -> None:
    sdk = pytest.importorskip("cognite.client", reason="cognite-sdk (dev extra) is needed")
    from cognite.client.credentials import Token

    svc = serve()
    cfg = sdk.ClientConfig(client_name="cogseg-tests", project=cdf.project,
                           credentials=Token(cdf.issue_token()), base_url=svc.base_url)
    client = sdk.CogniteClient(cfg)
    path = f"/api/v1/projects/{cdf.project}{SEGMENT}"
    created = client.post(path, json={"items": [{"fileExternalId": cdf_external_ids(cdf)[2]}],
                                      "points": [{"x": 0.5, "y": 0.5, "label": 1}]},
                          headers=BETA).json()
    assert created["status"] == "Queued"

    def read() -> dict[str, Any] | None:
        body = client.get(f"{path}/{created['jobId']}", headers=BETA).json()
        return body if body["status"] == "Completed" else None
    done = until(read, 60, "the SDK's job")
    assert done["items"][0]["segments"]


def test_a_non_loopback_bind_without_tls_is_refused(model_dir: Path, cdf: Emulator) -> None:
    run = subprocess.run([sys.executable, "-m", "cogseg_ml.cli", "serve", "--model",
                          str(model_dir), "--cdf-base-url", cdf.base_url, "--host", "0.0.0.0",
                          "--port", "0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-insecure-http" in lines[0] and "--tls-cert" in lines[0]
    assert run.stdout == ""


def test_a_caller_reading_only_the_first_line_never_stalls_the_server(
        serve: Any, cdf: Emulator) -> None:
    """Access lines go to stderr: stdout holds the one JSON line, so a full stdout pipe nobody
    reads (this fixture reads only that line) cannot block the server."""
    svc = serve()
    for _ in range(1500):  # about 100 KB of access lines: more than a pipe's buffer
        assert svc.http.get("/healthz", timeout=10).status_code == 200
    assert svc.stop(signal.SIGTERM) == 0
    assert svc.log.read_text(errors="replace").count("GET /healthz") >= 1500


def test_a_local_labeller_on_the_service_host_reuses_its_results(
        serve: Any, cdf: Emulator, model_dir: Path, images: list[SyntheticImage],
        tmp_path: Path) -> None:
    """The service writes its answers to the mask cache under the keys the labeller with the
    same local model looks up: labelling the same prompts there encodes no image."""
    from cogseg_ml.backends.local_sam import LocalSamBackend
    from cogseg_ml.labeler import SegmentationLabeler
    from tests.test_labeler import samples_for

    svc = serve()
    token = cdf.issue_token()
    samples = samples_for(images[:1])
    for inst in samples[0].instances:
        b = inst.prompt.box
        assert b is not None
        r = post_job(svc, cdf, token, {
            "items": [{"fileExternalId": samples[0].file.external_id}], "points": [],
            "boundingBox": {"xMin": b.x_min, "yMin": b.y_min, "xMax": b.x_max,
                            "yMax": b.y_max}})
        assert r.status_code == 200, r.text
        assert wait_done(svc, cdf, token, r.json()["jobId"])["status"] == "Completed"
    assert svc.stop(signal.SIGTERM) == 0
    backend = LocalSamBackend.from_pretrained(model_dir, device="cpu")
    lab = SegmentationLabeler(backend, config=cdf.static_config(),
                              cache=tmp_path / "cache" / "masks.sqlite",
                              workdir=tmp_path / "w", progress=False)
    report = lab.label(samples)
    assert report.failed == 0 and report.labelled == len(samples[0].instances)
    assert backend.encoder_calls == 0


def test_tls_serves_https_and_the_cdf_errors_are_counted(serve: Any, cdf: Emulator,
                                                          tmp_path: Path) -> None:
    import ssl

    cert, key = self_signed(tmp_path)
    svc = serve("--tls-cert", str(cert), "--tls-key", str(key),
                verify=ssl.create_default_context(cafile=str(cert)))
    assert svc.base_url.startswith("https://")
    refused = post_job(svc, cdf, "refused-token", {
        "items": [{"fileExternalId": cdf_external_ids(cdf)[0]}],
        "points": [{"x": 0.5, "y": 0.5, "label": 1}]})
    assert refused.status_code == 401
    assert svc.metric('cogseg_service_cdf_errors_total{reason="401"}') == 1


def test_a_result_goes_only_to_a_token_that_reads_the_jobs_file(
        serve: Any, cdf: Emulator, images: list[SyntheticImage]) -> None:
    from cogseg_ml.emulator.synthetic_images import encode_image

    svc = serve()
    name = "restricted-scope.png"
    ours, theirs = cdf.state.add_data_set("ours"), cdf.state.add_data_set("theirs")
    cdf.add_image(encode_image(images[0].pixels), name, external_id=name, data_set_id=ours)
    owner = cdf.issue_token()  # reads every file
    insider = cdf.issue_token(data_set_ids=[ours])
    outsider = cdf.issue_token(data_set_ids=[theirs])  # valid, but another data set
    body = {"items": [{"fileExternalId": name}], "points": [{"x": 0.5, "y": 0.5, "label": 1}]}
    accepted = svc.metric("cogseg_service_jobs_accepted_total")
    refused = post_job(svc, cdf, outsider, body)
    assert refused.status_code == 403, refused.text
    assert svc.metric("cogseg_service_jobs_accepted_total") == accepted  # no job
    job_id = post_job(svc, cdf, owner, body).json()["jobId"]
    done = wait_done(svc, cdf, owner, job_id)
    assert done["status"] == "Completed" and done["items"][0]["segments"]
    url = f"{svc.root(cdf.project)}{SEGMENT}/{job_id}"
    for _ in range(2):  # the refusal is not remembered as access
        r = svc.http.get(url, headers=headers(outsider))
        assert r.status_code == 403, r.text
        assert "items" not in r.json() and "segments" not in r.text
    seen = svc.http.get(url, headers=headers(insider))
    assert seen.status_code == 200 and seen.json() == done


def test_our_client_honours_the_services_429_and_retry_after(serve: Any, cdf: Emulator
                                                             ) -> None:
    from cogseg_ml.api.client import SegmentationClient
    from cogseg_ml.config import CdfConfig, RetryConfig, StaticToken
    from cogseg_ml.prompts import FileRef, Point

    svc = serve("--rate-limit", "0.5", "--burst", "1")  # Retry-After: 2 s
    accepted = svc.metric("cogseg_service_jobs_accepted_total")
    # Without Retry-After this client's own backoff (10-40 ms, 4 tries) ends long before
    # the service lets the token in again: only waiting as told gets both jobs through.
    retry = RetryConfig(max_attempts=4, backoff_base_s=0.01, max_backoff_s=5.0,
                        total_timeout_s=30.0)
    cfg = CdfConfig(project=cdf.project, base_url=svc.base_url, allow_insecure_http=True,
                    credentials=StaticToken(cdf.issue_token()), retry=retry)
    with SegmentationClient(cfg) as client:
        jobs = [client.create_job(FileRef(external_id=xid), points=[Point(0.5, 0.5, 1)])
                for xid in cdf_external_ids(cdf)[:2]]
    assert len({j.job_id for j in jobs}) == 2
    assert svc.metric("cogseg_service_rate_limited_total") >= 1
    assert svc.metric("cogseg_service_jobs_accepted_total") - accepted == 2  # none twice
