"""Candidate crops: always inside the photo, exact to the pixel for fixed ratios, GAIC's limits otherwise."""

from __future__ import annotations

from math import gcd

import numpy as np
import pytest

from s2cnet.candidates import GridConfig, candidates, parse_ratio

SIZES = [(1, 1), (3, 2), (17, 9), (64, 96), (96, 64), (101, 67), (640, 480), (480, 640), (1024, 683),
         (4000, 3000), (3000, 4000), (1920, 1080), (1000, 100), (100, 1000), (5000, 300), (37, 1500)]
RATIOS = ["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9", "5:4", "1:3"]


def _inside(boxes: np.ndarray, w: int, h: int) -> None:
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    assert np.issubdtype(boxes.dtype, np.integer)
    x1, y1, x2, y2 = boxes.T
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= w).all() and (y2 <= h).all()
    assert (x2 > x1).all() and (y2 > y1).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes), "duplicate candidates"


@pytest.mark.parametrize("w,h", SIZES)
def test_fixed_ratio_candidates_are_exact_and_inside(w: int, h: int) -> None:
    tested = 0
    for ratio in RATIOS:
        a, b = (int(t) for t in ratio.split(":"))
        if w < a // gcd(a, b) or h < b // gcd(a, b):
            with pytest.raises(ValueError, match="too small"):
                candidates(w, h, ratio)
            continue
        boxes = candidates(w, h, ratio)
        _inside(boxes, w, h)
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert ((bw * b) == (bh * a)).all(), f"{ratio} on {w}x{h} is not exact"
        # the largest exact crop comes first and touches two opposite sides of the photo
        assert bw[0] == bw.max() and (bw[0] + a // gcd(a, b) > w or bh[0] + b // gcd(a, b) > h)
        tested += 1
    assert tested > 0


@pytest.mark.parametrize("w,h", [(640, 480), (1024, 683), (1920, 1080), (300, 3000)])
def test_fixed_ratio_grid_and_min_area_are_configurable(w: int, h: int) -> None:
    default = candidates(w, h, "1:1")
    coarse = candidates(w, h, "1:1", GridConfig(scales=2, positions=2))
    fine = candidates(w, h, "1:1", GridConfig(scales=7, positions=9))
    assert len(coarse) < len(default) < len(fine)
    assert len(coarse) <= 2 * 2 * 2
    for min_area in (0.3, 0.5, 0.8):
        boxes = candidates(w, h, "1:1", GridConfig(min_area=min_area))
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert areas.min() >= min_area * areas.max() - 1e-9  # "of the largest crop", as documented
    full = candidates(w, h, "1:1", GridConfig(min_area=1.0))
    assert len(set((full[:, 2] - full[:, 0]).tolist())) == 1  # one scale: only positions vary


@pytest.mark.parametrize("w,h", [(64, 96), (96, 64), (640, 480), (1024, 683), (1080, 1920), (1000, 600)])
def test_free_candidates_respect_aspect_and_area(w: int, h: int) -> None:
    for grid in (GridConfig(), GridConfig(min_area=0.3, max_aspect=3.0), GridConfig(min_area=0.7, max_aspect=1.5)):
        boxes = candidates(w, h, None, grid)
        _inside(boxes, w, h)
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert (bw * bh >= grid.min_area * w * h).all()
        assert (bw / bh <= grid.max_aspect + 1e-9).all() and (bh / bw <= grid.max_aspect + 1e-9).all()


def test_free_candidates_follow_gaic_grid() -> None:
    """12x12 bins, corners in the first/last 4 cells: at most 4^4 = 256 crops, corners on the bin grid."""
    w, h = 1200, 960  # bins of exactly 100 x 80 px
    boxes = candidates(w, h)
    assert 0 < len(boxes) <= 256
    assert set(np.unique(boxes[:, 0])) <= {0, 100, 200, 300} and set(np.unique(boxes[:, 3])) <= {720, 800, 880, 960}
    assert [0, 0, w, h] in boxes.tolist()  # the whole photo is always a candidate
    # Brute force over the same grid with the documented limits gives the same set.
    xs, ys = np.arange(13) * 100, np.arange(13) * 80
    expected = {(x1, y1, x2, y2) for x1 in xs[:4] for y1 in ys[:4] for x2 in xs[9:] for y2 in ys[9:]
                if (x2 - x1) * (y2 - y1) >= 0.5 * w * h and 0.5 <= (x2 - x1) / (y2 - y1) <= 2}
    assert set(map(tuple, boxes.tolist())) == expected
    bigger = candidates(w, h, None, GridConfig(bins=16, corner_bins=5, min_area=0.3))
    assert len(bigger) > len(boxes)


@pytest.mark.parametrize("w,h", [(1, 1), (2, 3), (5000, 300), (300, 5000), (10, 1)])
def test_free_candidates_on_tiny_and_panoramic_photos(w: int, h: int) -> None:
    """No grid crop fits the aspect limit on extreme panoramas: the documented fallback is the whole photo."""
    boxes = candidates(w, h)
    _inside(boxes, w, h)
    if max(w, h) / min(w, h) > 2 * 3:  # even the most extreme grid crop is too elongated
        assert boxes.tolist() == [[0, 0, w, h]]


@pytest.mark.parametrize("ratio,expected", [("16:9", (16, 9)), ("4:2", (2, 1)), (" 3 : 2 ", (3, 2)), ("1:1", (1, 1)),
                                            ("100:1", (100, 1))])
def test_parse_ratio(ratio: str, expected: tuple[int, int]) -> None:
    assert parse_ratio(ratio) == expected


@pytest.mark.parametrize("bad", ["", "16", "16:9:1", "16x9", "1.5:1", "0:1", "1:0", "-1:1", "a:b", "101:1", "16:",
                                 None, 16, (16, 9)])
def test_bad_ratio_strings_raise(bad) -> None:
    with pytest.raises(ValueError):
        parse_ratio(bad)
    if bad is not None:  # None means "free ratio" to candidates()
        with pytest.raises(ValueError):
            candidates(640, 480, bad)


def test_too_small_image_for_ratio_raises() -> None:
    with pytest.raises(ValueError, match="too small"):
        candidates(15, 100, "16:9")  # 16 px wide needed
    with pytest.raises(ValueError, match="too small"):
        candidates(100, 2, "1:3")
    assert candidates(16, 9, "16:9").tolist() == [[0, 0, 16, 9]]  # exactly fits: one crop
    with pytest.raises(ValueError):
        candidates(0, 10)


def test_anchored_candidates_centre_on_each_anchor_inside_the_photo():
    from s2cnet.candidates import anchored_candidates

    grid = GridConfig()
    anchors = np.array([[500, 100, 560, 180], [0, 0, 10, 10]], np.float32)  # the second sits in a corner
    boxes = anchored_candidates(900, 600, "9:16", anchors, grid)
    assert len(boxes) == 2 * grid.scales
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (w * 16 == h * 9).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 900).all() and (boxes[:, 3] <= 600).all()
    first = boxes[0::2]  # per scale: anchor 0, anchor 1
    assert (np.abs((first[:, 0] + first[:, 2]) / 2 - 530) <= 1).all()
    assert (boxes[1::2, 0] == 0).all()  # pushed inside, not off the edge
    assert anchored_candidates(900, 600, "1:1", np.zeros((0, 4)), grid).shape == (0, 4)


def test_free_crops_around_a_small_subject_go_below_the_grids_minimum_area():
    from s2cnet.candidates import anchored_free_candidates

    grid = GridConfig()
    small, large = [600, 100, 680, 220], [100, 50, 800, 550]
    boxes = anchored_free_candidates(900, 600, np.float64([small]), grid)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (900 * 600)
    assert len(boxes) and area.min() >= grid.subject_min_area - 0.01 and area.max() < grid.min_area
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 900).all() and (boxes[:, 3] <= 600).all()
    assert ((boxes[:, 0] <= small[0]) & (boxes[:, 1] <= small[1]) & (boxes[:, 2] >= small[2]) & (boxes[:, 3] >= small[3])).all()
    aspects = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
    assert (aspects >= 1 / grid.max_aspect - 0.01).all() and (aspects <= grid.max_aspect + 0.01).all()
    assert anchored_free_candidates(900, 600, np.float64([large]), grid).shape == (0, 4)  # no room under half the photo
    assert anchored_free_candidates(900, 600, np.float64([small]), GridConfig(subject_min_area=0.5)).shape == (0, 4)
