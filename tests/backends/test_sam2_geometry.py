"""Prompt arithmetic into the models' frames (against the processors' own) and crop windows."""

from __future__ import annotations

import numpy as np
import pytest

from cogseg_ml.backends.prompt_geometry import (
    CropOptions,
    CropWindow,
    crop_window,
    longest_side_frame,
    paste,
    prompt_in_window,
    square_frame,
    to_model_frame,
)
from cogseg_ml.errors import ValidationError
from cogseg_ml.prompts import Box, Point, Prompt

SIZES = [(100, 200), (333, 500), (480, 640), (1000, 37), (1, 1), (767, 1023)]
PROMPT = Prompt(points=(Point(0.5, 0.25, 1), Point(0.0, 1.0, 0), Point(1.0, 0.0, 1)),
                box=Box(0.1, 0.2, 0.9, 0.8))


def _pixel_index_coords(prompt: Prompt, h: int, w: int) -> tuple[list[list[float]], list[float]]:
    """What a user of the processors passes: pixel-index coordinates (centre of pixel i: i)."""
    pts = [[p.x * w - 0.5, p.y * h - 0.5] for p in prompt.points]
    assert prompt.box is not None
    b = prompt.box
    return pts, [b.x_min * w - 0.5, b.y_min * h - 0.5, b.x_max * w - 0.5, b.y_max * h - 0.5]


def test_sam1_arithmetic_by_hand() -> None:
    # 200x100 image, longest side to 1024: scale 5.12; a normalized x is x*W pixels, SAM's
    # frame is that minus 0.5 (its encoder adds 0.5 back), times the scale.
    frame = longest_side_frame(100, 200, 1024)
    assert (frame.resized_height, frame.resized_width) == (512, 1024)
    pts, labels, box = to_model_frame(PROMPT, frame)
    assert pts[0] == pytest.approx([(100 - 0.5) * 5.12, (25 - 0.5) * 5.12])
    assert labels.tolist() == [1.0, 0.0, 1.0]
    assert box == pytest.approx([19.5 * 5.12, 19.5 * 5.12, 179.5 * 5.12, 79.5 * 5.12])
    # 333x500 -> 682x1024: SAM rounds the short side, so the two scales differ.
    frame = longest_side_frame(333, 500, 1024)
    assert (frame.resized_height, frame.resized_width) == (682, 1024)
    pts, _, _ = to_model_frame(Prompt(points=(Point(1.0, 1.0),)), frame)
    assert pts[0] == pytest.approx([(500 - 0.5) * 1024 / 500, (333 - 0.5) * 682 / 333])


def test_sam2_arithmetic_by_hand() -> None:
    # SAM 2 stretches the image to 1024x1024: each axis has its own scale.
    frame = square_frame(100, 200, 1024)
    pts, _, box = to_model_frame(PROMPT, frame)
    assert pts[0] == pytest.approx([(100 - 0.5) * 1024 / 200, (25 - 0.5) * 1024 / 100])
    assert box == pytest.approx([19.5 * 5.12, 19.5 * 10.24, 179.5 * 5.12, 79.5 * 10.24])
    _, _, none = to_model_frame(Prompt(points=(Point(0.5, 0.5),)), frame)
    assert none is None


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_square_frame_equals_the_sam2_processor(h: int, w: int) -> None:
    tf = pytest.importorskip("transformers", reason="the sam2 extra (transformers) is needed")
    proc = tf.Sam2Processor(image_processor=tf.Sam2ImageProcessor())
    pts, box = _pixel_index_coords(PROMPT, h, w)
    ref = proc(original_sizes=[[h, w]], input_points=[[pts]],
               input_labels=[[[p.label for p in PROMPT.points]]], input_boxes=[[box]],
               return_tensors="pt")
    ours_pts, ours_labels, ours_box = to_model_frame(PROMPT, square_frame(h, w, 1024))
    assert np.allclose(ours_pts, ref["input_points"][0, 0].numpy(), atol=1e-3)
    assert np.allclose(ours_box, ref["input_boxes"][0, 0].numpy(), atol=1e-3)
    assert ours_labels.tolist() == ref["input_labels"][0, 0].tolist()


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_longest_side_frame_equals_the_sam_processor(h: int, w: int) -> None:
    tf = pytest.importorskip("transformers", reason="the sam2 extra (transformers) is needed")
    proc = tf.SamProcessor(image_processor=tf.SamImageProcessor())
    pts, box = _pixel_index_coords(PROMPT, h, w)
    ref = proc(images=np.zeros((h, w, 3), dtype=np.uint8), input_points=[[pts]],
               input_boxes=[[box]], return_tensors="pt", input_data_format="channels_last")
    frame = longest_side_frame(h, w, 1024)
    assert [frame.resized_height, frame.resized_width] == ref["reshaped_input_sizes"][0].tolist()
    ours_pts, _, ours_box = to_model_frame(PROMPT, frame)
    # The processor gives one point list per prompt: (images, prompts, points, 2).
    assert np.allclose(ours_pts, ref["input_points"][0, 0].numpy(), atol=1e-3)
    assert np.allclose(ours_box, ref["input_boxes"][0, 0].numpy(), atol=1e-3)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_longest_side_frame_equals_segment_anything(h: int, w: int) -> None:
    sa = pytest.importorskip("segment_anything", reason="the sam extra is needed")
    t = sa.utils.transforms.ResizeLongestSide(1024)
    frame = longest_side_frame(h, w, 1024)
    assert (frame.resized_height, frame.resized_width) == t.get_preprocess_shape(h, w, 1024)
    pts, box = _pixel_index_coords(PROMPT, h, w)
    ours_pts, _, ours_box = to_model_frame(PROMPT, frame)
    assert np.allclose(ours_pts, t.apply_coords(np.array(pts), (h, w)), atol=1e-3)
    assert np.allclose(ours_box, t.apply_boxes(np.array([box]), (h, w))[0], atol=1e-3)


# --- crops ------------------------------------------------------------------------------------
def test_crop_window_is_a_square_around_the_prompt_with_margin() -> None:
    # A 30x20 px box at (750, 500) in a 1500x1000 image; margin 0.5 -> side 60.
    p = Prompt(box=Box.from_pixels(750, 500, 780, 520, 1500, 1000))
    win = crop_window(p, 1000, 1500, CropOptions(margin=0.5, min_side=16))
    assert win is not None and win.width == win.height == 60
    assert win.x0 <= 750 and win.x1 >= 780 and win.y0 <= 500 and win.y1 >= 520
    assert (win.x0 + win.x1) / 2 == pytest.approx(765, abs=1)
    assert (win.y0 + win.y1) / 2 == pytest.approx(510, abs=1)
    # A single point: the minimum side.
    win = crop_window(Prompt(points=(Point(0.5, 0.5),)), 1000, 1500, CropOptions(min_side=64))
    assert win == CropWindow(718, 468, 782, 532)
    # Points and box together: the window holds both.
    p = Prompt(points=(Point.from_pixels(700, 450, 1500, 1000),),
               box=Box.from_pixels(750, 500, 780, 520, 1500, 1000))
    win = crop_window(p, 1000, 1500, CropOptions(margin=0.0, min_side=1))
    assert win is not None and win.x0 <= 700 and win.y0 <= 450 and win.x1 >= 780


def test_crop_window_stays_inside_the_image_and_is_skipped_for_large_prompts() -> None:
    corner = Prompt(box=Box.from_pixels(0, 990, 10, 1000, 1500, 1000))
    win = crop_window(corner, 1000, 1500, CropOptions(min_side=64))
    assert win == CropWindow(0, 936, 64, 1000)  # shifted inside, still square
    big = Prompt(box=Box(0.1, 0.1, 0.5, 0.5))
    assert crop_window(big, 1000, 1500, CropOptions(max_fraction=0.5)) is None
    assert crop_window(big, 1000, 1500, CropOptions(margin=0.1, max_fraction=1.0)) is not None
    # Narrow image: the window spans the short side and stays square only where it can.
    win = crop_window(Prompt(points=(Point(0.5, 0.5),)), 40, 2000, CropOptions(min_side=64))
    assert win is not None and (win.y0, win.y1) == (0, 40) and win.width == 64


def test_prompt_in_window_keeps_every_pixel_position() -> None:
    h, w = 1000, 1500
    p = Prompt(points=(Point.from_pixels(760.25, 505.5, w, h),
                       Point.from_pixels(770, 512, w, h, 0)),
               box=Box.from_pixels(750, 500, 780, 520, w, h))
    win = crop_window(p, h, w, CropOptions(margin=0.5, min_side=16))
    assert win is not None
    local = prompt_in_window(p, win, h, w)
    for a, b in zip(p.points, local.points, strict=True):
        assert b.x * win.width + win.x0 == pytest.approx(a.x * w)
        assert b.y * win.height + win.y0 == pytest.approx(a.y * h)
        assert a.label == b.label
    assert local.box is not None and p.box is not None
    assert local.box.to_pixels(win.width, win.height) == pytest.approx(
        tuple(v - o for v, o in zip(p.box.to_pixels(w, h), (win.x0, win.y0, win.x0, win.y0),
                                    strict=True)))


def test_a_mask_predicted_in_a_crop_lands_at_the_right_full_frame_pixels() -> None:
    h, w = 1000, 1500
    obj = Box.from_pixels(750, 500, 780, 520, w, h)  # pixels x 750..779, y 500..519
    win = crop_window(Prompt(box=obj), h, w, CropOptions(margin=0.5, min_side=16))
    assert win is not None
    # A synthetic "prediction" in the crop: exactly the box, in the crop's own pixels.
    local = prompt_in_window(Prompt(box=obj), win, h, w).box
    assert local is not None
    lx0, ly0, lx1, ly1 = (round(v) for v in local.to_pixels(win.width, win.height))
    crop_mask = np.zeros((1, win.height, win.width), dtype=bool)
    crop_mask[0, ly0:ly1, lx0:lx1] = True
    full = paste(crop_mask, win, h, w)
    expected = np.zeros((1, h, w), dtype=bool)
    expected[0, 500:520, 750:780] = True
    assert full.shape == (1, h, w) and np.array_equal(full, expected)
    with pytest.raises(ValidationError, match="do not fit the window"):
        paste(np.zeros((1, 5, 5), dtype=bool), win, h, w)


def test_crop_options_validate() -> None:
    for bad in ({"margin": -1}, {"min_side": 0}, {"min_side": 2.5}, {"max_fraction": 0},
                {"max_fraction": 1.5}):
        with pytest.raises(ValidationError, match="CropOptions"):
            CropOptions(**bad)  # type: ignore[arg-type]

