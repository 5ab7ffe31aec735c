"""The Ray Serve endpoint, end to end: a real ``serve.run`` on 127.0.0.1 with SeaweedFS behind it.

The plain service (key checks, decoding, batch isolation) is tested without Ray first; then every
route and every bad input over HTTP; then load (200 requests, 16 in flight); then the demo page in
headless Chromium, checking the crop rectangles it draws in a screenshot.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from serve.errors import ServiceError
from serve.objects import check_key
from serve.service import CropService
from serve.settings import Settings

BUCKET, PREFIX = "photos", "ugc/"
BODY_LIMIT = 2_000_000
MAX_PIXELS = 20_000_000
APP_NAME = "ugc-crop-test"


# -- test images ---------------------------------------------------------------------------------------
def photo(width: int = 1200, height: int = 900, seed: int = 0) -> Image.Image:
    """A structured synthetic photo (gradients, a bright disc, a dark block) so crops differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width * 200, y / height * 200, (x + y) / (width + height) * 255], -1)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    img[(x - cx) ** 2 + (y - cy) ** 2 < (0.12 * min(width, height)) ** 2] = (250, 240, 200)
    img[int(0.6 * height):int(0.8 * height), int(0.1 * width):int(0.3 * width)] = (20, 30, 40)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def exact_ratio(box, ratio: str) -> bool:
    a, b = (int(v) for v in ratio.split(":"))
    return (box[2] - box[0]) * b == (box[3] - box[1]) * a


def model_settings() -> dict:
    """Committed weights when they exist (the user default), else the seeded untrained model."""
    from s2cnet.cropper import DEFAULT_WEIGHTS
    from s2cnet.proposals import SALIENCY_WEIGHTS

    if DEFAULT_WEIGHTS.exists():
        return {"weights": "", "proposals": SALIENCY_WEIGHTS.exists()}
    return {"weights": "random", "proposals": False}


# -- the plain service, no Ray ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["ugc/a.jpg", "ugc/2024/05/IMG_0001.JPG", "ugc/with space & ü.png"])
def test_keys_under_the_prefix_pass(key):
    assert check_key(key, PREFIX) == key


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


def test_settings_args_beat_env_beat_defaults():
    env = {"UGC_SERVE_BUCKET": "from-env", "UGC_SERVE_MAX_BODY_BYTES": "123", "UGC_SERVE_PROPOSALS": "false"}
    s = Settings.load({"bucket": "from-args"}, env=env)
    assert (s.bucket, s.max_body_bytes, s.proposals, s.max_ratios) == ("from-args", 123, False, Settings.max_ratios)
    with pytest.raises(ValueError, match="unknown"):
        Settings.load({"bucket_name": "x"}, env={})
    with pytest.raises(ValueError, match="max_body_bytes"):
        Settings.load({}, env={"UGC_SERVE_MAX_BODY_BYTES": "lots"})


@pytest.fixture(scope="module")
def service() -> CropService:
    from s2cnet.cropper import Cropper
    from s2cnet.model import S2CNet

    settings = Settings.load({"bucket": BUCKET, "prefix": PREFIX, "max_body_bytes": BODY_LIMIT,
                              "max_pixels": MAX_PIXELS}, env={})
    return CropService(settings, cropper=Cropper(S2CNet(), proposer=None))


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


def test_decode_applies_exif_orientation(service):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert service.decode(encode(photo(400, 300), exif=exif)).original_size == (300, 400)


def test_ratio_parsing(service):
    assert service.parse_ratios("1:1, 16:9,32:18") == ["1:1", "16:9"]
    assert service.parse_ratios(None) == Settings.default_ratios.split(",")
    for bad in ["", "16x9", "1:0", "1:1,,4:3", "a:b", ",".join(f"{i}:1" for i in range(1, 10))]:
        with pytest.raises(ServiceError) as e:
            service.parse_ratios(bad)
        assert e.value.status == 422


def test_one_bad_item_does_not_fail_its_batch(service):
    big, tiny = photo(640, 360), Image.new("RGB", (10, 5))
    out = service.crop_many([(big, ("16:9",)), (tiny, ("16:9",)), (big, ("1:1", "4:3"))])
    assert exact_ratio(out[0][0].box, "16:9")
    assert isinstance(out[1], ServiceError) and out[1].status == 422
    assert [c.ratio for c in out[2]] == ["1:1", "4:3"]


# -- the live endpoint -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(ray_session, local_s3):
    """serve.run of the real application on 127.0.0.1:<free port>, reading SeaweedFS."""
    from ray import serve

    from serve.app import CropDeployment

    local_s3.create_bucket(BUCKET)
    s3 = local_s3.client()
    objects = {"ugc/photo.jpg": encode(photo(1200, 900, seed=1)), "ugc/notes.jpg": b"just some text",
               "ugc/broken.jpg": encode(photo(600, 400))[:3000], "private/secret.jpg": encode(photo(64, 64))}
    for key, data in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = {**model_settings(), "bucket": BUCKET, "prefix": PREFIX, "endpoint_url": local_s3.endpoint_url,
                "access_key": local_s3.access_key, "secret_key": local_s3.secret_key, "region": local_s3.region,
                "max_body_bytes": BODY_LIMIT, "max_pixels": MAX_PIXELS, "thumbnail_widths": ""}
    app = CropDeployment.options(ray_actor_options={"num_cpus": 0.5}).bind(settings)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # serve.run returns once the app is RUNNING; the proxy may need a moment more
        try:
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "serve app did not come up"
        time.sleep(0.5)
    yield {"url": url, "port": port, "objects": objects}
    serve.delete(APP_NAME)
    serve.shutdown()


def test_healthz(live):
    r = requests.get(live["url"] + "/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["model_version"]


def test_http_is_bound_to_loopback_only(live, ray_session):
    ip = ray_session.util.get_node_ip_address()
    if ip.startswith("127."):
        pytest.skip(f"node address {ip} is loopback; nothing else to probe")
    with pytest.raises(OSError):
        socket.create_connection((ip, live["port"]), timeout=2).close()


def test_crops_raw_and_multipart_agree(live):
    data = encode(photo(1200, 900, seed=2))
    r = requests.post(live["url"] + "/v1/crops", params={"ratios": "1:1,16:9,4:3,9:16"}, data=data,
                      headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (1200, 900) and body["model_version"]
    assert [c["ratio"] for c in body["crops"]] == ["1:1", "16:9", "4:3", "9:16"]
    for c in body["crops"]:
        x1, y1, x2, y2 = c["box"]
        assert 0 <= x1 < x2 <= 1200 and 0 <= y1 < y2 <= 900 and exact_ratio(c["box"], c["ratio"])
        assert np.isfinite(c["score"])
    assert set(body["timing_ms"]) >= {"decode", "crop", "total"}
    m = requests.post(live["url"] + "/v1/crops", params={"ratios": "1:1,16:9,4:3,9:16"},
                      files={"image": ("p.jpg", data, "image/jpeg")})
    assert m.status_code == 200, m.text
    assert [c["box"] for c in m.json()["crops"]] == [c["box"] for c in body["crops"]]


def test_crops_use_the_upright_image(live):
    exif = Image.Exif()
    exif[0x0112] = 6
    r = requests.post(live["url"] + "/v1/crops?ratios=3:4", data=encode(photo(800, 600), exif=exif))
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (600, 800)
    x1, y1, x2, y2 = r.json()["crops"][0]["box"]
    assert x2 <= 600 and y2 <= 800


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


def _thumb(live, **params):
    return requests.get(live["url"] + "/v1/thumbnail", params={"key": "ugc/photo.jpg", "ratio": "16:9",
                                                               "width": 320, **params})


def test_thumbnail_is_the_model_crop_resized(live):
    r = _thumb(live)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["etag"].startswith('"') and "max-age=" in r.headers["cache-control"]
    thumb = Image.open(io.BytesIO(r.content))
    assert (thumb.format, thumb.size) == ("JPEG", (320, 180))

    source = live["objects"]["ugc/photo.jpg"]
    box = requests.post(live["url"] + "/v1/crops?ratios=16:9", data=source).json()["crops"][0]["box"]
    original = Image.open(io.BytesIO(source)).convert("RGB")
    expected = np.asarray(original.crop(tuple(box)).resize((320, 180), Image.LANCZOS), np.float32)
    whole = np.asarray(original.resize((320, 180), Image.LANCZOS), np.float32)
    got = np.asarray(thumb.convert("RGB"), np.float32)
    assert np.abs(got - expected).mean() < 4.0 < np.abs(whole - expected).mean()


def test_thumbnail_webp_etag_and_304(live):
    r = _thumb(live, format="webp", width=200)
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(r.content)).format == "WEBP"
    again = _thumb(live, format="webp", width=200)
    assert again.headers["etag"] == r.headers["etag"] and again.content == r.content
    assert _thumb(live, format="webp", width=201).headers["etag"] != r.headers["etag"]
    cached = requests.get(live["url"] + "/v1/thumbnail", headers={"If-None-Match": r.headers["etag"]},
                          params={"key": "ugc/photo.jpg", "ratio": "16:9", "width": 200, "format": "webp"})
    assert cached.status_code == 304 and cached.headers["etag"] == r.headers["etag"] and not cached.content


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


def test_free_ratio_canonical_ratios_and_cuts_in_crops_json(live):
    r = requests.post(live["url"] + "/v1/crops", params={"ratios": "free,8:6"}, data=encode(photo(800, 600, seed=3)))
    assert r.status_code == 200, r.text
    free, four_three = r.json()["crops"]
    assert free["ratio"] is None and four_three["ratio"] == "4:3"
    assert all(isinstance(c["cut_objects"], list) for c in (free, four_three))
    assert all(isinstance(c["dropped_objects"], list) and c["kept_faces"] <= c["faces"] for c in (free, four_three))


def test_openapi_describes_bodies_and_errors(live):
    spec = requests.get(live["url"] + "/openapi.json").json()
    post = spec["paths"]["/v1/crops"]["post"]
    assert "image/*" in post["requestBody"]["content"] and "multipart/form-data" in post["requestBody"]["content"]
    assert {"415", "413", "422"} <= set(post["responses"])
    assert "CropsResponse" in spec["components"]["schemas"]
    assert "head" in spec["paths"]["/v1/thumbnail"]


def test_200_requests_16_in_flight(live):
    """Mixed crops and thumbnails under load: every answer is a 200 and identical inputs agree."""
    images = [encode(photo(640, 480, seed=s)) for s in range(4)]

    def one(i: int):
        if i % 4 == 3:
            r = _thumb(live, width=64 + i)
            return i, r.status_code, r.headers.get("etag"), None
        r = requests.post(live["url"] + "/v1/crops?ratios=1:1,16:9", data=images[i % 4], timeout=120)
        boxes = [c["box"] for c in r.json()["crops"]] if r.status_code == 200 else r.text
        return i, r.status_code, boxes, int(r.headers.get("x-batch-size", 0))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    assert [s for _, s, _, _ in results] == [200] * 200, [r for r in results if r[1] != 200][:3]
    by_image: dict[int, list] = {}
    for i, _, boxes, _ in results:
        if i % 4 != 3:
            by_image.setdefault(i % 4, []).append(boxes)
    assert all(all(b == v[0] for b in v) for v in by_image.values())
    assert max(b for *_, b in results if b is not None) > 1, "requests were never batched"


# -- the demo page in headless Chromium ------------------------------------------------------------------------
CHROMIUM = os.environ.get("UGC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255)]  # page.html's first four rectangle colours


class Chromium:
    """Headless Chromium over --remote-debugging-pipe (fds 3/4): CDP without opening a port."""

    def __init__(self, binary: str, profile_dir: str) -> None:
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()

        def wire_fds() -> None:  # in the child: the pipe ends become fds 3 and 4
            import fcntl

            a, b = fcntl.fcntl(to_child, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={profile_dir}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=wire_fds, pass_fds=(3, 4, to_child, from_child),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf, self._id = b"", 0

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method}")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium exited")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, session: str, expression: str):
        return self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def test_homepage_is_served(live):
    r = requests.get(live["url"] + "/")
    assert r.status_code == 200 and "/v1/crops" in r.text and "text/html" in r.headers["content-type"]


@pytest.mark.skipif(CHROMIUM is None, reason="headless test needs Debian's chromium (apt-get install -y chromium)")
def test_demo_page_draws_each_crop(live, tmp_path):
    browser = Chromium(CHROMIUM, str(tmp_path / "profile"))
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        s = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.call("Emulation.setDeviceMetricsOverride", s, width=1000, height=800, deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", s, url=live["url"] + "/?demo")
        deadline, state = time.monotonic() + 90, None
        while state not in ("done", "error") and time.monotonic() < deadline:
            time.sleep(0.2)
            state = browser.evaluate(s, "document.body ? (document.body.dataset.state || '') : ''")
        status = browser.evaluate(s, "document.getElementById('status').textContent")
        assert state == "done", f"demo did not finish: state={state!r}, status={status!r}"
        result = browser.evaluate(s, "window.lastResult")
        rects = browser.evaluate(s, "[...document.querySelectorAll('canvas')].map(c => {"
                                    "const r = c.getBoundingClientRect(); return [r.left, r.top, c.width, c.height]; })")
        png = base64.b64decode(browser.call("Page.captureScreenshot", s, format="png")["data"])
    finally:
        browser.close()
    (tmp_path / "demo.png").write_bytes(png)
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    crops = result["crops"]
    assert [c["ratio"] for c in crops] == ["1:1", "4:3", "16:9", "9:16"] and len(rects) == 4
    for crop, (left, top, w, h), color in zip(crops, rects, COLORS):
        left, top = round(left), round(top)
        scale = w / result["width"]
        region = shot[top:top + h, left:left + w]
        ys, xs = np.nonzero((np.abs(region - np.array(color)) < 24).all(-1))
        assert len(xs) > 100, f"no {color} rectangle drawn for {crop['ratio']}"
        x1, y1, x2, y2 = (round(v * scale) for v in crop["box"])
        drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert np.allclose(drawn, (x1, y1, x2, y2), atol=2), (crop["ratio"], drawn, (x1, y1, x2, y2))
        others = np.abs(shot - np.array(color)) < 24
        others[top:top + h, left:left + w] = False
        assert not others.all(-1).any(), f"{color} appears outside the {crop['ratio']} canvas"


def test_serve_numbers_have_one_home():
    """The deployment reads its numbers from config.yaml; the config sets no Settings default again."""
    import yaml

    from serve.app import CONFIG, deployment_options

    config = yaml.safe_load(CONFIG.read_text())
    app = config["applications"][0]
    assert app["args"] == {}  # every Settings default lives in serve/settings.py
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    assert deployment_options()["max_ongoing_requests"] == app["deployments"][0]["max_ongoing_requests"]


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


def test_stalled_uploads_neither_block_health_nor_crops(live):
    """70 clients send headers and 3 bytes of a 100 kB body, then nothing (the attack that once held
    every replica slot for minutes): health answers within a second, crops are served, and each
    stalled upload gets a 408 once its body deadline passes."""
    stalled = []
    for _ in range(70):
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


def test_thumbnail_widths_come_from_an_allow_list():
    service = CropService(Settings.load({"thumbnail_widths": "320,640"}, env={}), cropper=object())
    assert service.thumbnail_size("16:9", 320) == (320, 180)
    with pytest.raises(ServiceError) as refused:
        service.thumbnail_size("16:9", 321)
    assert refused.value.status == 422 and "not offered" in refused.value.reason and "320, 640" in refused.value.reason
    assert Settings.load({}, env={}).allowed_widths()[:3] == (64, 96, 128)  # the default is a list
    assert Settings.load({"thumbnail_widths": ""}, env={}).allowed_widths() == ()
