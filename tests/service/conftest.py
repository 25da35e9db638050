"""The segment service as a subprocess (``cogseg serve``) on a tiny random SAM 2.1, in front
of the emulator as the CDF project."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage

pytest.importorskip("transformers", reason="the sam2 extra (transformers) is needed")
pytest.importorskip("prometheus_client", reason="the serve extra is needed")

SEGMENT = "/context/vision/segment"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cogseg_ml.backends.sam2 import save_random_checkpoint

    return save_random_checkpoint(tmp_path_factory.mktemp("models") / "sam21-tiny", "sam2",
                                  seed=0)


@pytest.fixture(scope="module")
def cdf(images: list[SyntheticImage]) -> Iterator[Emulator]:
    """The emulator as the CDF project the service reads files from."""
    with Emulator(images=images[:3], processing_time_s=0.0) as emu:
        yield emu


class Service:
    """One ``cogseg serve`` process; its stderr goes to ``log``."""

    def __init__(self, args: list[str], log: Path, verify: Any = True) -> None:
        self.log = log
        self.args = args
        with log.open("ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "cogseg_ml.cli", "serve", *args],
                                         stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once bound (empty: it exited)
        if not line:
            self.proc.wait(30)
            raise AssertionError(f"cogseg serve exited {self.proc.returncode}: "
                                 f"{log.read_text(errors='replace')[-2000:]}")
        self.base_url = json.loads(line)["base_url"]
        self.http = httpx.Client(base_url=self.base_url, timeout=30, verify=verify)
        until(lambda: self._ready(), 60, "the service to be ready")

    def _ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def root(self, project: str) -> str:
        return f"/api/v1/projects/{project}"

    def metric(self, name: str) -> float:
        """The value of one unlabelled metric (or the sum over its labels)."""
        total = 0.0
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                if key == name or key.startswith(name + "{"):
                    total += float(value)
        return total

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.http.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.wait(60)


def until(check: Callable[[], Any], deadline_s: float, what: str) -> Any:
    """Poll ``check`` until it returns something true, at most ``deadline_s`` seconds."""
    end = time.monotonic() + deadline_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def serve(model_dir: Path, cdf: Emulator, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start ``cogseg serve`` against ``cdf`` (jobs db and cache in ``tmp_path``)."""
    started: list[Service] = []

    def start(*extra: str, verify: Any = True) -> Service:
        args = ["--model", str(model_dir), "--cdf-base-url", cdf.base_url, "--port", "0",
                "--device", "cpu", "--jobs-db", str(tmp_path / "jobs.sqlite"),
                "--cache", str(tmp_path / "cache" / "masks.sqlite"), *extra]
        svc = Service(args, tmp_path / "service.log", verify)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        if svc.proc.poll() is None:
            svc.stop(signal.SIGKILL)


def labelled_masks(lab: Any, samples: Any, out: Path) -> list[tuple[str, str, str]]:
    """Label ``samples`` (none may fail), write COCO to ``out``: each annotation's file, box
    and segmentation, sorted (to compare two labellers' masks exactly)."""
    report = lab.label(samples)
    assert report.failed == 0, report.failures
    lab.to_coco(out)
    coco = json.loads(out.read_text())
    files = {i["id"]: i["cdf_file"]["externalId"] for i in coco["images"]}
    return sorted((files[a["image_id"]], json.dumps(a["bbox"]),
                   json.dumps(a["segmentation"], sort_keys=True)) for a in coco["annotations"])


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, in ``folder``."""
    x509 = pytest.importorskip("cryptography.x509", reason="cryptography makes the test cert")
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
