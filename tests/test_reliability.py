"""Short versions of the soak and crash runs (``make soak`` runs the long ones)."""

from __future__ import annotations

from benchmarks.soak import crash_resume, soak


def test_soak_under_twenty_percent_faults() -> None:
    r = soak(400, processing=0.02)
    assert r["accounted"], r
    assert r["duplicates"] == 0 and r["reasons_given"] and r["integrity"]
    assert r["threads_left"] == []
    assert r["labelled"] > 0.6 * r["items"] and r["failed"] > 0
    assert sum(r["faults_injected"].values()) > 0.1 * r["items"]
    assert r["rss_second_half_mib"] < r["rss_first_half_mib"] + 64


def test_sigkill_and_resume_gives_the_uninterrupted_result() -> None:
    r = crash_resume(300, kills=3)
    assert all(r["integrity_after_each_kill"]), r
    assert r["final_equals_clean"], r
    assert r["entries"] == 300
