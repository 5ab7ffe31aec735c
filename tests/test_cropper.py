"""The public Cropper API on real photos (scikit-image's bundled samples): scores and exact-ratio crops.

Uses the committed weights through ``Cropper.from_pretrained()`` when they exist, else a seeded
random-weight model: every property checked here must hold for any weights.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from s2cnet.candidates import candidates
from s2cnet.cropper import DEFAULT_WEIGHTS, Cropper
from s2cnet.imageio import ImageLoadError
from s2cnet.model import S2CNet

RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:2", "4:5", "21:9"]


@pytest.fixture(scope="module")
def cropper() -> Cropper:
    if DEFAULT_WEIGHTS.exists():
        return Cropper.from_pretrained()
    torch.manual_seed(0)
    return Cropper(S2CNet(), proposer=None)


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "astronaut.jpg"
    Image.fromarray(skimage.data.astronaut()).save(path, quality=92)
    return str(path)


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea())  # 451 x 300: odd sizes test pixel exactness


NO_OBJECTS = np.zeros((0, 4), np.float32)


def test_score_shape_and_input_kinds(cropper: Cropper, astronaut: str) -> None:
    boxes = candidates(512, 512)
    scores = cropper.score(astronaut, boxes, objects=NO_OBJECTS)
    assert scores.shape == (len(boxes),) and np.isfinite(scores).all()
    assert np.ptp(scores) > 0  # different crops, different scores
    with open(astronaut, "rb") as f:
        data = f.read()
    np.testing.assert_allclose(cropper.score(data, boxes, objects=NO_OBJECTS), scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cropper.score(Image.open(astronaut), boxes, objects=NO_OBJECTS), scores,
                               rtol=1e-5, atol=1e-6)
    assert cropper.score(astronaut, np.zeros((0, 4)), objects=NO_OBJECTS).shape == (0,)


def test_objects_change_scores(cropper: Cropper, astronaut: str) -> None:
    if not cropper.model.cfg.use_graph:
        pytest.skip("the loaded model is the GAIC baseline (use_graph=False): objects are not used")
    boxes = candidates(512, 512)[:40]
    face, rocket = [170, 40, 290, 200], [350, 150, 460, 500]
    plain = cropper.score(astronaut, boxes, objects=NO_OBJECTS)
    given = cropper.score(astronaut, boxes, objects=np.array([face, rocket], np.float32))
    assert np.isfinite(given).all() and not np.allclose(plain, given, atol=1e-4)
    np.testing.assert_allclose(cropper.score(astronaut, boxes, objects=[face, rocket]), given, rtol=1e-6)


def test_boxes_are_in_the_images_own_pixels(cropper: Cropper, cat: Image.Image) -> None:
    """The same photo at twice the size, with boxes at twice the coordinates, scores the same."""
    boxes = candidates(*cat.size)
    small = cropper.score(cat, boxes, objects=NO_OBJECTS)
    big_img = cat.resize((cat.width * 2, cat.height * 2), Image.BICUBIC)
    big = cropper.score(big_img, boxes * 2, objects=NO_OBJECTS)
    # resampling the photo moves trained scores a little (measured 0.14 std), never like wrong boxes do
    assert np.corrcoef(small, big)[0, 1] > 0.99 and np.abs(small - big).max() < 0.25 * small.std()
    unscaled = cropper.score(big_img, boxes, objects=NO_OBJECTS)  # control: wrong coordinates score differently
    assert np.abs(small - unscaled).max() > 1.0 * small.std()


@pytest.mark.parametrize("size", [None, (97, 640), (1200, 180)])
def test_crop_per_ratio_is_exact_and_inside(cropper: Cropper, cat: Image.Image, size) -> None:
    image = cat if size is None else cat.resize(size, Image.BILINEAR)
    w, h = image.size
    crops = cropper.crop(image, ratios=RATIOS, objects=NO_OBJECTS)
    assert [c.ratio for c in crops] == RATIOS
    for c in crops:
        x1, y1, x2, y2 = c.box
        assert all(isinstance(v, int) for v in c.box)
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (c.ratio, c.box, (w, h))
        a, b = (int(t) for t in c.ratio.split(":"))
        assert Fraction(x2 - x1, y2 - y1) == Fraction(a, b), (c.ratio, c.box)
        assert np.isfinite(c.score)


def test_crop_score_is_the_boxs_score_and_near_the_best(cropper: Cropper, cat: Image.Image) -> None:
    crops = cropper.crop(cat, ratios=["1:1", "16:9"], objects=NO_OBJECTS)
    for c in crops:
        cand = candidates(*cat.size, c.ratio, cropper.grid)
        scores = cropper.score(cat, cand, objects=NO_OBJECTS)
        assert list(c.box) in cand.tolist()
        assert c.score == pytest.approx(float(cropper.score(cat, [c.box], objects=NO_OBJECTS)[0]), abs=1e-5)
        # without object boxes nothing can be cut, so the chosen crop is the best-scored candidate
        assert c.score == pytest.approx(float(scores.max()), abs=1e-5) and c.cut_objects == []


def test_free_crop_and_batch_agree_with_single(cropper: Cropper, cat: Image.Image, astronaut: str) -> None:
    (free,) = cropper.crop(cat, objects=NO_OBJECTS)
    x1, y1, x2, y2 = free.box
    assert free.ratio is None and 0 <= x1 < x2 <= cat.width and 0 <= y1 < y2 <= cat.height
    batch = cropper.crop_batch([cat, astronaut], ["1:1", "4:3"], objects=[NO_OBJECTS, NO_OBJECTS])
    assert len(batch) == 2 and [len(r) for r in batch] == [2, 2]
    single = cropper.crop(astronaut, ["1:1", "4:3"], objects=NO_OBJECTS)
    assert [c.box for c in batch[1]] == [c.box for c in single]
    assert [c.score for c in batch[1]] == pytest.approx([c.score for c in single], abs=1e-5)


def test_crop_rejects_bad_ratios_and_inputs(cropper: Cropper, cat: Image.Image) -> None:
    with pytest.raises(ValueError, match="W:H"):
        cropper.crop(cat, ratios=["16x9"], objects=NO_OBJECTS)
    with pytest.raises(ValueError, match="too small"):
        cropper.crop(cat.resize((15, 40)), ratios=["1:1", "16:9"], objects=NO_OBJECTS)  # 16 px wide needed
    with pytest.raises(ImageLoadError):
        cropper.crop(b"definitely not an image", ratios=["1:1"])


def test_crop_with_objects_stays_near_best_and_reports_cuts(cropper: Cropper, astronaut: str) -> None:
    """Object-aware choice may trade at most ``integrity_margin`` of score for cutting fewer objects."""
    face = [170, 40, 290, 200]
    for c in cropper.crop(astronaut, ratios=["16:9", "9:16", "1:1"], objects=[face]):
        cand = candidates(512, 512, c.ratio, cropper.grid)
        scores = cropper.score(astronaut, cand, objects=[face])
        assert c.score >= scores.max() - cropper.integrity_margin - 1e-5
        x1, y1, x2, y2 = c.box
        kept = max(0, min(x2, 290) - max(x1, 170)) * max(0, min(y2, 200) - max(y1, 40)) / (120 * 160)
        assert (c.cut_objects == [tuple(face)]) == (0.1 < kept < 0.9), (c.box, kept, c.cut_objects)
