"""``cogseg serve`` refuses bad options with one line and exit 2, before loading a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from cogseg_ml.cli import main
from cogseg_ml.cli.serve import is_loopback


@pytest.mark.parametrize("extra, words", [
    (["--host", "10.1.2.3"], "--allow-insecure-http"),
    (["--host", "0.0.0.0"], "--tls-cert"),
    (["--tls-cert", "cert.pem"], "go together"),
    (["--tls-cert", "cert.pem", "--tls-key", "key.pem"], "no such file"),
    (["--rate-limit", "-1"], "--rate-limit"),
    (["--rate-limit", "nan"], "--rate-limit"),
    (["--burst", "0"], "--burst"),
    (["--max-body-bytes", "0"], "--max-body-bytes"),
    (["--cdf-base-url", "ftp://cdf.example"], "--cdf-base-url"),
    (["--ray", "--host", "10.1.2.3"], "--allow-insecure-http"),
    (["--ray", "--replicas", "2", "--max-replicas", "1"], "--max-replicas"),
    (["--ray", "--num-gpus-per-replica", "-1"], "--num-gpus-per-replica"),
    (["--ray"], "does not exist"),  # the model folder is checked before Ray starts
])
def test_bad_options_are_one_line_and_exit_2(extra: list[str], words: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["serve", "--model", str(tmp_path / "no-model"), "--cdf-base-url",
            "https://cdf.example", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert list(tmp_path.iterdir()) == []  # nothing created: no jobs database, no cache


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com"]))


def test_a_jobs_db_that_is_not_ours_is_refused_and_left_as_it_was(
        model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    from cogseg_ml.cache.mask_cache import MaskCache

    notes = tmp_path / "notes.txt"
    notes.write_text("a user's notes\n")
    app_db = tmp_path / "app.db"
    with sqlite3.connect(app_db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    cache = tmp_path / "cache.sqlite"
    with MaskCache(cache) as mc:  # a mask cache is ours, but not a jobs database
        mc.stats()
    for path, extra in ((notes, []), (app_db, []), (cache, []), (app_db, ["--ray"])):
        before = path.read_bytes()
        argv = ["serve", "--model", str(model_dir), "--cdf-base-url", "https://cdf.example",
                "--port", "0", "--device", "cpu", "--jobs-db", str(path),
                "--cache", str(tmp_path / "masks.sqlite"), *extra]
        assert main(argv) == 2, path
        out, err = capsys.readouterr()
        assert out == ""  # refused before anything listens
        assert "--jobs-db" in err and "nothing was written" in err, err
        assert path.read_bytes() == before, path


def test_a_cache_that_is_not_ours_is_refused_and_left_as_it_was(
        model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    from cogseg_ml.service.job_store import JobStore

    app_db = tmp_path / "app.db"
    with sqlite3.connect(app_db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    jobs = tmp_path / "jobs.sqlite"
    JobStore(jobs).close()  # a jobs database is ours, but not a mask cache
    for path, extra in ((app_db, []), (jobs, []), (app_db, ["--ray"])):
        before = path.read_bytes(), path.stat().st_mtime_ns
        argv = ["serve", "--model", str(model_dir), "--cdf-base-url", "https://cdf.example",
                "--port", "0", "--device", "cpu", "--jobs-db", str(tmp_path / "j.sqlite"),
                "--cache", str(path), *extra]
        assert main(argv) == 2, path
        out, err = capsys.readouterr()
        assert out == ""  # refused before anything listens
        assert "--cache" in err and "nothing was written" in err and str(path) in err, err
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before, path
