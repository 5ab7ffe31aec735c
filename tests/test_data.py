"""GAICD loading (``y1 x1 y2 x2 MOS``, MOS -2 skipped) and the horizontal-flip augmentation."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import GAICD_DIR, needs_gaicd

from s2cnet.imageio import open_image
from s2cnet.training.data import GAICD, read_yxyx
from s2cnet.training.synthetic import write_gaicd
from s2cnet.transforms import IMAGENET_MEAN, IMAGENET_STD, hflip_boxes, model_input


def test_read_yxyx_swaps_axes_and_skips_unannotated(tmp_path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("  10   20   60  180 4.50 \n\n   0    0  100  200 -2.00\n   5    6    7    8 1.25\n")
    boxes, mos = read_yxyx(f, with_score=True)
    np.testing.assert_array_equal(boxes, [[20, 10, 180, 60], [6, 5, 8, 7]])
    np.testing.assert_array_equal(mos, np.float32([4.5, 1.25]))
    g = tmp_path / "o.txt"
    g.write_text("1 2 3 4\n5 6 7 8")
    boxes, _ = read_yxyx(g, with_score=False)
    np.testing.assert_array_equal(boxes, [[2, 1, 4, 3], [6, 5, 8, 7]])
    empty = tmp_path / "e.txt"
    empty.write_text("")
    assert read_yxyx(empty, with_score=True)[0].shape == (0, 4)


def test_loader_on_synthetic_gaicd(tmp_path) -> None:
    truth = write_gaicd(tmp_path, n_images=2, size=(200, 120))
    ds = GAICD(tmp_path, "train")
    assert len(ds) == 2 and ds.ids == sorted(truth)
    for i, image_id in enumerate(ds.ids):
        image, crops, mos, objects = ds.load_raw(image_id)
        assert image.size == (200, 120)
        np.testing.assert_array_equal(crops, truth[image_id]["crops"])  # the -2 rows are gone
        np.testing.assert_allclose(mos, truth[image_id]["mos"])
        np.testing.assert_array_equal(objects, truth[image_id]["objects"])

        s = ds[i]
        _, hh, ww = s.image.shape
        assert hh % 32 == 0 and ww % 32 == 0 and hh == 256 and ww == 416  # 200x120 -> short side 256
        scale = torch.tensor([ww / 200, hh / 120, ww / 200, hh / 120])  # differs per axis here
        torch.testing.assert_close(s.crops, torch.from_numpy(truth[image_id]["crops"]) * scale)
        torch.testing.assert_close(s.objects, torch.from_numpy(truth[image_id]["objects"]) * scale)
        torch.testing.assert_close(s.mos, torch.from_numpy(truth[image_id]["mos"]))
        assert s.image_id == image_id


def test_loader_without_objects_and_missing_root(tmp_path) -> None:
    write_gaicd(tmp_path, n_images=1)
    (tmp_path / "objects" / "9000.txt").unlink()
    assert GAICD(tmp_path, "train")[0].objects.shape == (0, 4)
    write_gaicd(tmp_path, n_images=1)
    assert GAICD(tmp_path, "train", use_objects=False)[0].objects.shape == (0, 4)
    assert len(GAICD(tmp_path, "test")) == 1
    with pytest.raises(FileNotFoundError, match="GAICD not found"):
        GAICD(tmp_path / "nowhere", "train")


def _random_boxes(n: int, w: int, h: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xs = (torch.rand(n, 2, generator=g) * w).round().sort(1).values
    ys = (torch.rand(n, 2, generator=g) * h).round().sort(1).values
    xs[:, 1] = torch.maximum(xs[:, 1], xs[:, 0] + 1)
    ys[:, 1] = torch.maximum(ys[:, 1], ys[:, 0] + 1)
    return torch.stack([xs[:, 0], ys[:, 0], xs[:, 1].clamp(max=w), ys[:, 1].clamp(max=h)], dim=1)


@pytest.mark.parametrize("w,h", [(96, 64), (33, 70)])
def test_hflip_boxes_properties(w: int, h: int) -> None:
    boxes = _random_boxes(50, w, h, seed=w)
    boxes = boxes[(boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])]
    assert len(boxes) > 30
    f = hflip_boxes(boxes, w)
    assert (f[:, 0] < f[:, 2]).all() and (f[:, 1] < f[:, 3]).all()
    assert (f[:, 0] >= 0).all() and (f[:, 2] <= w).all()
    torch.testing.assert_close(f[:, [1, 3]], boxes[:, [1, 3]])  # y untouched
    torch.testing.assert_close(f[:, 2] - f[:, 0], boxes[:, 2] - boxes[:, 0])
    torch.testing.assert_close(hflip_boxes(f, w), boxes)  # twice is identity
    # The flipped box on the flipped image holds the mirror image of the original crop.
    img = torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w)
    flipped = img.flip(-1)
    for (x1, y1, x2, y2), (fx1, fy1, fx2, fy2) in zip(boxes.long().tolist(), f.long().tolist()):
        assert torch.equal(flipped[:, fy1:fy2, fx1:fx2], img[:, y1:y2, x1:x2].flip(-1))


class _ForceFlip(random.Random):
    """Jitter factors of exactly 1 (identity) and a coin that always says 'flip'."""

    def uniform(self, a: float, b: float) -> float:
        return 1.0

    def random(self) -> float:
        return 0.0


def test_augmented_sample_flips_image_and_boxes_together(tmp_path) -> None:
    write_gaicd(tmp_path, n_images=1, size=(200, 120))
    plain = GAICD(tmp_path, "train")[0]
    aug = GAICD(tmp_path, "train", augment=True)
    aug.rng = _ForceFlip()
    s = aug[0]
    w = plain.image.shape[-1]
    torch.testing.assert_close(s.image, plain.image.flip(-1))
    torch.testing.assert_close(s.crops, hflip_boxes(plain.crops, w))
    torch.testing.assert_close(s.objects, hflip_boxes(plain.objects, w))
    torch.testing.assert_close(s.mos, plain.mos)
    # The subject (object 0) is bright in the unnormalised image, before and after flipping.
    unnorm = s.image * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
    x1, y1, x2, y2 = s.objects[0].round().long().tolist()
    assert unnorm[0, y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].mean() > 0.85
    assert unnorm[0].mean() < 0.6


@needs_gaicd()
def test_real_gaicd_annotations() -> None:
    ids = json.loads((GAICD_DIR / "split.json").read_text())
    assert len(ids["train"]) == 1036 and len(ids["test"]) == 200 and not set(ids["train"]) & set(ids["test"])
    ds = GAICD(GAICD_DIR, "test")
    total = 0
    for image_id in ids["test"][:20]:
        lines = (GAICD_DIR / "annotations" / f"{image_id}.txt").read_text().split("\n")
        rows = [[float(v) for v in line.split()] for line in lines if line.strip()]
        valid = [r for r in rows if r[4] != -2]
        image, crops, mos, objects = ds.load_raw(image_id)
        w, h = image.size
        assert len(crops) == len(valid) and len(mos) == len(valid) and len(objects) == 10
        np.testing.assert_array_equal(crops[:, 0], [r[1] for r in valid])  # x1 is the 2nd column
        assert ((mos >= 1) & (mos <= 5)).all()
        # y-first storage: with x and y swapped, boxes of landscape photos would leave the frame
        assert (crops[:, 2] <= w + 1).all() and (crops[:, 3] <= h + 1).all()
        assert (crops[:, 0] < crops[:, 2]).all() and (crops[:, 1] < crops[:, 3]).all()
        assert (objects[:, 2] <= w + 1).all() and (objects[:, 3] <= h + 1).all()
        total += len(valid)
    assert 40 * 20 < total < 130 * 20  # about 86 valid crops per image
    s = ds[0]
    assert s.image.shape[1] % 32 == 0 and s.image.shape[2] % 32 == 0 and len(s.crops) == len(s.mos)


def test_scale_jitter_draws_short_sides_only_when_augmenting(tmp_path) -> None:
    truth = write_gaicd(tmp_path, n_images=2, size=(200, 120))
    jittered = GAICD(tmp_path, "train", augment=True, scale_jitter=(224, 288), seed=1)
    sides = []
    for j in range(12):
        s = jittered[j % 2]
        hh, ww = s.image.shape[-2:]
        sides.append(hh)
        assert (hh, ww) in {(224, 384), (288, 480)}  # 200x120 at short side 224 or 288, multiples of 32
        assert (s.crops[:, [0, 2]] <= ww + 1e-3).all() and (s.crops[:, [1, 3]] <= hh + 1e-3).all()
        widths = torch.from_numpy(truth[s.image_id]["crops"][:, 2] - truth[s.image_id]["crops"][:, 0])
        torch.testing.assert_close(s.crops[:, 2] - s.crops[:, 0], widths * ww / 200)  # flips keep widths
    assert set(sides) == {224, 288}
    fixed = GAICD(tmp_path, "train", augment=False, scale_jitter=(224, 288))
    assert {fixed[j % 2].image.shape[-2] for j in range(6)} == {256}  # evaluation ignores the jitter
    assert GAICD(tmp_path, "train", augment=True, short_side=192)[0].image.shape[-2] == 192  # no jitter given


def test_large_jpeg_decodes_in_draft_mode_with_boxes_in_place(tmp_path) -> None:
    """Samples decode as the Cropper decodes uploads (JPEG draft); boxes still land on the same content."""
    truth = write_gaicd(tmp_path, n_images=1, size=(2000, 1500))
    ds = GAICD(tmp_path, "train")
    image_id = ds.ids[0]
    drafted = open_image(ds.image_path(image_id), target_short_side=256)
    assert drafted.original_size == (2000, 1500) and drafted.image.size[1] < 1500  # draft mode kicked in
    assert min(drafted.image.size) >= 256
    s = ds[0]
    hh, ww = s.image.shape[-2:]
    assert (hh, ww) == (256, 352)
    scale = torch.tensor([ww / 2000, hh / 1500, ww / 2000, hh / 1500])
    torch.testing.assert_close(s.crops, torch.from_numpy(truth[image_id]["crops"]) * scale)
    torch.testing.assert_close(s.objects, torch.from_numpy(truth[image_id]["objects"]) * scale)
    assert (s.crops >= 0).all() and (s.crops[:, [0, 2]] <= ww).all() and (s.crops[:, [1, 3]] <= hh).all()
    # the bright subject (object 0) is where its scaled box says
    unnorm = s.image * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
    x1, y1, x2, y2 = s.objects[0].round().long().tolist()
    assert unnorm[0, y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].mean() > 0.85
    assert unnorm[0, :, x2 + 3 :].mean() < 0.5
    # no train/serve skew: the unaugmented sample is exactly the Cropper's model input for that file
    x, cropper_scale = model_input(drafted.image, drafted.original_size, 256)
    torch.testing.assert_close(s.image, x[0])
    np.testing.assert_allclose(cropper_scale, scale.numpy(), rtol=1e-6)
