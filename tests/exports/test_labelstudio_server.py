"""The Label Studio push's pieces that need no Label Studio: task keys, options, the token kept
out of every message, and each failure mapped to its typed error.

Label Studio itself cannot run in the default suite (a large install, minutes to start), so
the failures are answered by a loopback HTTP server that replies as Label Studio 1.23 does for
them (the same status codes and bodies); everything else runs against the real server in
``tests/labelstudio`` (``make test-labelstudio``)."""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cogseg_ml.cli import main
from cogseg_ml.errors import ValidationError
from cogseg_ml.exports.labelstudio_client import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioError,
    LabelStudioProjectError,
    LabelStudioRequestError,
    LabelStudioUnreachable,
    Secret,
)
from cogseg_ml.exports.labelstudio_server import push_labelstudio, task_key
from tests.exports.labelsets import LabelSet

LEGACY = "f3a1c0ffee0123456789abcdef0123456789abcd"
#: the shape of a personal access token (a JWT refresh token); not a real one
PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJlLW5vdC1yZWFs"
WHOAMI = {"id": 1, "email": "a@example.com"}


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: bytes


@dataclass
class FakeLabelStudio:
    """Answers ``routes[(method, path)]``: a list of ``(status, headers, body)`` replies, used in
    order (the last one repeats); records every request."""

    routes: dict[tuple[str, str], list[tuple[int, dict[str, str], bytes]]] = \
        field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def reply(self, method: str, path: str, status: int, body: Any = None,
              headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {"content-type": "application/json", **(headers or {})}
        self.routes.setdefault((method, path), []).append((status, hdrs, raw))


@pytest.fixture
def fake() -> Iterator[FakeLabelStudio]:
    state = FakeLabelStudio()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            state.seen.append(Seen(self.command, path, self.headers.get("authorization"),
                                   body))
            replies = state.routes.get((self.command, path)) or \
                [(404, {"content-type": "application/json"}, b'{"detail": "Not found."}')]
            status, headers, raw = replies.pop(0) if len(replies) > 1 else replies[0]
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _no_token_in(exc: BaseException, *tokens: str) -> None:
    shown = [str(exc), repr(exc), repr(exc.args), repr(vars(exc)),
             repr(pickle.loads(pickle.dumps(exc)))]
    for token in tokens:
        assert not any(token in s for s in shown)


# --- task keys --------------------------------------------------------------------------------

def test_task_key_names_the_cdf_file_and_its_bytes() -> None:
    rec = {"id": 7, "cdf_file": {"externalId": "a.png"}, "sha256": "ab" * 32}
    assert task_key(rec) == 'cdf:{"externalId":"a.png"}@sha256:' + "ab" * 32
    assert task_key(dict(rec, id=8, file_name="other.png")) == task_key(rec)  # not the COCO id
    assert task_key(dict(rec, sha256="cd" * 32)) != task_key(rec)  # the file was replaced
    assert task_key(dict(rec, cdf_file={"id": 5})) != task_key(rec)
    inst = {"cdf_file": {"instanceId": {"space": "s", "externalId": "e"}}}
    flipped = {"cdf_file": {"instanceId": {"externalId": "e", "space": "s"}}}
    assert task_key(inst) == task_key(flipped) == 'cdf:{"instanceId":{"externalId":"e",' \
                                                  '"space":"s"}}'


# --- the token --------------------------------------------------------------------------------

def test_a_secret_shows_as_stars_everywhere() -> None:
    s = Secret(LEGACY)
    for shown in (repr(s), str(s), f"{s}", f"{s!r}", f"{s:>10}", repr([s])):
        assert LEGACY not in shown and "***" in shown
    assert s.reveal() == LEGACY
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_the_client_shows_its_url_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LEGACY)
    with LabelStudioClient("http://127.0.0.1:9/") as client:
        assert repr(client) == "LabelStudioClient('http://127.0.0.1:9')"
        assert LEGACY not in repr(vars(client))


def test_no_token_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(LabelStudioAuthError, match="LABEL_STUDIO_API_KEY"):
        LabelStudioClient("http://127.0.0.1:9")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "  ")
    with pytest.raises(LabelStudioAuthError, match="LABEL_STUDIO_API_KEY"):
        LabelStudioClient("http://127.0.0.1:9")


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://host", "http://", "http://h/?x=1",
                                 f"http://user:{LEGACY}@host"])
def test_a_malformed_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="Label Studio URL") as info:
        LabelStudioClient(url, LEGACY)
    assert LEGACY not in str(info.value)


# --- failures, each with its typed error ---------------------------------------------------

def test_nothing_listening_is_unreachable() -> None:
    with LabelStudioClient(f"http://127.0.0.1:{_closed_port()}", LEGACY) as client, \
            pytest.raises(LabelStudioUnreachable, match="cannot be reached") as info:
        client.whoami()
    _no_token_in(info.value, LEGACY)


def test_a_refused_token_is_an_auth_error_without_the_token(fake: FakeLabelStudio) -> None:
    fake.reply("GET", "/api/current-user/whoami", 401,
               {"detail": "Invalid token.", "status_code": 401})
    with LabelStudioClient(fake.url, LEGACY) as client, \
            pytest.raises(LabelStudioAuthError, match="refused the token") as info:
        client.whoami()
    assert info.value.status_code == 401
    assert fake.seen[0].authorization == f"Token {LEGACY}"  # the legacy scheme
    _no_token_in(info.value, LEGACY)


@pytest.mark.parametrize("status, body, headers, error, words", [
    (200, b"<html>a login page</html>", {"content-type": "text/html"}, LabelStudioUnreachable,
     "is not JSON"),
    (302, b"", {"location": "https://elsewhere/"}, LabelStudioUnreachable, "redirects"),
    (500, {"detail": "database is locked"}, {}, LabelStudioRequestError, "database is locked"),
    (403, {"detail": "You do not have permission"}, {}, LabelStudioAuthError, "permission"),
])
def test_other_answers_map_to_typed_errors(fake: FakeLabelStudio, status: int, body: Any,
                                           headers: dict[str, str],
                                           error: type[LabelStudioError], words: str) -> None:
    fake.reply("GET", "/api/current-user/whoami", status, body, headers)
    with LabelStudioClient(fake.url, LEGACY) as client, pytest.raises(error, match=words) as info:
        client.whoami()
    _no_token_in(info.value, LEGACY)


def test_a_personal_access_token_is_exchanged_and_renewed(fake: FakeLabelStudio) -> None:
    fake.reply("POST", "/api/token/refresh/", 200, {"access": "access-one"})
    fake.reply("POST", "/api/token/refresh/", 200, {"access": "access-two"})
    fake.reply("GET", "/api/current-user/whoami", 200, WHOAMI)
    fake.reply("GET", "/api/current-user/whoami", 401, {"detail": "Token expired"})
    fake.reply("GET", "/api/current-user/whoami", 200, WHOAMI)
    with LabelStudioClient(fake.url, PAT) as client:
        assert client.whoami() == WHOAMI
        assert client.whoami() == WHOAMI  # the access token expired: renewed, asked again
    assert [(s.method, s.path, s.authorization) for s in fake.seen] == [
        ("POST", "/api/token/refresh/", None),
        ("GET", "/api/current-user/whoami", "Bearer access-one"),
        ("GET", "/api/current-user/whoami", "Bearer access-one"),
        ("POST", "/api/token/refresh/", None),
        ("GET", "/api/current-user/whoami", "Bearer access-two")]
    assert json.loads(fake.seen[0].body) == {"refresh": PAT}


def test_a_refused_personal_access_token_is_an_auth_error(fake: FakeLabelStudio) -> None:
    fake.reply("POST", "/api/token/refresh/", 401,
               {"detail": "Token is invalid or expired", "code": "token_not_valid"})
    with LabelStudioClient(fake.url, PAT) as client, \
            pytest.raises(LabelStudioAuthError, match="personal access token") as info:
        client.whoami()
    _no_token_in(info.value, PAT)


def _projects(fake: FakeLabelStudio, *titles: str) -> None:
    fake.reply("GET", "/api/current-user/whoami", 200, WHOAMI)
    fake.reply("GET", "/api/projects/", 200, {
        "count": len(titles), "next": None, "previous": None,
        "results": [{"id": n + 1, "title": t} for n, t in enumerate(titles)]})


def test_a_title_two_projects_have_is_refused_with_their_ids(
        fake: FakeLabelStudio, labelset: LabelSet) -> None:
    _projects(fake, "site a", "site a", "site a (old)")
    with pytest.raises(LabelStudioProjectError, match=r"2 .* titled 'site a' \(ids 1, 2\)"):
        push_labelstudio(labelset.labels, fake.url, token=LEGACY, project="site a",
                         cache=labelset.cache)
    assert all(s.method == "GET" for s in fake.seen)  # nothing was changed


def test_an_unknown_project_id_is_refused(fake: FakeLabelStudio, labelset: LabelSet) -> None:
    _projects(fake)
    with pytest.raises(LabelStudioProjectError, match="no project 42"):
        push_labelstudio(labelset.labels, fake.url, token=LEGACY, project="42",
                         cache=labelset.cache)


# --- the command line -----------------------------------------------------------------------

def test_cli_exit_codes_and_no_token_in_any_output(
        fake: FakeLabelStudio, labelset: LabelSet, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.reply("GET", "/api/current-user/whoami", 401, {"detail": "Invalid token."})
    fake.reply("POST", "/api/token/refresh/", 401, {"detail": "Token is invalid or expired"})
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LEGACY)
    base = ["-v", "export", str(labelset.labels), "--to", "labelstudio", "--cache",
            str(labelset.cache)]
    assert main([*base, "--ls-url", fake.url]) == 4
    assert main([*base, "--ls-url", fake.url, "--ls-token", PAT]) == 4
    assert main([*base, "--ls-url", f"http://127.0.0.1:{_closed_port()}"]) == 3
    out = capsys.readouterr()
    assert out.err.count("cogseg: Label Studio: ") == 3
    for text in (out.out, out.err, caplog.text):
        assert LEGACY not in text and PAT not in text


@pytest.mark.parametrize("extra, words", [
    (["--ls-url", "http://127.0.0.1:9", "--out", "x"], "--out is for the folder export"),
    (["--ls-url", "http://127.0.0.1:9", "--image-prefix", "a/"], "--image-prefix is for"),
    (["--out", "x", "--ls-token", "t"], "--ls-token goes with --ls-url"),
    (["--out", "x", "--ls-project", "p"], "--ls-project goes with --ls-url"),
    ([], "give --out DIR"),
])
def test_cli_refuses_options_that_do_not_go_together(
        labelset: LabelSet, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        extra: list[str], words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(labelset.labels), "--to", "labelstudio", *extra]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_ls_url_goes_with_labelstudio_only(labelset: LabelSet,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(labelset.labels), "--to", "coco", "--ls-url",
                 "http://127.0.0.1:9"]) == 2
    assert "--ls-url goes with --to labelstudio" in capsys.readouterr().err
