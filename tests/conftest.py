"""Shared fixtures: one Ray instance per test session, dataset locations, small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UGC_SHARED_DATA", ROOT.parent / "shared" / "data"))
GAICD_DIR = SHARED_DATA / "gaicd"
DUTS_DIR = SHARED_DATA / "duts"

os.environ.setdefault("OMP_NUM_THREADS", "1")


def needs_gaicd() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (GAICD_DIR / "split.json").exists(),
                              reason=f"GAICD not found at {GAICD_DIR} (../shared/data is absent)")


def needs_duts() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (DUTS_DIR / "images").exists(),
                              reason=f"DUTS not found at {DUTS_DIR} (../shared/data is absent)")


@pytest.fixture(scope="session")
def ray_session():
    """The one local Ray instance every Ray test shares; started lazily, shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory):
    """One SeaweedFS S3 store on 127.0.0.1 for the session (pipelines.object_store.start_local_s3)."""
    from pipelines.object_store import start_local_s3

    store = start_local_s3(tmp_path_factory.mktemp("seaweedfs"))
    yield store
    store.stop()


@pytest.fixture(scope="session")
def live(ray_session, local_s3):
    """serve.run of the real application on 127.0.0.1:<free port>, reading SeaweedFS."""
    import time

    import requests
    from ray import serve
    from serve_support import APP_NAME, BODY_LIMIT, BUCKET, MAX_PIXELS, PREFIX, encode, free_port, model_settings, photo

    from serve.app import application

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
    # one model replica to start with (the shipped config keeps two): the batching tests see one queue
    model_scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8, "upscale_delay_s": 10,
                     "downscale_delay_s": 120}
    app = application(settings, ingress={"ray_actor_options": {"num_cpus": 0.25}},
                      model={"ray_actor_options": {"num_cpus": 0.5}, "autoscaling_config": model_scaling})
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
