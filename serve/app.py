"""Ray Serve glue: one deployment wraps CropService, batches model calls, and serves the FastAPI routes.

    serve run serve/config.yaml                      # or: serve deploy serve/config.yaml
    serve run serve.app:build weights=random         # dev, no trained weights yet

Everything that is not Ray lives in serve.service (the logic) and serve.routes (HTTP).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from PIL import Image
from ray import serve

from s2cnet.cropper import Crop
from s2cnet.imageio import LoadedImage
from serve.routes import build_app
from serve.service import CropService
from serve.settings import Settings

CONFIG = Path(__file__).with_name("config.yaml")


def deployment_options(path: Path = CONFIG) -> dict[str, Any]:
    """The deployment's numbers (replicas, autoscaling, concurrency, CPUs) from the config file, so
    ``serve run serve.app:app`` without it gets what ``serve run serve/config.yaml`` gets."""
    deployment = dict(yaml.safe_load(path.read_text())["applications"][0]["deployments"][0])
    deployment.pop("name", None)
    return deployment


@serve.deployment(**deployment_options())
@serve.ingress()
class CropDeployment:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.service = CropService(Settings.load(settings))
        self.service.check_store()
        self._crop_batch.set_max_batch_size(self.service.settings.max_batch_size)
        self._crop_batch.set_batch_wait_timeout_s(self.service.settings.batch_wait_timeout_s)
        self.service.cropper.crop(Image.new("RGB", (640, 480), "gray"), ["1:1"])  # warm-up; fails fast if broken
        self._model_free: asyncio.Event | None = None  # created on the replica's event loop

    def __serve_build_asgi_app__(self):
        return build_app(self.service, self._crop)

    async def _crop(self, image: bytes | Image.Image | LoadedImage, ratios: tuple[str, ...],
                    regions: dict | None = None) -> tuple[list[Crop], int]:
        # @serve.batch closes a batch batch_wait_timeout_s after its first item even while the model
        # is still busy with the previous one, which under load yields batches of ~1 queued behind
        # each other. Holding requests here until the model is free lets them all join one batch.
        if self._model_free is None:
            self._model_free = asyncio.Event()
            self._model_free.set()
        await self._model_free.wait()
        result, batch_size = await self._crop_batch((image, ratios, regions))
        if isinstance(result, Exception):
            raise result
        return result, batch_size

    @serve.batch(max_batch_size=Settings.max_batch_size, batch_wait_timeout_s=Settings.batch_wait_timeout_s)  # set per Settings
    async def _crop_batch(self, items: list[tuple[bytes | Image.Image | LoadedImage, tuple[str, ...], dict | None]]
                          ) -> list[tuple[Any, int]]:
        # The model runs in a thread so this replica keeps reading and decoding the next requests.
        self._model_free.clear()
        try:
            results = await asyncio.to_thread(self.service.crop_many, items)
        finally:
            self._model_free.set()
        return [(r, len(items)) for r in results]


def build(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run``/``serve deploy``: ``args`` are Settings fields.

    Deployment options (replicas, autoscaling, CPUs) belong in the config file's ``deployments``.
    """
    return CropDeployment.bind(dict(args))


app = CropDeployment.bind()  # `serve run serve.app:app`: settings from UGC_SERVE_* env vars only
