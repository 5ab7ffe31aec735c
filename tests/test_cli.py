"""The `s2cnet crop` command line and its debug overlay, in-process and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from s2cnet.cli import main
from s2cnet.cropper import DEFAULT_WEIGHTS, Crop, Cropper
from s2cnet.model import S2CNet, S2CNetConfig
from s2cnet.overlay import CUT_OBJECT_COLOUR, OBJECT_COLOUR, ratio_colour, render_overlay, score_heat

ROOT = Path(__file__).resolve().parents[1]
OBJECTS = [(150, 60, 260, 170), (20, 150, 110, 230)]


@pytest.fixture(scope="module")
def model() -> S2CNet:
    if DEFAULT_WEIGHTS.exists():
        return Cropper.from_pretrained(proposer=None).model
    torch.manual_seed(0)
    return S2CNet().eval()


@pytest.fixture(scope="module")
def cropper(model) -> Cropper:
    return Cropper(model, proposer=None)


@pytest.fixture(scope="module")
def object_cropper(model) -> Cropper:
    """Fixed object boxes stand in for the saliency proposer, so the overlay has objects to draw."""
    return Cropper(model, proposer=lambda image: np.array(OBJECTS, np.float32))


def scene(width: int = 320, height: int = 240) -> Image.Image:
    im = Image.new("RGB", (width, height), (90, 140, 200))
    d = ImageDraw.Draw(im)
    d.rectangle((0, int(height * 0.7), width, height), fill=(60, 150, 60))
    d.ellipse((int(width * 0.5), int(height * 0.3), int(width * 0.8), int(height * 0.7)), fill=(250, 200, 40))
    return im


@pytest.fixture()
def photos(tmp_path) -> dict[str, Path]:
    paths = {"a": tmp_path / "a.jpg", "text": tmp_path / "text.jpg", "rotated": tmp_path / "rot.jpg"}
    scene().save(paths["a"], quality=92)
    paths["text"].write_text("definitely not a picture\n")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 320x240, upright 240x320
    scene().save(paths["rotated"], quality=92, exif=exif)
    return paths


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_crop_writes_named_files_and_prints_a_line_per_crop(cropper, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["crop", str(photos["a"]), "--ratio", "16:9", "--ratio", "1:1", "--out", str(out)], cropper=cropper)
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "16:9" in lines[0] and "1:1" in lines[1]
    files = sorted(out.glob("a_*.jpg"))
    assert len(files) == 2
    assert [f.name for f in files] == ["a_16x9.jpg", "a_1x1.jpg"]  # named by ratio, as the pipeline names them
    for f in files:
        w, h = Image.open(f).size
        assert str(f) in "\n".join(lines)
        assert w * 9 == h * 16 or w == h  # exact ratios, to the pixel


def test_json_records_and_bad_images_do_not_stop_the_batch(cropper, photos, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["crop", str(photos["a"]), str(photos["text"]), str(tmp_path / "missing.png"), str(photos["rotated"]),
            "--ratio", "4:5", "--out", str(out), "--json"]
    assert main(args, cropper=cropper) == 1
    records = json_lines(capsys.readouterr().out)
    assert [r["path"] for r in records] == args[1:5]
    good, text, missing, rotated = records
    assert "looks like text" in text["error"] and set(text) == {"path", "error"}
    assert missing["error"] == "no such file"
    assert (good["width"], good["height"]) == (320, 240)
    assert (rotated["width"], rotated["height"]) == (240, 320)  # EXIF applied: boxes are upright pixels
    for rec in (good, rotated):
        (crop,) = rec["crops"]
        x1, y1, x2, y2 = crop["box"]
        assert crop["ratio"] == "4:5" and (x2 - x1) * 5 == (y2 - y1) * 4
        assert 0 <= x1 < x2 <= rec["width"] and 0 <= y1 < y2 <= rec["height"]
        assert isinstance(crop["score"], float) and crop["cut_objects"] == []
        assert Image.open(crop["file"]).size == (x2 - x1, y2 - y1)


def test_crop_file_holds_the_boxed_pixels(cropper, tmp_path, capsys):
    src = tmp_path / "grad.png"
    a = np.zeros((200, 300, 3), np.uint8)
    a[..., 0] = np.arange(300)[None, :] * 255 // 299
    a[..., 1] = np.arange(200)[:, None] * 255 // 199
    Image.fromarray(a).save(src)
    assert main(["crop", str(src), "--ratio", "1:1", "--out", str(tmp_path / "o"), "--json", "--quality", "100"],
                cropper=cropper) == 0
    (crop,) = json_lines(capsys.readouterr().out)[0]["crops"]
    x1, y1, x2, y2 = crop["box"]
    written = np.asarray(Image.open(crop["file"]), np.int16)
    assert np.abs(written - a[y1:y2, x1:x2]).mean() < 3


def test_no_ratio_gives_one_free_crop(cropper, photos, capsys):
    assert main(["crop", str(photos["a"]), "--json"], cropper=cropper) == 0
    (rec,) = json_lines(capsys.readouterr().out)
    (crop,) = rec["crops"]
    x1, y1, x2, y2 = crop["box"]
    assert crop["ratio"] is None and "file" not in crop  # no --out: nothing written
    assert 0.5 <= (x2 - x1) / (y2 - y1) <= 2.0


def test_text_output_sends_errors_to_stderr(cropper, photos, capsys):
    assert main(["crop", str(photos["text"]), str(photos["a"])], cropper=cropper) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {photos['text']}: looks like text")
    assert "free" in captured.out and "box=" in captured.out


def test_a_ratio_the_photo_cannot_hold_fails_alone(cropper, tmp_path, capsys):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (15, 20), (200, 10, 10)).save(thin)  # narrower than 16 px: no exact 16:9 crop
    assert main(["crop", str(thin), "--ratio", "16:9", "--json"], cropper=cropper) == 1
    assert "too small" in json_lines(capsys.readouterr().out)[0]["error"]
    # as in the service and the batch job: the ratios it can hold are still cropped, the exit code says
    assert main(["crop", str(thin), "--ratio", "1:1", "--ratio", "16:9", "--json"], cropper=cropper) == 1
    rec = json_lines(capsys.readouterr().out)[0]
    assert [c["ratio"] for c in rec["crops"]] == ["1:1"]
    assert rec["errors"] == [{"ratio": "16:9", "detail": "a 15x20 photo is too small for an exact 16:9 crop"}]
    assert main(["crop", str(thin), "--ratio", "1:1", "--ratio", "16:9"], cropper=cropper) == 1
    captured = capsys.readouterr()
    assert "1:1  box=" in captured.out and "error: " in captured.err and "16:9: a 15x20 photo is too small" in captured.err


def test_pixel_limit_option(cropper, photos, capsys):
    before = Image.MAX_IMAGE_PIXELS
    assert main(["crop", str(photos["a"]), "--json", "--max-pixels", "50000"], cropper=cropper) == 1
    assert "over the limit" in json_lines(capsys.readouterr().out)[0]["error"]
    assert main(["crop", str(photos["a"]), "--json", "--max-pixels", "0"], cropper=cropper) == 0
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global guard is restored


def test_same_stem_twice_does_not_overwrite(cropper, tmp_path, capsys):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        scene().save(tmp_path / d / "p.jpg")
    out = tmp_path / "out"
    assert main(["crop", str(tmp_path / "x" / "p.jpg"), str(tmp_path / "y" / "p.jpg"), "--ratio", "1:1",
                 "--out", str(out), "--json"], cropper=cropper) == 0
    files = [r["crops"][0]["file"] for r in json_lines(capsys.readouterr().out)]
    assert len(set(files)) == 2 and all(Path(f).exists() for f in files)
    assert Path(files[1]).name.endswith("_2.jpg")


def test_folders_globs_comma_ratios_and_output_size(cropper, photos, tmp_path, capsys):
    out = tmp_path / "out"
    folder = photos["a"].parent
    code = main(["crop", str(folder), "--ratio", "16:9,8:6", "--width", "160", "--out", str(out), "--json"],
                cropper=cropper)
    records = json_lines(capsys.readouterr().out)
    assert code == 1  # the text file named .jpg in the folder fails, the others are cropped
    assert sorted(Path(r["path"]).name for r in records) == ["a.jpg", "rot.jpg", "text.jpg"]
    good = [r for r in records if "crops" in r]
    assert [c["ratio"] for c in good[0]["crops"]] == ["16:9", "4:3"]  # canonical form
    for r in good:
        for c in r["crops"]:
            assert Image.open(c["file"]).size == tuple(c["size"]) and c["size"][0] == min(160, c["box"][2] - c["box"][0])
    assert main(["crop", str(folder / "a.*"), "--width", "64", "--height", "64", "--out", str(out / "sq"), "--json"],
                cropper=cropper) == 0
    (rec,) = json_lines(capsys.readouterr().out)
    assert [c["ratio"] for c in rec["crops"]] == ["1:1"] and Image.open(rec["crops"][0]["file"]).size == (64, 64)


def test_version_and_help_load_no_torch():
    code = ("import sys, contextlib, io; from s2cnet.cli import build_parser; p = build_parser(); "
            "f = io.StringIO()\nwith contextlib.redirect_stdout(f):\n    try: p.parse_args(['crop', '--help'])\n"
            "    except SystemExit: pass\nprint('torch' in sys.modules, 'INPUT' in f.getvalue())")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["False", "True"]
    proc = subprocess.run([sys.executable, "-m", "s2cnet.cli", "--version"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("s2cnet (ugc-crop) ")


def test_cli_pixel_default_is_the_loaders():
    from s2cnet import cli, imageio

    assert cli.DEFAULT_MAX_PIXELS == imageio.DEFAULT_MAX_PIXELS


# -- debug overlay ----------------------------------------------------------------------------------
def test_debug_writes_overlay_png_of_the_right_size(object_cropper, tmp_path, capsys):
    src = tmp_path / "big.jpg"
    scene(1200, 800).save(src)
    small = tmp_path / "small.png"
    scene().save(small)
    out = tmp_path / "out"
    assert main(["crop", str(src), str(small), "--ratio", "1:1", "--out", str(out), "--debug", "--json"],
                cropper=object_cropper) == 0
    big_rec, small_rec = json_lines(capsys.readouterr().out)
    assert Image.open(big_rec["debug"]).size == (1024, 683)  # long side capped at --debug-size 1024
    assert Image.open(small_rec["debug"]).size == (320, 240)  # never enlarged
    assert Path(big_rec["debug"]).name == "big_debug.png"
    assert main(["crop", str(src), "--out", str(out / "full"), "--debug", "--debug-size", "0", "--json"],
                cropper=object_cropper) == 0
    assert Image.open(json_lines(capsys.readouterr().out)[0]["debug"]).size == (1200, 800)


def test_overlay_draws_objects_crops_and_heat():
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    boxes = np.array([[0, 0, 100, 100], [100, 0, 200, 100]])
    crop = Crop(ratio="1:1", box=(100, 0, 200, 100), score=0.9, cut_objects=[(20, 20, 60, 60)])
    out = np.asarray(render_overlay(image, boxes, np.array([0.1, 0.9]), np.array([[20, 20, 60, 60], [120, 50, 160, 90]]),
                                    [crop], max_side=None))
    assert out.shape == (100, 200, 3)
    assert tuple(out[40, 20]) == CUT_OBJECT_COLOUR  # left edge of the object the crop cuts
    assert tuple(out[70, 120]) == OBJECT_COLOUR  # left edge of an intact object
    assert tuple(out[50, 199]) == ratio_colour("1:1")  # right edge of the chosen crop, in its ratio's colour
    cold, warm = out[60, 80].astype(int), out[60, 150].astype(int)  # low-score half blue, high-score half red
    assert cold[2] > cold[0] and warm[0] > warm[2]


def test_score_heat_matches_brute_force():
    rng = np.random.default_rng(0)
    w, h = 23, 17
    xy = rng.integers(0, [w, h, w, h], size=(40, 4))
    boxes = np.stack([np.minimum(xy[:, 0], xy[:, 2]), np.minimum(xy[:, 1], xy[:, 3]),
                      np.maximum(xy[:, 0], xy[:, 2]) + 1, np.maximum(xy[:, 1], xy[:, 3]) + 1], 1)
    scores = rng.normal(size=40)
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for (x1, y1, x2, y2), s in zip(boxes, scores):
        total[y1:y2, x1:x2] += s
        count[y1:y2, x1:x2] += 1
    expected = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    np.testing.assert_allclose(score_heat((w, h), boxes, scores), expected, equal_nan=True, atol=1e-9)


def test_overlay_scores_agree_with_the_chosen_crops(object_cropper, cropper):
    image = scene()
    objects = np.array(OBJECTS, np.float32)
    for c, objs in ((cropper, np.zeros((0, 4), np.float32)), (object_cropper, objects)):
        crops = c.crop(image, ["16:9", "1:1"], objects=objs)
        analysis = c.analyse(image, ["16:9", "1:1"], objects=objs)
        assert [x.box for x in analysis.crops] == [x.box for x in crops]
        boxes = np.concatenate([c_ for c_ in analysis.candidates.values()])
        scores = np.concatenate([s_ for s_ in analysis.scores.values()])
        # the heat map shows the scores the choice used: the graph's where it scored (always the chosen
        # crops, coarse-to-fine), the coarse readout's elsewhere
        graph = np.concatenate([g for g in analysis.graph_scored.values()])
        np.testing.assert_allclose(scores[graph], c.score(image, boxes[graph], objects=objs), atol=1e-4)
        for crop in crops:
            k = int(np.flatnonzero((boxes == crop.box).all(1))[0])
            assert graph[k] and abs(scores[k] - crop.score) < 1e-4  # the heat map shows the scores the choice used
            same_ratio = np.array([(b[2] - b[0]) * int(crop.ratio.split(":")[1]) == (b[3] - b[1]) * int(crop.ratio.split(":")[0])
                                   for b in boxes])
            margin = getattr(c, "integrity_margin", 0.0) if len(objs) else 0.0
            assert crop.score >= scores[same_ratio].max() - margin - 1e-4


# -- a real process ---------------------------------------------------------------------------------
def test_python_m_s2cnet_cli_subprocess(photos, tmp_path):
    weights = tmp_path / "random.pt"
    torch.manual_seed(0)
    torch.save({"model": S2CNet().state_dict(), "config": S2CNetConfig().to_dict()}, weights)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "s2cnet.cli", "crop", str(photos["a"]), str(photos["text"]),
                           "--ratio", "3:2", "--out", str(out), "--json", "--debug", "--weights", str(weights),
                           "--no-objects"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    good, bad = json_lines(proc.stdout)
    assert "looks like text" in bad["error"]
    (crop,) = good["crops"]
    x1, y1, x2, y2 = crop["box"]
    assert Path(crop["file"]).name == "a_3x2.jpg" and Path(crop["file"]).exists()
    assert good["model_version"].startswith("s2cnet-")
    assert Image.open(good["debug"]).size == (320, 240)
