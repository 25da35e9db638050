"""Shared fixtures: a clean environment, synthetic images, and emulators on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage, make_dataset

_CDF_VARS = [k for k in os.environ if k.startswith(("COGNITE_", "IDP_"))]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                  ) -> None:
    """No test sees the developer's CDF credentials or writes to the user's cache folder."""
    for k in _CDF_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("COGSEG_CACHE_DIR", str(tmp_path_factory.mktemp("cogseg-cache")))


@pytest.fixture(scope="session")
def images() -> list[SyntheticImage]:
    """Six 240x320 synthetic images with three shapes each (PNG in the emulator)."""
    return make_dataset(6, seed=1, height=240, width=320)


@pytest.fixture(scope="session")
def shared_emulator(images: list[SyntheticImage]) -> Iterator[Emulator]:
    """One emulator for tests that do not change its faults or settings."""
    with Emulator(images=images, processing_time_s=0.02, concurrency=8) as emu:
        yield emu


@pytest.fixture
def make_emulator(images: list[SyntheticImage]) -> Iterator[Callable[..., Emulator]]:
    """Start a fresh emulator with the given options; stopped after the test."""
    started: list[Emulator] = []

    def factory(**kw: Any) -> Emulator:
        kw.setdefault("images", images)
        kw.setdefault("processing_time_s", 0.02)
        emu = Emulator(**kw).start()
        started.append(emu)
        return emu

    yield factory
    for emu in started:
        emu.stop()


_OPEN_APIS: list[RawApi] = []


@pytest.fixture(autouse=True)
def _close_raw_apis() -> Iterator[None]:
    yield
    while _OPEN_APIS:
        _OPEN_APIS.pop().http.close()


class RawApi:
    """Raw httpx calls against an emulator (no cogseg client involved); closed after the test."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.token = emu.issue_token()
        self.http = httpx.Client(timeout=10)
        _OPEN_APIS.append(self)
        self.root = f"{emu.base_url}/api/v1/projects/{emu.project}"

    def headers(self, beta: bool = True, token: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {token or self.token}"}
        if beta:
            h["cdf-version"] = "beta"
        return h

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return self.http.post(self.root + path, json=body, headers=self.headers(**kw))

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(self.root + path, headers=self.headers(**kw))

    def file_id(self, external_id: str) -> int:
        r = self.post("/files/byids", {"items": [{"externalId": external_id}]})
        return int(r.json()["items"][0]["id"])


@pytest.fixture
def raw(shared_emulator: Emulator) -> RawApi:
    return RawApi(shared_emulator)


def wait_terminal(api: RawApi, job_id: int, timeout: float = 10.0) -> dict[str, Any]:
    """Poll a job over raw HTTP until Completed or Failed."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"/context/vision/segment/{job_id}").json()
        if body["status"] in ("Completed", "Failed"):
            return body
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


@pytest.fixture
def env(make_emulator: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """A fresh emulator whose ``COGNITE_*`` variables (and no progress bars) are this test's
    environment, as a user's shell would hold them for the command line."""
    emu = make_emulator()
    monkeypatch.setenv("COGNITE_PROJECT", emu.project)
    monkeypatch.setenv("COGNITE_BASE_URL", emu.base_url)
    monkeypatch.setenv("COGNITE_TOKEN", emu.issue_token())
    monkeypatch.setenv("COGSEG_PROGRESS", "0")
    return emu
