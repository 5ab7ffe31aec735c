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
from serve_support import BODY_LIMIT, BUCKET, MAX_PIXELS, PREFIX, encode, exact_ratio, photo

from s2cnet.overlay import hex_colour, ratio_colour
from serve.errors import ServiceError
from serve.objects import check_key
from serve.service import CropService
from serve.settings import Settings


# -- test images ---------------------------------------------------------------------------------------
# -- the plain service, no Ray ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["ugc/a.jpg", "ugc/2024/05/IMG_0001.JPG", "ugc/with space & ü.png"])
def test_keys_under_the_prefix_pass(key):
    assert check_key(key, PREFIX) == key


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
    # the page draws each ratio in the colour the overlay and the contact sheet use
    named = json.loads(r.text.split("const RATIO_COLOURS = ", 1)[1].split(";\n", 1)[0])["named"]
    assert named["16:9"] == hex_colour(ratio_colour("16:9")) and named["free"] == hex_colour(ratio_colour(None))


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
    for crop, (left, top, w, h) in zip(crops, rects):
        color = ratio_colour(crop["ratio"])
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
    for deployment in app["deployments"]:
        assert deployment_options(deployment["name"])["max_ongoing_requests"] == deployment["max_ongoing_requests"]


