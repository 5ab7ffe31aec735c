"""Ray Serve glue, as Ray's model-composition guide shapes it: an ingress deployment (FastAPI routes,
validation, decoding, the image-only stage) calls a model deployment (the Cropper behind
``@serve.batch``) through a ``DeploymentHandle``; each scales on its own.

    serve run serve/config.yaml                      # or: serve deploy serve/config.yaml
    serve run serve.app:build weights=random         # dev, no trained weights yet

A model replica that dies holding a request (OOM, a lost node) costs that request a retry on another
replica, then a 503 with a reason, never a 500; the ingress keeps answering ``/healthz`` meanwhile.
Everything that is not Ray lives in serve.service (the logic) and serve.routes (HTTP).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from PIL import Image
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

from s2cnet.cropper import Crop
from s2cnet.imageio import LoadedImage
from serve.errors import ServiceError
from serve.routes import build_app
from serve.service import CropService
from serve.settings import Settings

CONFIG = Path(__file__).with_name("config.yaml")
MODEL_ATTEMPTS = 2  # a request whose model replica died is sent once more, to a live one


def deployment_options(name: str, path: Path = CONFIG) -> dict[str, Any]:
    """A deployment's numbers (replicas, autoscaling, concurrency, CPUs) from the config file, so
    ``serve run serve.app:app`` without it gets what ``serve run serve/config.yaml`` gets."""
    for deployment in yaml.safe_load(path.read_text())["applications"][0]["deployments"]:
        if deployment["name"] == name:
            return {k: v for k, v in deployment.items() if k != "name"}
    raise KeyError(f"{path} has no deployment named {name}")


@serve.deployment(**deployment_options("CropModel"))
class CropModel:
    """The Cropper: requests from every ingress replica are batched into ``Cropper.crop_batch``."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        settings = Settings.load(settings)
        self.service = CropService(settings)
        self._crop_batch.set_max_batch_size(settings.max_batch_size)
        self._crop_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.service.cropper.crop(Image.new("RGB", (640, 480), "gray"), ["1:1"])  # warm-up; fails fast if broken
        self._model_free: asyncio.Event | None = None  # created on the replica's event loop

    async def crop(self, image: bytes | Image.Image | LoadedImage, ratios: tuple[str, ...],
                   regions: dict | None = None) -> tuple[list[Crop] | Exception, int]:
        """(the crops, or the item's own error, and the size of the batch it rode in)."""
        # @serve.batch closes a batch batch_wait_timeout_s after its first item even while the model
        # is still busy with the previous one, which under load yields batches of ~1 queued behind
        # each other. Holding requests here until the model is free lets them all join one batch.
        if self._model_free is None:
            self._model_free = asyncio.Event()
            self._model_free.set()
        await self._model_free.wait()
        return await self._crop_batch((image, ratios, regions))

    @serve.batch(max_batch_size=Settings.max_batch_size, batch_wait_timeout_s=Settings.batch_wait_timeout_s)  # set per Settings
    async def _crop_batch(self, items: list[tuple[bytes | Image.Image | LoadedImage, tuple[str, ...], dict | None]]
                          ) -> list[tuple[Any, int]]:
        # The model runs in a thread so this replica keeps taking the next requests.
        self._model_free.clear()
        try:
            results = await asyncio.to_thread(self.service.crop_many, items)
        finally:
            self._model_free.set()
        return [(r, len(items)) for r in results]


@serve.deployment(**deployment_options("CropIngress"))
@serve.ingress()
class CropIngress:
    """HTTP: validation, uploads, decoding and faces (the image-only stage), thumbnails; the model is a
    handle away."""

    def __init__(self, model: DeploymentHandle, settings: dict[str, Any] | None = None) -> None:
        self.service = CropService(Settings.load(settings))
        self.service.check_store()
        self.model = model

    def __serve_build_asgi_app__(self):
        return build_app(self.service, self._crop)

    async def _crop(self, image: bytes | Image.Image | LoadedImage, ratios: tuple[str, ...],
                    regions: dict | None = None) -> tuple[list[Crop], int]:
        if isinstance(image, LoadedImage) and type(image.image) is not Image.Image:
            # a file-backed image (PngImageFile, ...) does not survive pickling: send plain pixels
            image = replace(image, image=image.image.copy())
        for _ in range(MODEL_ATTEMPTS):
            try:
                result, batch_size = await self.model.crop.remote(image, ratios, regions)
            except (RayActorError, ActorUnavailableError):  # the replica died or is unreachable: another one
                continue
            if isinstance(result, Exception):
                raise result
            return result, batch_size
        raise ServiceError(503, f"the model was unavailable for {MODEL_ATTEMPTS} attempts (a replica died or "
                                "is restarting): retry shortly", headers={"Retry-After": "2"})


def application(settings: dict[str, Any] | None = None, ingress: dict[str, Any] | None = None,
                model: dict[str, Any] | None = None) -> serve.Application:
    """The ingress bound to the model; ``ingress`` and ``model``: ``.options(...)`` overrides."""
    settings = dict(settings or {})
    model_app = (CropModel.options(**model) if model else CropModel).bind(settings)
    return (CropIngress.options(**ingress) if ingress else CropIngress).bind(model_app, settings)


def build(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run``/``serve deploy``: ``args`` are Settings fields.

    Deployment options (replicas, autoscaling, CPUs) belong in the config file's ``deployments``.
    """
    return application(dict(args))


app = application()  # `serve run serve.app:app`: settings from UGC_SERVE_* env vars only
