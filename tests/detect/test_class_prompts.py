"""Class lists are checked, and prompts built the way each model expects them."""

from __future__ import annotations

import pytest

from cogseg_ml.detect.class_prompts import (
    check_classes,
    grounding_prompt,
    split_classes,
    token_spans,
)
from cogseg_ml.errors import ValidationError


def test_names_are_kept_as_given_stripped_and_with_single_spaces() -> None:
    assert check_classes([" valve", "pressure   gauge ", "Flange"]) == \
        ("valve", "pressure gauge", "Flange")
    assert split_classes("valve, pressure gauge,flange") == ("valve", "pressure gauge", "flange")


@pytest.mark.parametrize(("classes", "said"), [
    ([], "is empty"),
    (["valve", " "], "[1] is blank"),
    (["valve", "Valve"], "names 'Valve' twice (as 'valve' and 'Valve'"),
    (["valve", "valve"], "names 'valve' twice: list each class once"),
    (["gauge. dial"], "holds '.'"),
    (["what?"], "holds '?'"),
    ([3], "must be a string"),
])
def test_bad_class_lists_say_what_to_fix(classes: list[object], said: str) -> None:
    with pytest.raises(ValidationError) as err:
        check_classes(classes)  # type: ignore[arg-type]
    assert said in str(err.value)


def test_a_bare_string_is_not_taken_as_letters() -> None:
    with pytest.raises(ValidationError, match="a list of class names"):
        check_classes("valve")
    with pytest.raises(ValidationError, match="is empty"):
        split_classes(" , ,")


def test_grounding_prompt_is_lower_case_dot_separated_with_each_phrase_located() -> None:
    p = grounding_prompt(["Valve", "pressure gauge", "flange"])
    assert p.text == "valve. pressure gauge. flange."
    assert [p.text[s:e] for s, e in p.spans] == ["valve", "pressure gauge", "flange"]


def test_token_spans_follow_the_offsets_and_skip_specials_and_delimiters() -> None:
    p = grounding_prompt(["valve", "pressure gauge", "flange"])
    # [CLS] valve . pressure gauge . fl ##ange . [SEP]
    offsets = [(0, 0), (0, 5), (5, 6), (7, 15), (16, 21), (21, 22), (23, 25), (25, 29),
               (29, 30), (0, 0)]
    assert token_spans(offsets, p.spans, ["valve", "pressure gauge", "flange"]) == \
        [[1], [3, 4], [6, 7]]
    with pytest.raises(ValidationError, match="no token"):
        token_spans([(0, 0), (0, 0)], p.spans[:1], ["valve"])
