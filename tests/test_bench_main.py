"""``python -m benchmarks NAME [arg ...] ...``: every benchmark module runs by name, and the
words after a name, up to the next name, are that benchmark's arguments."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import ALL, RUNNABLE, split_args


def test_modules_outside_the_table_order_run_by_name_too() -> None:
    assert RUNNABLE[:len(ALL)] == ALL
    assert {"service", "soak"} <= set(RUNNABLE)
    assert not {"__init__", "__main__", "common"} & set(RUNNABLE)


def test_the_words_after_a_name_go_to_that_benchmark() -> None:
    assert split_args(["service", "--ray", "--images", "4", "cache", "emulator"]) == [
        ("service", ["--ray", "--images", "4"]), ("cache", []), ("emulator", [])]


@pytest.mark.parametrize("argv", [["--ray"], ["no_such_benchmark", "service"]])
def test_a_first_word_that_names_no_benchmark_is_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError, match="unknown benchmark"):
        split_args(argv)
