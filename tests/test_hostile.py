"""Hostile input, slow peers and faults, kept as tests: every attack that once broke an entry point.

HTTP (a real ``serve.run`` on 127.0.0.1, the session's ``live`` fixture): bad bodies, oversize and
chunked bodies, decompression bombs, the awkward image set, traversal keys (plain and encoded), odd
and huge ratios and widths, conditional requests, 70 stalled uploads, an object store that accepts
connections and never answers, store misconfiguration. The model library: non-finite boxes. The CLI:
FIFOs, junk weights, uncreatable outputs, out-of-range options. The pipeline: start-up problems are
one line and exit 2 before Ray starts; transient errors are retried on resume.
"""

from __future__ import annotations

import io
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pipeline_files import mixed_bucket
from serve_support import BODY_LIMIT, BUCKET, MAX_PIXELS, PREFIX, encode, photo

from pipelines.batch import plan
from pipelines.storage import InputFile
from s2cnet.cli import main
from s2cnet.cropper import Cropper
from s2cnet.model import S2CNet, S2CNetConfig
from serve.errors import ServiceError
from serve.objects import check_key
from serve.service import CropService
from serve.settings import Settings


@pytest.fixture(scope="module")
def service() -> CropService:
    settings = Settings.load({"bucket": BUCKET, "prefix": PREFIX, "max_body_bytes": BODY_LIMIT,
                              "max_pixels": MAX_PIXELS}, env={})
    return CropService(settings, cropper=Cropper(S2CNet(), proposer=None))


@pytest.fixture()
def photos(tmp_path) -> dict[str, Path]:
    path = tmp_path / "a.jpg"
    photo(320, 240).save(path, quality=90)
    return {"a": path}


def _rows(key, *ratios, **kw):
    return [{"key": key, "ratio": r, "error_kind": None, "source_size": 1, "source_mtime_ns": 5,
             "model_version": "m1", **kw} for r in ratios]


# -- keys and bodies: the plain service ------------------------------------------------------------------
@pytest.mark.parametrize("key,reason", [
    ("", "empty"), ("../etc/passwd", ".."), ("ugc/../private/x.jpg", ".."), ("ugc/a..b.jpg", ".."),
    ("/etc/passwd", "absolute"), ("/ugc/a.jpg", "absolute"), ("s3://other/ugc/a.jpg", "absolute"),
    ("C:/x", "absolute"), ("private/secret.jpg", "outside"), ("ugcx/a.jpg", "outside"), ("ugc", "outside"),
    ("ugc//a.jpg", "empty path"), ("ugc/./a.jpg", "'.'"), ("ugc/a\x00.jpg", "control"), ("ugc\\..\\x", "backslash"),
    ("ugc/" + "a" * 1100, "longer"),
])
def test_keys_outside_the_prefix_are_refused(key, reason):
    with pytest.raises(ServiceError) as e:
        check_key(key, PREFIX)
    assert e.value.status == 400 and reason in e.value.reason


def test_decode_sorts_bad_bytes_by_reason(service):
    good = encode(photo(1200, 800))
    loaded = service.decode(good)
    assert loaded.original_size == (1200, 800) and min(loaded.image.size) < 800  # draft-mode decode
    assert service.decode(good, full_size=True).image.size == (1200, 800)
    cases = [(b"", 422, "empty"), (b"<html>not an image</html>", 415, "not an image"),
             (b"%PDF-1.7 ...", 415, "PDF"), (good[: len(good) // 2], 422, "truncated"),
             (good[:300], 422, "JPEG"), (encode(Image.new("1", (6000, 6000)), "PNG"), 413, "megapixels"),
             (b"x" * (BODY_LIMIT + 1), 413, "limit")]
    for data, status, reason in cases:
        with pytest.raises(ServiceError) as e:
            service.decode(data)
        assert (e.value.status, reason in e.value.reason) == (status, True), e.value.reason



# -- over HTTP ----------------------------------------------------------------------------------------------
def _chunks(total: int, size: int = 256 * 1024):
    for _ in range(total // size):
        yield b"\xff" * size


@pytest.mark.parametrize("case,status,reason", [
    ("text", 415, "not an image"), ("truncated", 422, "truncated"), ("empty", 422, "empty"),
    ("too_big", 413, "limit"), ("too_big_chunked", 413, "limit"), ("bomb", 413, "pixels"),
    ("bad_ratio", 422, "W:H"), ("zero_ratio", 422, "between 1 and 100"), ("too_many_ratios", 422, "at most"),
    ("too_small_for_ratio", 422, "too small"), ("multipart_without_file", 422, "no file"),
])
def test_bad_crop_requests_are_refused_with_a_reason(live, case, status, reason):
    good = encode(photo(320, 240))
    url, params, kw = live["url"] + "/v1/crops", {"ratios": "1:1"}, {}
    if case == "text":
        kw["data"] = b"hello, I am not a JPEG"
    elif case == "truncated":
        kw["data"] = good[: len(good) // 2]
    elif case == "empty":
        kw["data"] = b""
    elif case == "too_big":
        kw["data"] = b"\xff" * (BODY_LIMIT + 1)
    elif case == "too_big_chunked":  # no Content-Length: the limit must hold while streaming
        kw["data"] = _chunks(3 * BODY_LIMIT)
    elif case == "bomb":
        kw["data"] = encode(Image.new("1", (6000, 6000)), "PNG")
    elif case == "bad_ratio":
        params["ratios"], kw["data"] = "16x9", good
    elif case == "zero_ratio":
        params["ratios"], kw["data"] = "0:1", good
    elif case == "too_many_ratios":
        params["ratios"], kw["data"] = ",".join(f"{i}:1" for i in range(1, 12)), good
    elif case == "too_small_for_ratio":
        params["ratios"], kw["data"] = "16:9", encode(Image.new("RGB", (12, 12)), "PNG")
    elif case == "multipart_without_file":
        kw["data"] = {"note": "hi"}
        kw["files"] = {"unused": (None, "x")}
    r = requests.post(url, params=params, **kw)
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]


def test_a_ratio_the_photo_cannot_hold_fails_alone(live):
    """As the batch job writes an error row for that ratio alone: the others are still cropped."""
    tiny = encode(Image.new("RGB", (12, 12)), "PNG")
    r = requests.post(live["url"] + "/v1/crops", params={"ratios": "1:1,16:9,free"}, data=tiny)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["ratio"] for c in body["crops"]] == ["1:1", None]
    assert body["errors"] == [{"ratio": "16:9", "detail": "a 12x12 photo is too small for an exact 16:9 crop"}]
    ok = requests.post(live["url"] + "/v1/crops", params={"ratios": "1:1"}, data=encode(photo(320, 240))).json()
    assert ok["errors"] == []



@pytest.mark.parametrize("key", ["ugc/%2e%2e/private/secret.jpg", "ugc/..%2fprivate/secret.jpg", "%2e%2e/etc/passwd",
                                 "ugc/%00.jpg"])
def test_encoded_traversal_keys_never_reach_another_object(live, key):
    """Percent-encoded dots, slashes and NULs are decoded once, with the query string; the key they
    spell is judged like any other and refused (400 with a reason), sent encoded or decoded."""
    decoded = requests.get(live["url"] + "/v1/thumbnail", params={"key": requests.utils.unquote(key), "ratio": "1:1",
                                                                "width": 64})
    raw = requests.get(live["url"] + f"/v1/thumbnail?key={key}&ratio=1:1&width=64")
    for r in (decoded, raw):
        assert r.status_code == 400 and r.json()["detail"], r.text


def test_the_awkward_image_set_gets_its_documented_statuses(live):
    """The pipeline's awkward uploads (CMYK, 16-bit, palette, EXIF-rotated, animated, a strip, empty,
    text, corrupt, bombs) over HTTP: each is a 200 or a 4xx with a reason, never a 500."""
    status = {"empty": 422, "not_an_image": 415, "corrupt": 422, "too_large": 413}
    for name, (data, expected) in mixed_bucket(0).items():
        r = requests.post(live["url"] + "/v1/crops", params={"ratios": "1:1,16:9"}, data=data, timeout=120)
        if expected == "ok":
            assert r.status_code == 200, (name, r.text)
        elif expected[0] == "partial":  # a 400x12 strip: 1:1 exists, 16:9 does not fit... or does
            assert r.status_code in (200, 422), (name, r.text)
        else:
            want = status[expected[1]] if len(data) <= BODY_LIMIT else 413
            assert r.status_code == want and r.json()["detail"], (name, r.status_code, r.text)


def _thumb(live, **params):
    return requests.get(live["url"] + "/v1/thumbnail", params={"key": "ugc/photo.jpg", "ratio": "16:9",
                                                               "width": 320, **params})


@pytest.mark.parametrize("params,status,reason", [
    ({"key": "../ugc/photo.jpg"}, 400, ".."), ({"key": "ugc/../private/secret.jpg"}, 400, ".."),
    ({"key": "/ugc/photo.jpg"}, 400, "absolute"), ({"key": "/etc/passwd"}, 400, "absolute"),
    ({"key": "private/secret.jpg"}, 400, "outside"), ({"key": "s3://other-bucket/ugc/photo.jpg"}, 400, "absolute"),
    ({"key": "ugc/missing.jpg"}, 404, "no object"), ({"key": "ugc/notes.jpg"}, 415, "not an image"),
    ({"key": "ugc/broken.jpg"}, 422, "truncated"), ({"ratio": "wide"}, 422, "W:H"),
    ({"format": "gif"}, 422, "format"), ({"width": 0}, 422, "pixels"), ({"width": 100000}, 422, "pixels"),
])
def test_bad_thumbnail_requests_are_refused_with_a_reason(live, params, status, reason):
    r = _thumb(live, **params)
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]


def test_missing_thumbnail_parameters_are_422(live):
    r = requests.get(live["url"] + "/v1/thumbnail", params={"key": "ugc/photo.jpg"})
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str) and "ratio" in r.json()["detail"]  # the documented shape
    bad = _thumb(live, width="wide")
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], str) and "width" in bad.json()["detail"]


def test_huge_numbers_are_422_before_any_arithmetic(live):
    r = _thumb(live, width="9" * 400)
    assert r.status_code == 422 and "400-digit" in r.json()["detail"]
    r = requests.post(live["url"] + "/v1/crops", params={"ratios": "1" * 60000 + ":1"}, data=encode(photo(64, 64)))
    assert r.status_code == 422 and "characters" in r.json()["detail"] and "int" not in r.json()["detail"]


def test_head_thumbnail_and_conditional_forms(live):
    r = _thumb(live, width=240)
    head = requests.head(live["url"] + "/v1/thumbnail", params={"key": "ugc/photo.jpg", "ratio": "16:9", "width": 240})
    assert head.status_code == 200 and head.headers["etag"] == r.headers["etag"] and not head.content
    assert head.headers["content-type"] == "image/jpeg"
    for tag in ("*", "W/" + r.headers["etag"], f'"other", {r.headers["etag"]}'):
        cached = requests.get(live["url"] + "/v1/thumbnail", headers={"If-None-Match": tag},
                              params={"key": "ugc/photo.jpg", "ratio": "16:9", "width": 240})
        assert cached.status_code == 304, tag
    missing = requests.head(live["url"] + "/v1/thumbnail", params={"key": "ugc/missing.jpg", "ratio": "1:1", "width": 9})
    assert missing.status_code == 404
    assert int(head.headers["content-length"]) == len(r.content)  # RFC 9110: what GET would send


@pytest.mark.parametrize("width", ["320.0", "+320", " 320", "3_20", "0x140", "３２０"])
def test_a_width_is_digits_only(live, width):
    r = _thumb(live, width=width)
    assert r.status_code == 422 and "whole number of pixels" in r.json()["detail"], r.text


def test_an_empty_stored_object_is_named_as_such(live, local_s3):
    local_s3.client().put_object(Bucket=BUCKET, Key="ugc/empty.jpg", Body=b"")
    r = requests.get(live["url"] + "/v1/thumbnail", params={"key": "ugc/empty.jpg", "ratio": "1:1", "width": 64})
    assert r.status_code == 422 and r.json()["detail"] == "the stored object is empty (0 bytes)"


def test_head_and_conditional_get_never_vouch_for_a_broken_object(live, local_s3):
    """HEAD and If-None-Match answer as GET does for a stored object that is not a usable photo."""
    client = local_s3.client()
    good = encode(photo(640, 480))
    broken = {"ugc/broken-text.jpg": b"hello, I am text", "ugc/broken-tiny.png": encode(Image.new("RGB", (1, 1)), "PNG"),
              "ugc/broken-empty.jpg": b"", "ugc/broken-truncated.jpg": good[: len(good) // 3],
              "ugc/broken-bomb.png": encode(Image.new("1", (6000, 6000)), "PNG")}  # over the 20 MP limit
    for key, data in broken.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        params = {"key": key, "ratio": "16:9", "width": 64}
        get = requests.get(live["url"] + "/v1/thumbnail", params=params)
        head = requests.head(live["url"] + "/v1/thumbnail", params=params)
        star = requests.get(live["url"] + "/v1/thumbnail", params=params, headers={"If-None-Match": "*"})
        assert get.status_code >= 400 and head.status_code == get.status_code and star.status_code == get.status_code, key
        assert "max-age" not in head.headers.get("cache-control", ""), key


@pytest.mark.parametrize("clients", [70, 300])
def test_stalled_uploads_neither_block_health_nor_crops(live, clients):
    """Clients send headers and 3 bytes of a 100 kB body, then nothing (the attack that once held
    every replica slot for minutes; 300 is more than the old 128 slots of two replicas): health
    answers within a second, crops are served, and each stalled upload gets a 408 once its body
    deadline passes."""
    stalled = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", live["port"]), timeout=30)
        s.sendall(b"POST /v1/crops HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: 100000\r\n\r\n\xff\xd8\xff")
        stalled.append(s)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        health = requests.get(live["url"] + "/healthz", timeout=20)
        assert health.status_code == 200 and time.monotonic() - t0 < 1.0
        crops = requests.post(live["url"] + "/v1/crops?ratios=1:1", data=encode(photo(320, 240)), timeout=30)
        assert crops.status_code == 200
        answer = stalled[0].recv(200)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        for s in stalled:
            s.close()



# -- slow peers and a hung store ---------------------------------------------------------------------------
@pytest.fixture()
def blackhole():
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a hung object store."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    server.close()


def test_a_store_that_never_answers_costs_seconds_and_not_crops(blackhole):
    from fastapi.testclient import TestClient

    from s2cnet.cropper import Cropper
    from s2cnet.model import S2CNet
    from serve.routes import build_app

    settings = Settings.load({"bucket": BUCKET, "prefix": PREFIX, "endpoint_url": blackhole, "access_key": "a",
                              "secret_key": "b", "store_deadline_s": 3.0}, env={})
    service = CropService(settings, cropper=Cropper(S2CNet(), proposer=None))
    with pytest.raises(ValueError, match="unreachable"):
        service.check_store()  # the deployment refuses to start on it
    client = TestClient(build_app(service))
    with ThreadPoolExecutor(4) as pool:
        t0 = time.monotonic()
        stuck = [pool.submit(client.get, "/v1/thumbnail", params={"key": "ugc/a.jpg", "ratio": "1:1", "width": 64})
                 for _ in range(4)]
        crops = client.post("/v1/crops?ratios=1:1", content=encode(photo(320, 240)))
        assert crops.status_code == 200 and time.monotonic() - t0 < 3.0  # uploads do not wait for the store
        answers = [f.result(timeout=30) for f in stuck]
    assert all(a.status_code == 504 for a in answers) and time.monotonic() - t0 < 10.0


def test_store_configuration_is_checked_at_start(local_s3):
    bad_url = CropService(Settings.load({"bucket": BUCKET, "endpoint_url": "not a url"}, env={}), cropper=object())
    with pytest.raises(ValueError, match="http"):
        bad_url.check_store()
    missing = CropService(Settings.load({"bucket": "no-such-bucket", "endpoint_url": local_s3.endpoint_url,
                                         "access_key": local_s3.access_key, "secret_key": local_s3.secret_key},
                                        env={}), cropper=object())
    with pytest.raises(ValueError, match="does not exist"):
        missing.check_store()
    no_bucket = CropService(Settings.load({}, env={}), cropper=object())
    with pytest.raises(ServiceError) as bad_key:
        no_bucket.check_key("../etc/passwd")
    assert bad_key.value.status == 400  # the key is judged before the missing configuration (503)


def test_thumbnail_widths_come_from_an_allow_list():
    service = CropService(Settings.load({"thumbnail_widths": "320,640"}, env={}), cropper=object())
    assert service.thumbnail_size("16:9", 320) == (320, 180)
    with pytest.raises(ServiceError) as refused:
        service.thumbnail_size("16:9", 321)
    assert refused.value.status == 422 and "not offered" in refused.value.reason and "320, 640" in refused.value.reason
    assert Settings.load({}, env={}).allowed_widths()[:3] == (64, 96, 128)  # the default is a list
    assert Settings.load({"thumbnail_widths": ""}, env={}).allowed_widths() == ()



# -- the model library ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [[[0, 0, float("nan"), 10]], [[0, 0, float("inf"), 10]], [[0, 0, 1e30, 10]],
                                 [[1, 2, 3]], "boxes"])
def test_non_finite_or_malformed_boxes_are_value_errors(bad) -> None:
    cropper = Cropper(S2CNet(S2CNetConfig(node_dim=64)), proposer=None)
    image = np.random.default_rng(2).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        cropper.score(image, bad)
    with pytest.raises(ValueError):
        cropper.score(image, [[0, 0, 32, 32]], objects=bad)
    with pytest.raises(ValueError):
        cropper.crop(image, ["1:1"], objects=bad)
    assert np.isfinite(cropper.score(image, [[0, 0, 32, 32]], objects=np.zeros((0, 4)))).all()



# -- the CLI ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["crop", "a.jpg", "--ratio", "16/9"], "W:H"),
    (["crop", "a.jpg", "--debug"], "--debug needs --out"),
    (["crop"], "INPUT"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv, cropper=None)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_missing_or_bad_weights_exit_2(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["crop", str(photos["a"]), "--weights", str(tmp_path / "none.pt"), "--no-objects"])
    assert info.value.code == 2 and "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["crop", str(photos["a"]), "--weights", str(junk), "--no-objects"]) == 2
    err = capsys.readouterr().err
    assert "is not an S2CNet checkpoint" in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("extra,message", [
    (["--quality", "0"], "--quality must be 1..100"),
    (["--quality", "101"], "--quality must be 1..100"),
    (["--debug-size", "-1", "--out", "o"], "--debug-size must be"),
    (["--width", "0", "--out", "o"], "--width must be"),
    (["--width", "64"], "add --out"),
    (["--width", "160", "--height", "90", "--ratio", "1:1", "--out", "o"], "ratio 16:9"),
])
def test_bad_options_are_usage_errors(photos, extra, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["crop", str(photos["a"]), *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_fifo_and_unwritable_out_are_usage_errors(photos, tmp_path, capsys):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as info:
        main(["crop", str(fifo)])
    assert info.value.code == 2 and "not a regular file" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["crop", str(photos["a"]), "--out", str(blocker / "sub")], cropper=None) == 2
    assert "cannot create --out" in capsys.readouterr().err



# -- the pipeline -----------------------------------------------------------------------------------------------
def test_plan_redoes_changed_photos_other_weights_and_transient_errors():
    fs = [InputFile(k, k, 1, 5) for k in "abcdef"]
    done = {"a": _rows("a", "1:1", source_size=2),  # replaced: another size
            "b": _rows("b", "1:1", source_mtime_ns=9),  # replaced: same size, newer
            "c": _rows("c", "1:1", model_version="m0"),  # made by other weights
            "d": _rows("d", None, error_kind="read"),  # the store failed, not the photo
            "e": _rows("e", "1:1", error_kind="thumbnail"),
            "f": _rows("f", None, error_kind="corrupt")}  # the photo itself: done, unless --retry-errors
    work, skipped, redo = plan(fs, done, ["1:1"], limit=None, model_version="m1")
    assert [f.key for f, _ in work] == list("abcde") and redo == set("abcde") and skipped == 1
    _, _, redo = plan(fs, done, ["1:1"], limit=None, model_version="m1", retry_errors=True)
    assert redo == set("abcdef")


def test_startup_problems_are_one_line_exit_2_before_ray(tmp_path, local_s3, capsys):
    from pipelines.crop_bucket import main as crop_bucket_main

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), "white").save(photos / "a.jpg")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (["--input", str(photos), "--output", str(photos / "crops")], "overlaps --input"),
        (["--input", str(photos), "--output", str(tmp_path / "out"), "--thumbnails", str(photos)], "overlaps --input"),
        (["--input", str(photos), "--output", str(blocker / "out")], "cannot write to --output"),
        (["--input", "s3://no-such-bucket-here/x/", "--output", "s3://no-such-bucket-here/y/",
          "--endpoint-url", local_s3.endpoint_url], "cannot list --input"),
    ]
    for argv, message in cases:
        assert crop_bucket_main([*argv, "--no-progress", "--untrained-ok"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_at_most_max_decodes_decodes_run_at_once(tmp_path):
    """Many clients at once: the replica holds at most ``max_decodes`` decoded photos, the rest wait."""
    import threading

    from fastapi.testclient import TestClient

    from s2cnet.cropper import Cropper
    from serve.routes import build_app

    service = CropService(Settings.load({"max_decodes": 2}, env={}), cropper=Cropper.untrained(), reader=object())
    inner, lock, now, peak = service.decode, threading.Lock(), [0], [0]

    def slow_decode(*args):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        try:
            time.sleep(0.2)
            return inner(*args)
        finally:
            with lock:
                now[0] -= 1

    service.decode = slow_decode
    data = encode(photo(320, 240))
    with TestClient(build_app(service)) as client, ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: client.post("/v1/crops?ratios=1:1", content=data,
                                                      headers={"content-type": "image/jpeg"}), range(8)))
    assert [r.status_code for r in replies] == [200] * 8
    assert peak[0] == 2


def test_a_thumbnail_decodes_only_as_large_as_it_needs():
    """A 6000x1000 JPEG's 200-px thumbnail of a 1000-px-wide crop decodes at 1/4 scale, not at 6 MP;
    the thumbnail is the same picture as one cut from the full decode."""
    big = photo(6000, 1000)
    data = encode(big)
    service = CropService(Settings.load({}, env={}), cropper=object(), reader=object())
    box = (2500, 0, 3500, 1000)
    need = service.thumbnail_decode_size(data, box, 200)
    assert need == (200, 1200)
    small = service.decode(data, True, True, need)
    assert small.original_size == (6000, 1000) and small.image.width < 6000 // 3
    got = service.render_thumbnail(small, box, "1:1", 200, "jpeg")
    want = service.render_thumbnail(service.decode(data, True, True), box, "1:1", 200, "jpeg")
    a = np.asarray(Image.open(io.BytesIO(got)).convert("RGB"), np.float32)
    b = np.asarray(Image.open(io.BytesIO(want)).convert("RGB"), np.float32)
    assert a.shape == b.shape == (200, 200, 3) and np.abs(a - b).mean() < 3.0
    assert service.thumbnail_decode_size(data, box, 2000) is None  # a larger thumbnail than the crop: full size


def test_a_killed_model_replica_costs_a_retry_or_a_503_never_a_500(live):
    """SIGKILL the model replica while clients post crops: the ingress retries its requests on a live
    replica (or answers 503 with a reason); nothing hangs, no 500; crops flow again afterwards."""
    import signal

    import psutil
    from serve_support import APP_NAME

    def model_replicas() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"])
                if f"ServeReplica:{APP_NAME}:CropModel" in " ".join(p.info["cmdline"] or [])]

    data = encode(photo(640, 480))
    stop, statuses = time.monotonic() + 12, []

    def client() -> None:
        while time.monotonic() < stop:
            r = requests.post(live["url"] + "/v1/crops", params={"ratios": "1:1,16:9"}, data=data, timeout=90)
            statuses.append((r.status_code, r.json().get("detail") if r.status_code != 200 else None))

    victims = model_replicas()
    assert victims, "no model replica process found"
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        time.sleep(3)
        os.kill(victims[0].pid, signal.SIGKILL)
        for f in futures:
            f.result()
    codes = [c for c, _ in statuses]
    assert 500 not in codes and set(codes) <= {200, 503}, statuses
    assert all("retry" in d for c, d in statuses if c == 503)
    deadline = time.monotonic() + 120
    while requests.post(live["url"] + "/v1/crops", params={"ratios": "1:1"}, data=data, timeout=90).status_code != 200:
        assert time.monotonic() < deadline, "crops did not come back after the kill"
        time.sleep(1)


def test_a_model_that_stays_unavailable_is_a_503_with_retry_after():
    """Two dead replicas in a row: 503 with a reason and Retry-After (the route turns it into JSON)."""
    import asyncio

    from ray.exceptions import RayActorError

    from serve.app import MODEL_ATTEMPTS, CropIngress

    calls = []

    class DeadModel:
        class crop:  # noqa: N801  (the handle's method)
            @staticmethod
            def remote(*args):
                calls.append(args)

                async def fail():
                    raise RayActorError()

                return fail()

    ingress = object.__new__(CropIngress.func_or_class)
    ingress.model = DeadModel()
    with pytest.raises(ServiceError) as e:
        asyncio.run(ingress._crop(b"jpeg", ("1:1",)))
    assert e.value.status == 503 and "retry" in e.value.reason and e.value.headers == {"Retry-After": "2"}
    assert len(calls) == MODEL_ATTEMPTS


def test_sixteen_clients_on_one_large_photo_hold_at_most_max_decodes_copies(live, local_s3):
    """A 4400x4400 PNG (19 MP: 58 MB decoded, 60 KB stored) asked for by 16 clients at once: the
    ingress replica's memory grows by a few decodes (max_decodes = 2 at a time), not by sixteen."""
    import threading

    import psutil
    from serve_support import APP_NAME

    big = encode(Image.new("RGB", (4400, 4400), (90, 120, 150)), "PNG")
    local_s3.client().put_object(Bucket=BUCKET, Key="ugc/huge.png", Body=big)
    ingress = [p for p in psutil.process_iter(["cmdline"])
               if f"ServeReplica:{APP_NAME}:CropIngress" in " ".join(p.info["cmdline"] or [])]
    assert ingress
    base = sum(p.memory_info().rss for p in ingress)
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], sum(p.memory_info().rss for p in ingress if p.is_running()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda i: requests.get(live["url"] + "/v1/thumbnail", timeout=120, params={
                "key": "ugc/huge.png", "ratio": "1:1", "width": 128 + i}), range(16)))
    finally:
        done.set()
        sampler.join()
    assert [r.status_code for r in replies] == [200] * 16
    decoded = 4400 * 4400 * 3
    # max_decodes (2) decodes and their reduced copies, plus allocator slack: measured 250-370 MB here;
    # one decode per client would be sixteen copies, 930 MB
    assert peak[0] - base < 8 * decoded, f"grew {(peak[0] - base) / 2**20:.0f} MB"
