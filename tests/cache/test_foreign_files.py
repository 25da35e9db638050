"""A file that is not ours, given as a mask cache, a detection cache or a jobs database, is
refused before anything is written to it: read only, left byte for byte as it was (its time
too), nothing created beside it, and a :class:`CacheError` naming the path and what to do
(on the command line: exit 2 before any request). Files of ours open as before: a new path,
an empty file, a cache with entries, a cache another connection has open."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from cogseg_ml.cache.database import CacheDatabase
from cogseg_ml.cache.mask_cache import MaskCache
from cogseg_ml.cli import main
from cogseg_ml.detect.detection_cache import DetectionCache
from cogseg_ml.emulator.server import Emulator
from cogseg_ml.emulator.synthetic_images import SyntheticImage
from cogseg_ml.errors import CacheError
from cogseg_ml.service.job_store import JobStore
from tests.cache.test_mask_cache import key, result
from tests.test_cli_input import write_prompts


def _notes(path: Path) -> None:
    path.write_text("a user's notes\n")


def _sqlite(path: Path, *statements: str) -> None:
    """A user's SQLite file made by ``statements``, closed."""
    conn = sqlite3.connect(path)
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()


def _user_sqlite(path: Path) -> None:
    _sqlite(path, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
            "INSERT INTO users VALUES (1, 'ada')")


def _user_sqlite_in_wal_mode(path: Path) -> None:
    """A user's WAL database, closed: nothing beside it (a probe must not leave -wal, -shm)."""
    _sqlite(path, "PRAGMA journal_mode = WAL", "CREATE TABLE notes (body TEXT)")


def _user_sqlite_sharing_a_table_name(path: Path) -> None:
    """A user's database with an ``entries`` table (one of the mask cache's names) and more."""
    _sqlite(path, "CREATE TABLE entries (id INTEGER, body TEXT)",
            "CREATE TABLE authors (id INTEGER)")


def _mask_cache(path: Path) -> None:
    with MaskCache(path) as cache:
        cache.put(key(0), result(0))


def _jobs_database(path: Path) -> None:
    JobStore(path).close()


def _detection_cache(path: Path) -> None:
    cache = DetectionCache(path)
    len(cache)
    cache.close()


FOREIGN: dict[str, Callable[[Path], None]] = {
    "a text file": _notes,
    "a user's SQLite": _user_sqlite,
    "a user's SQLite in WAL mode": _user_sqlite_in_wal_mode,
    "a user's SQLite with an entries table": _user_sqlite_sharing_a_table_name,
    "a mask cache": _mask_cache,
    "a jobs database": _jobs_database,
    "a detection cache": _detection_cache,
}

def _open_mask_cache(path: Path) -> None:
    MaskCache(path).close()


def _open_jobs_database(path: Path) -> None:
    JobStore(path).close()


def _open_detection_cache(path: Path) -> None:
    cache = DetectionCache(path)
    try:
        len(cache)  # its first connection
    finally:
        cache.close()


OWNERS: dict[str, Callable[[Path], None]] = {
    "mask cache": _open_mask_cache,
    "jobs database": _open_jobs_database,
    "detection cache": _open_detection_cache,
}

#: Which foreign files each owner must refuse (each refuses every kind but its own).
CASES = [(owner, kind) for owner in OWNERS for kind in FOREIGN
         if (owner, kind) not in {("mask cache", "a mask cache"),
                                  ("jobs database", "a jobs database"),
                                  ("detection cache", "a detection cache")}]


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in ``folder``: its bytes and modification time (side files included)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("owner, kind", CASES)
def test_a_file_of_another_kind_is_refused_and_left_as_it_was(owner: str, kind: str,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "given.sqlite"
    FOREIGN[kind](path)
    before = _state(tmp_path)
    with pytest.raises(CacheError) as info:
        OWNERS[owner](path)
    msg = str(info.value)
    assert str(path) in msg and f"not a cogseg {owner}" in msg and "nothing was written" in msg, msg
    assert info.value.path == str(path)  # type: ignore[attr-defined]
    assert _state(tmp_path) == before  # not a byte, not a timestamp, no -wal or -shm beside it


def test_the_message_names_the_tables_found_and_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    _user_sqlite(path)
    with pytest.raises(CacheError) as info:
        MaskCache(path)
    assert "another kind" in str(info.value) and "users" in str(info.value)
    assert "--cache" in str(info.value)  # what to do: give another path
    with pytest.raises(CacheError, match="give another --jobs-db"):
        JobStore(path)


def test_the_shared_owner_refuses_before_the_schema_is_prepared(tmp_path: Path) -> None:
    """The check lives in the one owner of SQLite files: ``prepare`` never sees the file."""
    path = tmp_path / "app.db"
    _user_sqlite(path)
    before = _state(tmp_path)
    prepared: list[sqlite3.Connection] = []
    db = CacheDatabase(path, prepare=prepared.append, name="widget cache",
                       kind_table="widgets")
    with pytest.raises(CacheError, match="not a cogseg widget cache"):
        db.connection()
    assert prepared == [] and _state(tmp_path) == before


@pytest.mark.parametrize("owner", sorted(OWNERS))
def test_an_empty_file_is_created_as_before(owner: str, tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    path.touch()
    OWNERS[owner](path)
    assert path.stat().st_size > 0


def test_a_cache_of_ours_opens_as_before_also_while_another_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "masks.sqlite"
    _mask_cache(path)
    with MaskCache(path) as again:  # closed before: nothing beside it
        assert again.get(key(0)) is not None
        with MaskCache(path) as third:  # open in another connection: its -wal beside it
            third.put(key(1), result(1))
            assert again.get(key(1)) is not None


def test_a_cache_being_created_by_another_process_is_not_taken_for_a_foreign_file(
        tmp_path: Path) -> None:
    """A file another process has just made SQLite (WAL header, no tables yet), or whose
    schema it is still writing (the kind's table first), is one of ours."""
    path = tmp_path / "masks.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")  # the header page, no table yet
    with MaskCache(path) as cache:
        cache.put(key(0), result(0))
    conn.close()
    jobs = tmp_path / "jobs.sqlite"
    conn = sqlite3.connect(jobs, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE service_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    try:
        assert JobStore(jobs).count() == 0
    finally:
        conn.close()


def test_a_user_sqlite_with_no_tables_is_an_empty_file(tmp_path: Path) -> None:
    """SQLite's header and nothing in it: nothing of the user's to lose, so it becomes a cache
    as an empty file does."""
    path = tmp_path / "empty.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    assert os.path.getsize(path) > 0
    with MaskCache(path) as cache:
        cache.put(key(0), result(0))
        assert cache.stats().entries == 1


# --- the command line: exit 2 before any request, the file as it was ---------------------------

@pytest.mark.parametrize("kind", ["a text file", "a user's SQLite", "a user's SQLite in WAL mode",
                                  "a jobs database"])
def test_label_refuses_a_cache_that_is_not_ours(kind: str, tmp_path: Path,
                                                images: list[SyntheticImage], env: Emulator,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", images)
    given = tmp_path / "theirs" / "app.sqlite"
    given.parent.mkdir()
    FOREIGN[kind](given)
    before = _state(given.parent)
    out = tmp_path / "labels.json"
    code = main(["label", "--no-progress", "--cache", str(given), "--prompts", str(prompts),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(given) in err and "nothing was written" in err and "--cache" in err, err
    assert _state(given.parent) == before
    assert not out.exists()
    assert not env.requests  # refused before any request


def test_label_from_annotations_refuses_a_foreign_cache_before_listing_them(
        tmp_path: Path, images: list[SyntheticImage], env: Emulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    given = tmp_path / "app.sqlite"
    _user_sqlite(given)
    before = _state(tmp_path)
    code = main(["label", "--no-progress", "--cache", str(given), "--from-annotations",
                 "1", "--out", str(tmp_path / "labels.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(given) in err and "nothing was written" in err, err
    assert _state(tmp_path) == before
    assert not env.requests  # not even the annotation listing


def test_cache_commands_refuse_a_file_that_is_not_ours(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    given = tmp_path / "app.db"
    _user_sqlite(given)
    before = _state(tmp_path)
    for argv in (["cache", "stats", "--path", str(given)],
                 ["cache", "clear", "--path", str(given)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "nothing was written" in err and "Traceback" not in err, err
    assert _state(tmp_path) == before
