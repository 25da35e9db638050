"""``cogseg emulator`` refuses bad input before it serves: fault rules of the wrong type or
range, hostile JSON, a seed out of range and an address it cannot use are exit 2 with one line
naming what to fix (never a traceback, never a server that answers 500 to every request); the
same rules hold for fault rules built in Python. A valid faults file with every field still
works over HTTP, and the emulator serves IPv6 loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cogseg_ml.cli import main
from cogseg_ml.emulator.faults import Fault, faults_from_data
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.errors import ValidationError

COGSEG = Path(sys.executable).parent / "cogseg"

#: A valid rule put before each bad one, so the message must name the right index.
GOOD = {"kind": "status", "status": 503, "times": 1}

#: field -> (bad value, fragments of the message besides "rule 1" and the field's name)
BAD_RULES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "status as a string": ({"kind": "status", "status": "503"}, ["200..599", "'503'"]),
    "status 0": ({"kind": "status", "status": 0}, ["200..599", "0"]),
    "status 999": ({"kind": "body", "status": 999}, ["200..599", "999"]),
    "status true": ({"kind": "status", "status": True}, ["200..599", "True"]),
    "status a float": ({"kind": "status", "status": 503.5}, ["200..599", "503.5"]),
    "delay as text": ({"kind": "delay", "delay_s": "slow"}, ["seconds", "'slow'"]),
    "negative delay": ({"kind": "delay", "delay_s": -1}, ["seconds", ">= 0"]),
    "times as text": ({"kind": "drop", "times": "3"}, ["count", "'3'"]),
    "negative times": ({"kind": "drop", "times": -2}, ["count", "-2"]),
    "body a number": ({"kind": "body", "body": 123}, ["text", "123"]),
    "a body with 204": ({"kind": "body", "body": "x", "status": 204}, ["204", "empty"]),
    "message an object": ({"kind": "job_fail", "message": {}}, ["text", "{}"]),
    "content type not Latin-1": ({"kind": "body", "content_type": "text/плохо"},
                                 ["Latin-1"]),
    "content type with a line break": ({"kind": "body", "content_type": "text/html\r\nX: 1"},
                                       ["control"]),
    "retry after with a line break": ({"kind": "status", "retry_after": "1\nX: 2"},
                                      ["control"]),
    "retry after an object": ({"kind": "status", "retry_after": {}}, ["seconds", "HTTP date"]),
    "probability as text": ({"kind": "drop", "probability": "0.5"}, ["[0, 1]", "'0.5'"]),
    "probability true": ({"kind": "drop", "probability": True}, ["[0, 1]", "True"]),
    "methods a string": ({"kind": "drop", "methods": "GET"}, ["list", "'GET'"]),
    "methods of numbers": ({"kind": "drop", "methods": [1]}, ["HTTP method", "1"]),
    "methods empty": ({"kind": "drop", "methods": []}, ["leave it out"]),
    "path_contains a number": ({"kind": "drop", "path_contains": 5}, ["text", "5"]),
    "after as text": ({"kind": "drop", "after": "yes"}, ["true or false", "'yes'"]),
    "kind a list": ({"kind": ["status"]}, ["status", "drop", "body"]),
}


def _field(case: str) -> str:
    rule = BAD_RULES[case][0]
    return next((k for k in rule if k != "kind"), "kind")  # the first field after the kind


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Input refused must be refused before the emulator starts serving."""
    def start(self: Emulator) -> Emulator:
        raise AssertionError("the emulator started with input it should have refused")

    monkeypatch.setattr(Emulator, "start", start)


@pytest.fixture
def no_listening(monkeypatch: pytest.MonkeyPatch) -> None:
    """An address that cannot be used must fail to start: an emulator that starts is stopped
    at once and the test fails (instead of serving until interrupted)."""
    real_start = Emulator.start

    def start(self: Emulator) -> Emulator:
        real_start(self)
        url = self.base_url
        self.stop()
        raise AssertionError(f"the emulator listened on {url}")

    monkeypatch.setattr(Emulator, "start", start)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage error
        code = int(str(exc.code))
    return code, capsys.readouterr().err


def _one_line(err: str) -> None:
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("cogseg: "), err


def _faults_file(tmp: Path, data: Any) -> str:
    p = tmp / "faults.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(p)


# --- the faults file, through the command line ---------------------------------------------


@pytest.mark.parametrize("case", list(BAD_RULES))
def test_a_bad_fault_value_is_exit_2_naming_rule_and_field(
        case: str, tmp_path: Path, no_serving: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    rule, fragments = BAD_RULES[case]
    path = _faults_file(tmp_path, [GOOD, rule])
    code, err = run_main(["emulator", "--port", "0", "--faults", path], capsys)
    assert code == 2, err
    _one_line(err)
    for fragment in ["--faults", "faults.json", "rule 1", repr(_field(case)), *fragments]:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize("text,fragments", [
    ("[" * 100_000 + "]" * 100_000, ["nested deeper"]),
    ('[{"kind": "delay", "delay_s": NaN}]', ["NaN"]),
    ('[{"kind": "status", "status": ' + "9" * 5000 + "}]", ["digits"]),
    ('[{"kind": "status", "message": "\\ud800"}]', ["surrogate"]),
    (b"\xff\xfe[]", ["UTF-8"]),
])
def test_hostile_json_in_the_faults_file_is_exit_2(
        text: str | bytes, fragments: list[str], tmp_path: Path, no_serving: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "faults.json"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    code, err = run_main(["emulator", "--port", "0", "--faults", str(p)], capsys)
    assert code == 2, err
    _one_line(err)
    for fragment in ["--faults", "faults.json", *fragments]:
        assert fragment in err, (fragment, err)


def test_bad_fault_rules_through_a_real_process(tmp_path: Path) -> None:
    for data, fragments in [([GOOD, {"kind": "status", "status": "503"}], ["rule 1", "status"]),
                            ("[" * 100_000 + "]" * 100_000, ["nested deeper"])]:
        proc = subprocess.run([str(COGSEG), "emulator", "--port", "0", "--faults",
                               _faults_file(tmp_path, data)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        _one_line(proc.stderr)
        for fragment in fragments:
            assert fragment in proc.stderr, (fragment, proc.stderr)


# --- fault rules in Python -------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_RULES))
def test_fault_rules_from_data_raise_a_validation_error(case: str) -> None:
    rule, fragments = BAD_RULES[case]
    with pytest.raises(ValidationError) as info:
        faults_from_data([GOOD, rule], "rules.json")
    message = str(info.value)
    for fragment in ["rules.json", "rule 1", repr(_field(case)), *fragments]:
        assert fragment in message, (fragment, message)
    assert info.value.rule == 1 and info.value.field == _field(case)


def test_faults_from_data_needs_a_list_of_objects() -> None:
    with pytest.raises(ValidationError, match="list of fault rules"):
        faults_from_data({"kind": "status"}, "rules.json")
    with pytest.raises(ValidationError, match="rule 2: .*JSON object"):
        faults_from_data([GOOD, GOOD, "status"], "rules.json")
    rules = faults_from_data([GOOD, {"kind": "drop", "methods": ["post"]}], "rules.json")
    assert rules == [Fault("status", status=503, times=1),
                     Fault("drop", methods=frozenset({"POST"}))]


@pytest.mark.parametrize("kwargs,field", [
    ({"status": "503"}, "status"),
    ({"delay_s": float("nan")}, "delay_s"),
    ({"times": 1.5}, "times"),
    ({"content_type": "text/\u2603"}, "content_type"),
    ({"message": "\ud800"}, "message"),
    ({"body": "\udfff"}, "body"),
])
def test_a_fault_built_in_python_checks_its_fields(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Fault("status", **kwargs)
    assert repr(field) in str(info.value) and info.value.field == field


def test_bad_fault_rules_over_http_are_400_and_keep_the_old_rules(
        make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator()
    admin = f"{emu.base_url}/_emulator/faults"
    for body in ({"faults": [GOOD, {"kind": "status", "status": "503"}]},
                 {"faults": "status"}, [GOOD], {"seed": [1], "faults": []},
                 {"seed": -1, "faults": []}):
        r = httpx.post(admin, json=body)
        assert r.status_code == 400, (body, r.text)
    r = httpx.post(admin, content=b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code == 400 and "nested deeper" in r.json()["error"]["message"]
    bad = httpx.post(admin, json={"faults": [GOOD, {"kind": "status", "status": 0}]})
    assert "rule 1" in bad.json()["error"]["message"]
    token = emu.issue_token()
    ok = httpx.post(f"{emu.base_url}/api/v1/projects/{emu.project}/files/byids",
                    json={"items": [{"externalId": "synthetic_00000.png"}]},
                    headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("status", [204, 304])
def test_answers_without_a_body_keep_the_connection_usable(
        status: int, make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(faults=[Fault("status", status=status, path_contains="/files/list"),
                                Fault("body", status=status, path_contains="/files/byids",
                                      times=1)])
    root = f"{emu.base_url}/api/v1/projects/{emu.project}"
    headers = {"Authorization": f"Bearer {emu.issue_token()}"}
    byids = {"items": [{"externalId": "synthetic_00000.png"}]}
    with httpx.Client(headers=headers, timeout=30) as http:  # one keep-alive connection
        first = http.post(f"{root}/files/byids", json=byids)
        second = http.post(f"{root}/files/list", json={"limit": 10})
        third = http.post(f"{root}/files/byids", json=byids)
    assert first.status_code == status and first.content == b""
    assert second.status_code == status and second.content == b""
    assert third.status_code == 200, third.text
    log = emu.requests[-3:]
    assert [e.fault for e in log] == [f"body-{status}", f"status-{status}", None]
    # The server kept the connection open (a body it may not send used to break it).
    assert len({e.client_port for e in log}) == 1, log


# --- a valid faults file with every field, over HTTP ----------------------------------------


EVERY_FIELD = [
    {"kind": "body", "probability": 1.0, "times": 1, "methods": ["post"],
     "path_contains": "/files/byids", "status": 418, "retry_after": "2", "delay_s": 0,
     "after": False, "message": "unused", "body": "<html>t\u00e9apot</html>",
     "content_type": "text/html; charset=utf-8"},
    {"kind": "status", "probability": 1, "times": 1, "methods": ["POST"],
     "path_contains": "/files/list", "status": 503, "retry_after": 7,
     "message": "try later"},
    {"kind": "delay", "delay_s": 0.01, "times": 1, "path_contains": "/files/byids"},
    {"kind": "job_fail", "times": 1, "message": "model crashed"},
    {"kind": "drop", "probability": 0, "after": True},
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., dict[str, Any]]]:
    """Start ``cogseg emulator`` as a real process; the ready line as a dict."""
    procs: list[subprocess.Popen[str]] = []

    def serve(*argv: str) -> dict[str, Any]:
        proc = subprocess.Popen([str(COGSEG), "emulator", "--port", "0", "--print-secret",
                                 *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()  # EOF (""), should it exit instead of serving
        assert line, proc.stderr.read()
        ready: dict[str, Any] = json.loads(line)
        return ready

    yield serve
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def _token(ready: dict[str, Any]) -> str:
    r = httpx.post(ready["token_url"], data={"grant_type": "client_credentials",
                                             "client_id": ready["client_id"],
                                             "client_secret": ready["client_secret"]})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_a_valid_faults_file_with_every_field_works_over_http(
        tmp_path: Path, served: Callable[..., dict[str, Any]]) -> None:
    ready = served("--synthetic", "1", "--faults", _faults_file(tmp_path, EVERY_FIELD))
    root = f"{ready['base_url']}/api/v1/projects/{ready['project']}"
    with httpx.Client(headers={"Authorization": f"Bearer {_token(ready)}",
                               "cdf-version": "beta"}, timeout=30) as http:
        byids = {"items": [{"externalId": "synthetic_00000.png"}]}
        first = http.post(f"{root}/files/byids", json=byids)
        assert first.status_code == 418 and first.text == "<html>t\u00e9apot</html>"
        assert first.headers["content-type"] == "text/html; charset=utf-8"
        second = http.post(f"{root}/files/list", json={"limit": 10})
        assert second.status_code == 503 and second.headers["retry-after"] == "7"
        assert second.json()["error"]["message"] == "try later"
        third = http.post(f"{root}/files/byids", json=byids)
        assert third.status_code == 200
        job = http.post(f"{root}/context/vision/segment",
                        json={"items": [{"fileExternalId": "synthetic_00000.png"}],
                              "points": [{"x": 0.5, "y": 0.5, "label": 1}]})
        assert job.status_code == 200, job.text
        stats = httpx.get(f"{ready['base_url']}/_emulator/stats").json()
        assert stats["faults_injected"] == {"body": 1, "status": 1, "delay": 1, "job_fail": 1,
                                            "drop": 0}


# --- --seed and --host -------------------------------------------------------------------------


@pytest.mark.parametrize("argv,fragments", [
    (["--seed", "-1"], ["--seed", "-1", "0..4294967295"]),
    (["--seed", "-1", "--synthetic", "2"], ["--seed", "-1", "0..4294967295"]),
    (["--seed", str(2**32)], ["--seed", str(2**32), "0..4294967295"]),
])
def test_a_seed_out_of_range_is_exit_2(argv: list[str], fragments: list[str],
                                       no_serving: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["emulator", "--port", "0", *argv], capsys)
    assert code == 2, err
    _one_line(err)
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_a_seed_at_the_ends_of_its_range_builds_an_emulator(tmp_path: Path) -> None:
    from cogseg_ml.cli import build_parser, emulator_from_args

    for seed in ("0", str(2**32 - 1)):
        args = build_parser().parse_args(["emulator", "--seed", seed, "--synthetic", "1"])
        assert len(emulator_from_args(args).state.files) == 1


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


@needs_ipv6
def test_the_emulator_serves_ipv6_loopback(make_emulator: Callable[..., Emulator]) -> None:
    emu = make_emulator(host="::1")
    assert emu.base_url == f"http://[::1]:{emu.port}"
    r = httpx.post(emu.token_url, data={"grant_type": "client_credentials",
                                        "client_id": emu.state.client_id,
                                        "client_secret": emu.client_secret.reveal()})
    assert r.status_code == 200, r.text


@needs_ipv6
def test_cogseg_emulator_serves_ipv6_loopback(served: Callable[..., dict[str, Any]]) -> None:
    ready = served("--host", "::1", "--synthetic", "1")
    assert ready["base_url"].startswith("http://[::1]:"), ready
    root = f"{ready['base_url']}/api/v1/projects/{ready['project']}"
    r = httpx.post(f"{root}/files/byids", json={"items": [{"externalId": "synthetic_00000.png"}]},
                   headers={"Authorization": f"Bearer {_token(ready)}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("host,fragments", [
    ("192.0.2.1", ["--host 192.0.2.1", "not an address of this machine"]),  # TEST-NET-1
    ("", ["--host", "address"]),
    ("127.0.0.1:8080", ["--host 127.0.0.1:8080", "--port"]),
    ("http://localhost", ["--host http://localhost", "address"]),
])
def test_a_host_that_cannot_be_used_is_exit_2_naming_the_host(
        host: str, fragments: list[str], no_listening: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["emulator", "--port", "0", "--host", host], capsys)
    assert code == 2, err
    _one_line(err)
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "--port 0" not in err and "in use" not in err, err


def test_a_bad_host_through_a_real_process() -> None:
    proc = subprocess.run([str(COGSEG), "emulator", "--port", "0", "--host", "192.0.2.1"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COGSEG_PROGRESS": "0"})
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr)
    assert "--host 192.0.2.1" in proc.stderr and "--port" not in proc.stderr, proc.stderr
