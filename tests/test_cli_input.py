"""The command line takes or refuses input cleanly: bad paths and arguments are exit 2 with one
line naming what to fix (checked before any labelling starts), CDF unreachable is 3, refused
credentials 4, SIGINT/SIGTERM stop with a resume hint (130/143), and cache commands never
create a cache by mistake. In-process through ``main`` and as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cogseg_ml.api import session as session_module
from cogseg_ml.cache.database import CacheDatabase
from cogseg_ml.cache.image_store import ImageStore
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.cli import main
from cogseg_ml.config import CdfConfig, RetryConfig
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample
from tests.api.counting_transport import CountingTransport
from tests.cache.test_mask_cache import key, result
from tests.exports.outputs import more_jobs_than, signalled_when

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_permissions = pytest.mark.skipif(AS_ROOT, reason="root ignores file permissions")
HINT = "run the same command again to resume"


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def run_process(args: list[str], env: dict[str, str] | None = None, timeout: float = 120
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cogseg_ml.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def records(images: list[SyntheticImage]) -> list[dict[str, Any]]:
    return [{"file": im.name, "box": [o.box().x_min, o.box().y_min, o.box().x_max,
                                      o.box().y_max], "category": o.category}
            for im in images for o in im.objects]


def write_prompts(path: Path, images: list[SyntheticImage]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records(images)))
    return path


def earlier_labels(path: Path) -> bytes:
    """An earlier run's labels file at ``path``, made by cogseg's own COCO writer (a file a
    run may replace, so a test of what a run leaves alone starts from one); its bytes."""
    from cogseg_ml.coco_io import CocoWriter

    CocoWriter(path, [{"id": 1, "name": "square"}]).close()
    return path.read_bytes()


def cdf_env(emu: Emulator, token: str | None = None) -> dict[str, str]:
    return {"COGNITE_PROJECT": emu.project, "COGNITE_BASE_URL": emu.base_url,
            "COGNITE_TOKEN": token or emu.issue_token(), "COGSEG_PROGRESS": "0"}


@pytest.fixture
def emu_env(make_emulator: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch
            ) -> Emulator:
    emu = make_emulator()
    for k, v in cdf_env(emu).items():
        monkeypatch.setenv(k, v)
    return emu


# --- bad arguments and paths: exit 2, one line, before any request ---------------------------

Case = Callable[[Path], tuple[dict[str, str], list[str]]]


def _file_under_a_file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("x")
    return tmp / "a-file" / "cache"


BAD_LABEL_INPUT: dict[str, Case] = {
    "missing --prompts file": lambda t: ({"--prompts": str(t / "nope.jsonl")},
                                         ["--prompts", "nope.jsonl", "no such file"]),
    "missing --coco-boxes file": lambda t: ({"--prompts": "", "--coco-boxes": str(t / "b.json")},
                                            ["--coco-boxes", "b.json", "no such file"]),
    "--prompts is a folder": lambda t: ({"--prompts": str(t)}, ["--prompts", "folder"]),
    "--out in a missing folder": lambda t: ({"--out": str(t / "no" / "such" / "l.json")},
                                            ["--out", str(t / "no" / "such"), "does not exist"]),
    "--out is a folder": lambda t: ({"--out": str(t)}, ["--out", "folder"]),
    "--report in a missing folder": lambda t: ({"--report": str(t / "none" / "r.json")},
                                               ["--report", "does not exist"]),
    "--from-annotations with an external id": lambda t: (
        {"--prompts": "", "--from-annotations": "12,pump-7.jpg"},
        ["--from-annotations", "pump-7.jpg", "numeric"]),
    "--cache that cannot be created": lambda t: ({"--cache": str(_file_under_a_file(t))},
                                                 ["a-file", "choose"]),
}


def label_argv(tmp: Path, images: list[SyntheticImage], **override: str) -> list[str]:
    opts = {"--prompts": str(write_prompts(tmp / "prompts.jsonl", images)),
            "--out": str(tmp / "labels.json"), "--cache": str(tmp / "cache")}
    opts.update(override)
    argv = ["label", "--no-progress"]
    for k, v in opts.items():
        if v:
            argv += [k, v]
    return argv


@pytest.mark.parametrize("case", list(BAD_LABEL_INPUT))
def test_bad_label_input_is_exit_2_with_one_line_before_any_request(
        case: str, emu_env: Emulator, images: list[SyntheticImage], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    override, fragments = BAD_LABEL_INPUT[case](tmp_path)
    code, _, err = run_main(label_argv(tmp_path, images[:1], **override), capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cogseg: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert emu_env.requests == []  # refused before anything was sent
    assert not (tmp_path / "labels.json").exists()


@needs_permissions
@pytest.mark.parametrize("flag", ["--out", "--report", "--cache"])
def test_a_read_only_folder_is_exit_2_before_labelling(
        flag: str, emu_env: Emulator, images: list[SyntheticImage], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        target = ro / ("cache" if flag == "--cache" else "file.json")
        code, _, err = run_main(label_argv(tmp_path, images[:1], **{flag: str(target)}),
                                capsys)
    finally:
        ro.chmod(0o755)
    assert code == 2 and str(ro) in err and "Traceback" not in err, err
    assert emu_env.requests == []


@pytest.mark.parametrize("case", ["missing --prompts file", "--out in a missing folder",
                                  "--from-annotations with an external id"])
def test_bad_label_input_through_a_real_process(case: str, shared_emulator: Emulator,
                                                images: list[SyntheticImage],
                                                tmp_path: Path) -> None:
    override, fragments = BAD_LABEL_INPUT[case](tmp_path)
    proc = run_process(label_argv(tmp_path, images[:1], **override),
                       env=cdf_env(shared_emulator))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and fragments[0] in proc.stderr


def test_a_full_disk_while_labelling_says_so_and_keeps_out_and_cache(
        emu_env: Emulator, images: list[SyntheticImage], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "labels.json"
    before = earlier_labels(out)
    real_open = CacheDatabase._open

    def full_disk(self: CacheDatabase) -> Any:
        """Every connection to the run's cache may fill the pages the new file has, and no
        more: its few image rows fit, the run's 18 masks do not (SQLite's own 'database or
        disk is full'). The emulator's jobs file stands for CDF's disk, not the user's."""
        conn = real_open(self)
        if tmp_path not in self.path.parents:
            return conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    monkeypatch.setattr(CacheDatabase, "_open", full_disk)
    code, _, err = run_main(label_argv(tmp_path, images), capsys)
    assert code == 2, err
    assert "disk is full" in err and "intact" in err and "Traceback" not in err
    assert "rollback" not in err
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert MaskCache(tmp_path / "cache").integrity_check()


# --- CDF unreachable (3) and refused credentials (4) -----------------------------------------


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()  # nothing listens there now: connections are refused
    return port


@pytest.mark.timeout(60)
def test_unreachable_cdf_is_exit_3_and_out_is_left_alone(
        images: list[SyntheticImage], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    where = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("COGNITE_PROJECT", "p")
    monkeypatch.setenv("COGNITE_BASE_URL", f"http://{where}")
    monkeypatch.setenv("COGNITE_TOKEN", "any-token")
    real = CdfConfig.from_env
    # A small retry budget, so the test does not wait out the default retry schedule.
    retry = RetryConfig(max_attempts=2, total_timeout_s=2, backoff_base_s=0.01)
    monkeypatch.setattr(CdfConfig, "from_env", classmethod(
        lambda cls, environ=None: real(environ).with_options(retry=retry)))
    # The run's session gets a transport that counts its connection attempts.
    transport = CountingTransport()
    real_transport = session_module.as_async_transport
    monkeypatch.setattr(session_module, "as_async_transport",
                        lambda t: transport if t is None else real_transport(t))
    out = tmp_path / "labels.json"
    before = earlier_labels(out)
    code, _, err = run_main(label_argv(tmp_path, images[:2]), capsys)
    assert code == 3, err
    # The first call's retry budget (refused each time) was all the run tried: then it ended.
    assert 1 <= transport.sent[where] <= retry.max_attempts, transport.sent
    assert set(transport.sent) == {where}
    assert transport.failed_connects(where) == transport.sent[where], transport.ended
    assert any(line.startswith("cogseg: CDF unreachable: ") for line in err.splitlines()), err
    assert "COGNITE_BASE_URL" in err
    assert "Traceback" not in err
    assert out.read_bytes() == before


@pytest.mark.timeout(90)
def test_unreachable_cdf_through_a_real_process_fails_fast_with_exit_3(
        images: list[SyntheticImage], tmp_path: Path) -> None:
    """Default settings: the run must notice at once that nothing listens (README: exit 3).

    At once: within the connect budget, with the short connect backoff between attempts (not
    the retry budget's attempts and waits), read from the run's DEBUG log (``-v``): httpcore
    logs each connection attempt, the client each wait before a retry."""
    out = tmp_path / "labels.json"
    before = earlier_labels(out)
    proc = run_process(["-v", *label_argv(tmp_path, images[:2])], timeout=80,
                       env={"COGNITE_PROJECT": "p", "COGNITE_TOKEN": "any-token",
                            "COGNITE_BASE_URL": f"http://127.0.0.1:{_closed_port()}"})
    assert proc.returncode == 3, proc.stderr
    default = RetryConfig()
    connects = proc.stderr.count("connect_tcp.started")
    assert 1 <= connects <= default.connect_attempts, proc.stderr
    waits = [(int(n), float(s)) for n, s in
             re.findall(r"retrying .* \(attempt (\d+), waiting ([\d.]+) s\)", proc.stderr)]
    assert len(waits) == connects - 1, proc.stderr  # one wait between two attempts
    for n, s in waits:  # full jitter on the connect backoff (its floor 0.05 s); 2 decimals
        assert s <= max(0.05, default.connect_backoff_s * 2 ** (n - 1)) + 0.005, proc.stderr
    assert "cogseg: CDF unreachable: " in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_bytes() == before


def test_refused_credentials_are_exit_4_and_out_is_left_alone(
        shared_emulator: Emulator, images: list[SyntheticImage], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in cdf_env(shared_emulator, token="not-a-valid-token").items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "labels.json"
    before = earlier_labels(out)
    code, _, err = run_main(label_argv(tmp_path, images[:2]), capsys)
    assert code == 4, err
    assert any(line.startswith("cogseg: credentials refused: ")
               for line in err.splitlines()), err
    assert "Traceback" not in err
    assert out.read_bytes() == before
    proc = run_process(label_argv(tmp_path, images[:2]),
                       env=cdf_env(shared_emulator, token="not-a-valid-token"))
    assert proc.returncode == 4 and "credentials refused" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and out.read_bytes() == before


# --- SIGTERM and SIGINT ----------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_cleanly_with_a_resume_hint(
        sig: signal.Signals, code: int, make_emulator: Callable[..., Emulator],
        images: list[SyntheticImage], tmp_path: Path) -> None:
    emu = make_emulator(processing_time_s=600.0)  # jobs stay in flight until the signal
    proc = subprocess.Popen([sys.executable, "-m", "cogseg_ml.cli", *label_argv(tmp_path,
                                                                                 images[:2])],
                            env={**os.environ, **cdf_env(emu)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    returncode, err = signalled_when(proc, more_jobs_than(emu, 0, proc), sig)
    assert returncode == code, err
    assert HINT in err and sig.name in err and "Traceback" not in err, err
    assert not (tmp_path / "labels.json").exists()


# --- cache commands --------------------------------------------------------------------------


def _filled(path: Path, n: int, offset: int = 0, images: int = 0) -> MaskCache:
    cache = MaskCache(path)
    cache.put_many([(key(offset + i), result(offset + i)) for i in range(n)])
    store = ImageStore(cache)
    for i in range(images):
        store.put(f"file-{offset + i}", bytes([i + 1]) * (100 + i))
    return cache


@pytest.mark.parametrize("action", ["stats", "ls", "export", "clear", "vacuum"])
def test_cache_commands_on_a_missing_path_create_nothing(
        action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo"
    extra = ["--out", str(tmp_path / "x.json")] if action == "export" else []
    code, out, err = run_main(["cache", action, "--path", str(typo), *extra], capsys)
    assert code == 2 and str(typo) in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_cache_command_on_the_default_missing_cache_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.setenv("COGSEG_CACHE_DIR", str(tmp_path / "user-cache"))
    code, _, err = run_main(["cache", "stats"], capsys)
    assert code == 2 and "user-cache" in err
    assert not (tmp_path / "user-cache").exists()


@pytest.mark.parametrize("source", ["typo", "typo.sqlite", "no/such/dir/", "empty-folder"])
def test_merge_of_a_missing_source_is_exit_2_and_changes_nothing(
        source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path / "a", 3).close()
    (tmp_path / "empty-folder").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = run_main(["cache", "merge", str(tmp_path / source), "--path",
                               str(tmp_path / "a")], capsys)
    assert code == 2, (out, err)
    assert source.rstrip("/") in err and "merged" not in out and "Traceback" not in err
    assert "sqlite3" not in err and "unable to open" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert MaskCache(tmp_path / "a").stats().entries == 3


def test_merge_of_a_missing_source_creates_no_target(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["cache", "merge", str(tmp_path / "typo"), "--path",
                             str(tmp_path / "new")], capsys)
    assert code == 2 and "typo" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("same", ["a", "a/masks.sqlite", "a/../a"])
def test_merge_into_itself_is_refused_at_once(same: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path / "a", 2).close()
    code, _, err = run_main(["cache", "merge", str(tmp_path / same), "--path",
                             str(tmp_path / "a")], capsys)
    assert code == 2 and "itself" in err, err
    assert MaskCache(tmp_path / "a").stats().entries == 2


def test_merge_reports_entries_and_images(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path / "a", 2).close()
    _filled(tmp_path / "b", 3, offset=10, images=2).close()
    code, out, _ = run_main(["cache", "merge", str(tmp_path / "b"), "--path",
                             str(tmp_path / "a")], capsys)
    assert code == 0 and "merged 3 new entries and 2 images" in out
    store = ImageStore(MaskCache(tmp_path / "a"))
    assert store.get("file-10") == bytes([1]) * 100 and store.get("file-11") == bytes([2]) * 101


@pytest.mark.parametrize("action", ["stats", "ls", "export", "clear", "vacuum", "merge"])
def test_a_cache_path_naming_another_file_is_one_clear_line_and_changes_nothing(
        action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--path labels.json``: a cache is a folder or a SQLite file, so the line says that
    instead of looking for ``labels.json/masks.sqlite``."""
    notes = tmp_path / "labels.json"
    notes.write_text('{"images": [], "annotations": [], "categories": []}')
    _filled(tmp_path / "src", 2).close()
    extra = {"export": ["--out", str(tmp_path / "x.json")],
             "merge": [str(tmp_path / "src")]}.get(action, [])
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, out, err = run_main(["cache", action, "--path", str(notes), *extra], capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"--path {notes} is a file, not a mask cache" in err, err
    assert "labels.json/masks.sqlite" not in err and "Error" not in err, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    assert not (tmp_path / "x.json").exists()


MERGE_ORDERS = {
    "--path after the sources": lambda t: ["cache", "merge", str(t / "b"), str(t / "c"),
                                           "--path", str(t / "a")],
    "--path before the sources": lambda t: ["cache", "merge", "--path", str(t / "a"),
                                            str(t / "b"), str(t / "c")],
    "--path between the sources": lambda t: ["cache", "merge", str(t / "b"), "--path",
                                             str(t / "a"), str(t / "c")],
}


@pytest.mark.parametrize("order", list(MERGE_ORDERS))
def test_merge_takes_path_before_between_or_after_the_sources(
        order: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path / "a", 2).close()
    _filled(tmp_path / "b", 3, offset=10).close()
    _filled(tmp_path / "c", 4, offset=20).close()
    code, out, err = run_main(MERGE_ORDERS[order](tmp_path), capsys)
    assert code == 0, err
    assert "merged 7 new entries" in out, out
    assert MaskCache(tmp_path / "a").stats().entries == 2 + 3 + 4


def test_clear_keeps_images_unless_asked(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path / "a", 4, images=3).close()
    code, out, _ = run_main(["cache", "clear", "--path", str(tmp_path / "a")], capsys)
    assert code == 0 and "removed 4 entries" in out and "kept 3 images" in out
    assert "--images" in out
    assert ImageStore(MaskCache(tmp_path / "a")).get("file-0") is not None
    code, out, _ = run_main(["cache", "clear", "--images", "--path", str(tmp_path / "a")], capsys)
    assert code == 0 and "removed 0 entries and 3 images (303 bytes)" in out
    cache = MaskCache(tmp_path / "a")
    assert cache.stats().images == 0 and ImageStore(cache).get("file-0") is None
    assert not [p for p in (tmp_path / "a" / "images").rglob("*") if p.is_file()]


def _samples(images: list[SyntheticImage]) -> list[Sample]:
    return [Sample(FileRef(external_id=im.name),
                   tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
            for im in images]


def _downloads(emu: Emulator, since: int = 0) -> int:
    return sum("download" in r.path for r in emu.requests[since:])


def test_a_run_after_a_shard_merge_downloads_no_image_again(
        emu_env: Emulator, images: list[SyntheticImage], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    prompts = str(write_prompts(tmp_path / "prompts.jsonl", images))
    for i in range(2):
        assert main(["label", "--prompts", prompts, "--out", str(tmp_path / f"s{i}.json"),
                     "--cache", str(tmp_path / f"shard{i}"), "--shard", f"{i}/2",
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["cache", "merge", str(tmp_path / "shard1"), "--path",
                 str(tmp_path / "shard0")]) == 0
    assert "images" in capsys.readouterr().out
    mark, jobs = len(emu_env.requests), len(emu_env.jobs.jobs)
    lab = SegmentationLabeler(emu_env.config, cache=tmp_path / "shard0", progress=False,
                              workdir=tmp_path / "work")
    rep = lab.label(_samples(images))
    assert rep.labelled == sum(len(im.objects) for im in images) and rep.failed == 0
    assert rep.jobs_run == 0 and len(emu_env.jobs.jobs) == jobs
    assert _downloads(emu_env, mark) == 0 and lab.store.downloads == 0


# --- cogseg emulator -------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield int(s.getsockname()[1])
    s.close()


def _faults_file(tmp: Path, text: str) -> str:
    p = tmp / "faults.json"
    p.write_text(text)
    return str(p)


BAD_EMULATOR_INPUT: dict[str, Callable[[Path], tuple[list[str], list[str]]]] = {
    "missing images folder": lambda t: (["--images", str(t / "pics")],
                                        ["--images", "pics", "no such folder"]),
    "images is a file": lambda t: (["--images", _faults_file(t, "[]")], ["--images", "folder"]),
    "faults file missing": lambda t: (["--faults", str(t / "f.json")],
                                      ["--faults", "f.json", "no such file"]),
    "faults not JSON": lambda t: (["--faults", _faults_file(t, "[{kind: status}")],
                                  ["--faults", "faults.json", "is not JSON", "line 1"]),
    "faults not a list": lambda t: (["--faults", _faults_file(t, '{"kind": "status"}')],
                                    ["faults.json", "list"]),
    "unknown fault kind": lambda t: (["--faults", _faults_file(t, '[{"kind": "explode"}]')],
                                     ["faults.json", "rule 0", "explode", "status"]),
    "unknown fault field": lambda t: (
        ["--faults", _faults_file(t, '[{"kind": "status"}, {"kind": "drop", "prob": 1}]')],
        ["faults.json", "rule 1", "prob", "probability"]),
    "bad fault value": lambda t: (
        ["--faults", _faults_file(t, '[{"kind": "status", "probability": 2}]')],
        ["faults.json", "rule 0", "probability"]),
    "port out of range": lambda t: (["--port", "70000"], ["--port", "70000"]),
    "no jobs processed at once": lambda t: (["--concurrency", "0"], ["--concurrency", "0"]),
    "negative processing time": lambda t: (["--processing-time", "-1"],
                                           ["--processing-time", "-1"]),
    "negative rate limit": lambda t: (["--rate-limit", "-5"], ["--rate-limit", "-5"]),
    "a folder image named as a synthetic one": lambda t: (
        ["--synthetic", "1", "--images", _image_folder(t, "synthetic_00000.png")],
        ["synthetic_00000.png", "--images", "--synthetic", "rename"]),
}


def _image_folder(tmp: Path, name: str) -> str:
    folder = tmp / "pics"
    folder.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / name)
    return str(folder)


@pytest.mark.parametrize("case", list(BAD_EMULATOR_INPUT))
def test_bad_emulator_input_is_exit_2(case: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv, fragments = BAD_EMULATOR_INPUT[case](tmp_path)
    try:
        code, _, err = run_main(["emulator", "--port", "0", *argv], capsys)
    except SystemExit as exc:  # argparse's own usage error
        code, err = int(str(exc.code)), capsys.readouterr().err
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err


def test_a_port_in_use_is_exit_2(busy_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["emulator", "--port", str(busy_port)], capsys)
    assert code == 2 and f"--port {busy_port}" in err and "in use" in err, err


def test_bad_emulator_input_through_a_real_process(busy_port: int, tmp_path: Path) -> None:
    proc = run_process(["emulator", "--port", str(busy_port)], timeout=60)
    assert proc.returncode == 2 and "in use" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_process(["emulator", "--port", "0", "--images", str(tmp_path / "pics")],
                       timeout=60)
    assert proc.returncode == 2 and "pics" in proc.stderr and "Traceback" not in proc.stderr
