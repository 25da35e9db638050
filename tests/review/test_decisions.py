"""The decisions file: its digest, its checks, and applying it to a labels file."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pycocotools.coco import COCO

from cogseg_ml.errors import ValidationError
from cogseg_ml.review.decisions import Decisions, apply_decisions, labels_digest, load_decisions
from tests.review.conftest import Labelled


def _ids(coco: dict[str, Any]) -> list[int]:
    return [a["id"] for a in coco["annotations"]]


def _decisions(coco: dict[str, Any], accepted: set[int], rejected: set[int],
               name: str = "labels.json") -> Decisions:
    return Decisions(name, labels_digest(coco), frozenset(accepted), frozenset(rejected))


def test_the_labels_have_both_sources(labelled: Labelled) -> None:
    sources = {a["source"] for a in labelled.coco["annotations"]}
    assert sources == {"cdf-api", "box-model"}


def test_digest_ignores_layout_and_name_but_not_content(labelled: Labelled,
                                                        tmp_path: Path) -> None:
    coco = labelled.coco
    digest = labels_digest(coco)
    reindented = json.loads(json.dumps(coco, indent=4, sort_keys=True))
    reindented["annotations"].reverse()
    assert labels_digest(reindented) == digest
    assert labels_digest(json.loads(labelled.labels.read_text())) == digest

    fewer = copy.deepcopy(coco)
    fewer["annotations"].pop()
    renamed = copy.deepcopy(coco)
    renamed["images"][0]["file_name"] = "other.png"
    recategorized = copy.deepcopy(coco)
    recategorized["annotations"][0]["category_id"] += 1
    digests = {labels_digest(c) for c in (fewer, renamed, recategorized)}
    assert len(digests) == 3 and digest not in digests


def test_saved_decisions_load_back(labelled: Labelled, tmp_path: Path) -> None:
    ids = _ids(labelled.coco)
    made = _decisions(labelled.coco, set(ids[:4]), set(ids[4:6]))
    path = tmp_path / "decisions.json"
    path.write_text(made.to_json())
    data = json.loads(path.read_text())
    assert data["format"] == "cogseg-review-decisions" and data["version"] == 1
    assert data["labels_file"] == "labels.json"
    assert data["decisions"] == {**{str(i): "accept" for i in ids[:4]},
                                 **{str(i): "reject" for i in ids[4:6]}}
    assert load_decisions(path, labelled.coco, "labels.json") == made


def test_apply_keeps_accepted_only_and_leaves_the_input_alone(labelled: Labelled,
                                                              tmp_path: Path) -> None:
    coco = labelled.coco
    before = copy.deepcopy(coco)
    ids = _ids(coco)
    accepted, rejected = set(ids[::2]), set(ids[1:6:2])
    out = apply_decisions(coco, _decisions(coco, accepted, rejected))
    assert coco == before
    assert set(_ids(out)) == accepted
    assert out["images"] == coco["images"] and out["categories"] == coco["categories"]
    kept = apply_decisions(coco, _decisions(coco, accepted, rejected), undecided="keep")
    assert set(_ids(kept)) == set(ids) - rejected
    out["annotations"][0]["score"] = -1.0  # the result shares nothing with the input
    assert coco == before
    # pycocotools reads the result, masks intact
    written = tmp_path / "accepted.json"
    written.write_text(json.dumps(out))
    api = COCO(str(written))
    assert sorted(api.getAnnIds()) == sorted(accepted)
    for ann_id in accepted:
        original = next(a for a in coco["annotations"] if a["id"] == ann_id)
        assert int(api.annToMask(api.anns[ann_id]).sum()) == original["area"]


def test_decisions_for_other_labels_are_refused_naming_both(labelled: Labelled,
                                                            tmp_path: Path) -> None:
    other = copy.deepcopy(labelled.coco)
    other["annotations"] = other["annotations"][:-1]
    path = tmp_path / "review.decisions.json"
    path.write_text(_decisions(other, {1}, set(), name="night-shift.json").to_json())
    with pytest.raises(ValidationError) as err:
        load_decisions(path, labelled.coco, "labels.json")
    msg = str(err.value)
    assert "review.decisions.json" in msg and "night-shift.json" in msg and "labels.json" in msg
    with pytest.raises(ValidationError, match="night-shift.json"):
        apply_decisions(labelled.coco, _decisions(other, {1}, set(), name="night-shift.json"))


def _write(tmp_path: Path, coco: dict[str, Any], **changes: Any) -> Path:
    data = json.loads(_decisions(coco, {_ids(coco)[0]}, set()).to_json())
    data.update(changes)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("changes", "says"), [
    ({"format": "something-else"}, "not a review decisions file"),
    ({"version": 2}, "version 2"),
    ({"labels_digest": None}, "labels_digest"),
    ({"decisions": ["1"]}, "must be an object"),
    ({"decisions": {"1": "maybe"}}, "'maybe'"),
    ({"decisions": {"one": "accept"}}, "'one' is not an annotation id"),
    ({"decisions": {"01": "accept"}}, "'01' is not an annotation id"),
    ({"decisions": {"99999": "reject"}}, "[99999]"),
])
def test_bad_decisions_files_say_what_to_fix(labelled: Labelled, tmp_path: Path,
                                             changes: dict[str, Any], says: str) -> None:
    path = _write(tmp_path, labelled.coco, **changes)
    with pytest.raises(ValidationError) as err:
        load_decisions(path, labelled.coco, "labels.json")
    assert says in str(err.value)


def test_unreadable_decisions_files(labelled: Labelled, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot be read"):
        load_decisions(tmp_path / "absent.json", labelled.coco, "labels.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": ')
    with pytest.raises(ValidationError, match="not JSON"):
        load_decisions(broken, labelled.coco, "labels.json")


def test_a_mask_is_decided_once(labelled: Labelled) -> None:
    with pytest.raises(ValidationError, match="both accepted and rejected"):
        _decisions(labelled.coco, {1, 2}, {2})
    with pytest.raises(ValidationError, match="undecided"):
        apply_decisions(labelled.coco, _decisions(labelled.coco, {1}, set()),
                        undecided="maybe")  # type: ignore[arg-type]


def test_not_a_coco_file() -> None:
    with pytest.raises(ValidationError, match="integer 'id'"):
        labels_digest({"images": [{"file_name": "a.png"}], "annotations": []})
    with pytest.raises(ValidationError, match="must be a list"):
        labels_digest({"images": {}, "annotations": []})
