"""The category table and image ids shared by the labeler's COCO file and the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import Box, FileRef, Prompt
from cogseg_ml.samples import (
    UNLABELLED,
    Category,
    CategoryTable,
    Instance,
    Sample,
    image_ids,
    samples_from_coco,
)

BOX = Prompt(box=Box(0.1, 0.1, 0.5, 0.5))


def _sample(ref: str, *cats: str | None, **meta: object) -> Sample:
    return Sample(FileRef(external_id=ref), tuple(Instance(BOX, c) for c in cats), meta=meta)


def test_unlabelled_instances_get_a_foreground_class_never_zero() -> None:
    table = CategoryTable.build(None, [_sample("a", None, None)])
    assert table.names == [UNLABELLED]
    assert table.id_of(None) == 1
    assert table.num_classes == 2


def test_names_are_numbered_from_one_and_unlabelled_comes_after() -> None:
    table = CategoryTable.build(None, [_sample("a", "valve", None), _sample("b", "flange")])
    assert [(c.id, c.name) for c in table.categories] == [(1, "flange"), (2, "valve"),
                                                          (3, UNLABELLED)]


def test_a_category_missing_from_the_given_list_is_an_error_naming_it() -> None:
    with pytest.raises(ValidationError, match="'gauge'.*externalId='a'"):
        CategoryTable.build(["valve"], [_sample("a", "valve", "gauge")])


def test_given_ids_are_kept_and_zero_is_refused() -> None:
    table = CategoryTable.build([{"id": 90, "name": "toothbrush"}, Category(1, "person")],
                                [_sample("a", "person", "toothbrush")])
    assert table.id_of("toothbrush") == 90
    assert table.num_classes == 91
    with pytest.raises(ValidationError, match="0 is the background"):
        CategoryTable.build([{"id": 0, "name": "bg"}])


def test_coco_category_ids_and_image_ids_survive_reading(tmp_path: Path) -> None:
    coco = {"images": [{"id": 17, "file_name": "a.jpg", "width": 100, "height": 50},
                       {"id": 4, "file_name": "b.jpg", "width": 100, "height": 50}],
            "categories": [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}],
            "annotations": [{"id": 1, "image_id": 17, "category_id": 90, "bbox": [1, 1, 9, 9]},
                            {"id": 2, "image_id": 4, "category_id": 3, "bbox": [1, 1, 9, 9]}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    samples = samples_from_coco(path)
    table = CategoryTable.build(None, samples)
    assert [(c.id, c.name) for c in table.categories] == [(3, "car"), (90, "toothbrush")]
    assert [iid for _, iid in image_ids(samples)] == [17, 4]


def test_an_unknown_coco_category_id_is_an_error(tmp_path: Path) -> None:
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "car"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValidationError, match="annotation 5 has category_id 7"):
        samples_from_coco(path)


def test_image_ids_one_per_file_in_order_of_first_appearance() -> None:
    samples = [_sample("a", "x"), _sample("b", "x"), _sample("a", "y"), _sample("c", "x")]
    assert [iid for _, iid in image_ids(samples)] == [1, 2, 1, 3]
