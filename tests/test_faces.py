"""The face detector, the crop policy (faces by prominence, clean drops, the caller's regions), the focal
point and safe box, and one photo giving the same crops through every entry point."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from skimage import data as skdata

from s2cnet.choice import KEEP_WHOLE, Policy, Regions, Subjects, caller_regions, focal_point_and_safe_box, kept_share
from s2cnet.cropper import DEFAULT_WEIGHTS, Cropper
from s2cnet.faces import CheckedDetector, LibFaceDetection
from s2cnet.image_stage import image_stage
from s2cnet.proposals import FACE, PERSON, Proposals


def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


# -- the detector ------------------------------------------------------------------------------------
def test_the_shipped_detector_finds_the_astronauts_face_and_nothing_in_a_flat_image():
    det = LibFaceDetection()
    boxes, scores = det(astronaut())
    assert len(boxes) >= 1 and scores[0] >= det.threshold
    x1, y1, x2, y2 = boxes[np.argmax(scores)]
    assert 180 < (x1 + x2) / 2 < 280 and 60 < (y1 + y2) / 2 < 170  # her face, in the 512x512 photo
    empty, _ = det(Image.new("RGB", (640, 480), (120, 130, 140)))
    assert empty.shape == (0, 4)
    clone = pickle.loads(pickle.dumps(det))  # Ray ships it to workers
    np.testing.assert_allclose(clone(astronaut())[0], boxes)


def test_faces_are_found_on_the_large_decode_and_reported_in_full_size_pixels():
    big = astronaut().resize((2048, 2048))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=92)
    loaded = image_stage(buf.getvalue(), 256, LibFaceDetection())
    assert loaded.original_size == (2048, 2048) and min(loaded.image.size) < 512  # model-size pixels
    boxes, scores = loaded.faces
    cx = (boxes[0, 0] + boxes[0, 2]) / 2
    assert 720 < cx < 1120  # 4x the 512-px position


def test_a_users_detector_is_checked():
    det = CheckedDetector(lambda im: [[10, 10, 50, 60], [5, 5, 5, 9]])  # boxes alone; the second is empty
    boxes, scores = det(Image.new("RGB", (100, 100)))
    assert boxes.tolist() == [[10, 10, 50, 60]] and scores.tolist() == [1.0]
    with pytest.raises(ValueError, match="scores"):
        CheckedDetector(lambda im: ([[10, 10, 50, 60]], [0.5, 0.9]))(Image.new("RGB", (100, 100)))


# -- the policy --------------------------------------------------------------------------------------
def subjects_of(faces, conf=None, others=(), size=(1000, 500)) -> Subjects:
    boxes = np.float32(list(faces) + list(others)).reshape(-1, 4)
    kinds = (FACE,) * len(faces) + (PERSON,) * len(others)
    conf = np.ones(len(boxes), np.float32) if conf is None else np.float32(list(conf) + [1] * len(others))
    return Subjects.of(Proposals(boxes, kinds, None, conf), size, protected_objects=3)


def test_the_most_prominent_face_beats_a_cluster_of_small_ones():
    big = [100, 100, 250, 280]
    small = [[700, 100, 740, 150], [760, 100, 800, 150], [820, 100, 860, 150], [880, 100, 920, 150]]
    subjects = subjects_of([big, *small])
    assert len(subjects.faces) == 1 and len(subjects.minor_faces) == 4  # small ones are < 30% of its area
    boxes = np.float32([[0, 0, 500, 500], [500, 0, 1000, 500]])
    crop = Policy().choose("1:1", boxes, np.float32([0.0, 1.0]), subjects)
    assert crop.box == (0, 0, 500, 500) and crop.kept_faces == 1


def test_a_face_no_crop_keeps_whole_is_left_out_cleanly_rather_than_sliced():
    face = [400, 100, 700, 300]  # 300 px wide: no 250-px crop holds it
    subjects = subjects_of([face])
    boxes = np.float32([[500, 0, 750, 250], [0, 0, 250, 250]])  # slices it / leaves it out
    crop = Policy().choose("1:1", boxes, np.float32([1.0, 0.0]), subjects)
    assert crop.box == (0, 0, 250, 250)
    assert kept_share(np.float32([crop.box]), np.float32([face]))[0, 0] == 0


def test_keep_boxes_rank_above_faces_and_focus_is_inside_every_crop():
    face = [600, 100, 700, 200]
    subjects = subjects_of([face])
    boxes = np.float32([[0, 0, 500, 500], [500, 0, 1000, 500], [250, 0, 750, 500]])
    scores = np.float32([0.0, 1.0, 0.5])
    keep = caller_regions((1000, 500), keep=[[50, 50, 200, 200]])
    assert Policy().choose("1:1", boxes, scores, subjects, regions=keep).box == (0, 0, 500, 500)
    focus = caller_regions((1000, 500), focus=(260, 250))
    assert Policy().choose("1:1", boxes, scores, subjects, regions=focus).box == (250, 0, 750, 500)


@pytest.mark.parametrize("keep, focus, match", [
    ([[0, 0, 1200, 10]], None, "outside"), ([[0, 0, float("nan"), 10]], None, "not finite"),
    ([[10, 10, 5, 20]], None, "empty"), ([[0, 0, 10, 10]] * 17, None, "at most 16"),
    (None, (2000, 10), "outside"), (None, (1, 2, 3), "point"), ("abc", None, "boxes"),
])
def test_bad_caller_regions_are_a_value_error_with_the_reason(keep, focus, match):
    with pytest.raises(ValueError, match=match):
        caller_regions((1000, 500), keep, focus)


def test_focal_point_and_safe_box():
    subjects = subjects_of([[100, 100, 200, 220], [300, 100, 380, 200]])
    point, safe = focal_point_and_safe_box((1000, 500), subjects, Regions(), None)
    assert point == (150, 160) and safe == (100, 100, 380, 220)
    given = caller_regions((1000, 500), [[600, 10, 700, 50]], (900, 400))
    point, safe = focal_point_and_safe_box((1000, 500), subjects, given, None)
    assert point == (900, 400) and safe == (100, 10, 900, 400)
    nothing = subjects_of([])
    point, safe = focal_point_and_safe_box((1000, 500), nothing, Regions(), None)
    assert point == (500, 250) and safe is None


# -- the Cropper ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped() -> Cropper:
    return Cropper.from_pretrained()


def test_the_cropper_keeps_a_detected_face_whole_in_every_ratio_that_can(shipped):
    photo = astronaut()
    face = shipped.face_detector(photo)[0][0]
    for crop in shipped.crop(photo, ["1:1", "4:5", "16:9", "9:16", None]):
        assert kept_share(np.float32([crop.box]), face[None])[0, 0] >= KEEP_WHOLE, crop
        assert crop.faces >= 1 and crop.kept_faces >= 1
        x, y = crop.focal_point
        assert face[0] <= x <= face[2] and face[1] <= y <= face[3]


def test_a_custom_face_detector_replaces_the_shipped_one(shipped):
    photo = Image.new("RGB", (1200, 600), (90, 120, 150))
    fake = lambda im: ([[im.width * 0.85, im.height * 0.2, im.width * 0.95, im.height * 0.45]], [0.9])  # noqa: E731
    cropper = Cropper(shipped.model, proposer=shipped.proposer, face_detector=fake, model_version="test")
    crop = cropper.crop(photo, "1:1")[0]
    assert crop.kept_faces == 1 and crop.box[2] >= 0.95 * 1200 - 1


def test_keep_and_focus_through_the_api(shipped):
    photo = astronaut()
    crops = shipped.crop(photo, ["16:9", "9:16"], keep=[[380, 20, 500, 120]], focus=(450, 250))
    for c in crops:
        assert kept_share(np.float32([c.box]), np.float32([[380, 20, 500, 120]]))[0, 0] >= KEEP_WHOLE
        assert c.box[0] <= 450 <= c.box[2] and c.box[1] <= 250 <= c.box[3]
        assert c.focal_point == (450, 250)
    with pytest.raises(ValueError, match="outside"):
        shipped.crop(photo, "1:1", keep=[[0, 0, 600, 10]])


def test_duplicate_ratios_give_one_crop_each(shipped):
    crops = shipped.crop(astronaut(), ["1:1", "2:2", "16:9", "1:1"])
    assert [c.ratio for c in crops] == ["1:1", "16:9"]


# -- one photo, every entry point ----------------------------------------------------------------------
@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="bundled weights not present")
def test_one_photo_gives_the_same_boxes_through_the_cli_api_service_and_pipeline(tmp_path: Path, shipped, monkeypatch):
    from fastapi.testclient import TestClient

    from pipelines.config import JobConfig
    from pipelines.stages import WORK, CropWorker, WorkerSpec, fetch_and_decode
    from s2cnet import cli
    from serve.routes import build_app
    from serve.service import CropService
    from serve.settings import Settings

    photo = astronaut().resize((1600, 1200))  # larger than the detector's input: draft mode and faces at play
    path = tmp_path / "in" / "photo.jpg"
    path.parent.mkdir()
    photo.save(path, "JPEG", quality=90)
    data = path.read_bytes()
    ratios = ["1:1", "4:5", "16:9", "9:16"]

    api = [c.box for c in shipped.crop(data, ratios)]
    api_path = [c.box for c in shipped.crop(str(path), ratios)]

    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    assert cli.main(["crop", str(path), "--ratio", ",".join(ratios), "--json", "--no-progress"], cropper=shipped) == 0
    cli_boxes = [tuple(c["box"]) for c in json.loads(out.getvalue())["crops"]]

    service = CropService(Settings.load({}, env={}), cropper=shipped)
    reply = TestClient(build_app(service)).post(f"/v1/crops?ratios={','.join(ratios)}", content=data,
                                                 headers={"content-type": "image/jpeg"})
    assert reply.status_code == 200, reply.text
    http = [tuple(c["box"]) for c in reply.json()["crops"]]

    job = JobConfig(input=str(path.parent), output=str(tmp_path / "out"), ratios=ratios)
    spec = WorkerSpec(job=job, short_side=shipped.short_side, in_actor=False)
    work = pa.Table.from_pylist([{"key": "photo.jpg", "path": str(path), "size": len(data), "mtime_ns": 0,
                                  "ratios": ratios}], schema=WORK)
    worker = CropWorker.__new__(CropWorker)  # the actor, with the shared Cropper instead of a second load
    worker.spec, worker.cropper, worker.version, worker.finisher = spec, shipped, shipped.model_version, None
    rows = worker.crop(fetch_and_decode(work, spec)).to_pylist()[0]["rows"]
    pipeline = [(r["x1"], r["y1"], r["x2"], r["y2"]) for r in rows]

    assert api == api_path == cli_boxes == http == pipeline, (api, cli_boxes, http, pipeline)
    assert reply.json()["focal_point"] == list(shipped.crop(data, "1:1")[0].focal_point)


@pytest.mark.parametrize("query, status, reason", [
    ("keep=10,10,600,50", 422, "outside"), ("keep=1,2,3", 422, "4 comma-separated"), ("focus=nan,3", 422, "not finite"),
    ("focus=10", 422, "2 comma-separated"), ("keep=" + "&keep=".join(["0,0,5,5"] * 17), 422, "at most 16"),
    ("keep=20,30,120,200&focus=60,60", 200, ""),
])
def test_the_http_api_takes_keep_and_focus_and_refuses_bad_ones_with_a_reason(query, status, reason):
    from fastapi.testclient import TestClient

    from s2cnet.model import S2CNet
    from serve.routes import build_app
    from serve.service import CropService
    from serve.settings import Settings

    service = CropService(Settings.load({}, env={}), cropper=Cropper(S2CNet(), proposer=None))
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (90, 100, 110)).save(buf, "JPEG")
    reply = TestClient(build_app(service)).post(f"/v1/crops?ratios=1:1,16:9&{query}", content=buf.getvalue())
    assert reply.status_code == status, reply.text
    if status == 200:
        body = reply.json()
        assert body["focal_point"] == [60, 60] and body["safe_box"] == [20, 30, 120, 200]
        for c in body["crops"]:
            x1, y1, x2, y2 = c["box"]
            assert x1 <= 20 and y1 <= 30 and x2 >= 120 and y2 >= 200 and x1 <= 60 <= x2, c
    else:
        assert reason in reply.json()["detail"]
