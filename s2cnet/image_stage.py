"""The image-only stage every entry point shares: decode a photo once, large enough for the face
detector, find its faces, and reduce the pixels to what the model reads.

The Cropper runs these steps itself (faces on its worker thread, beside the backbone); the pipeline's
CPU tasks and the service's request path run ``image_stage`` and hand the Cropper a ``LoadedImage``
that carries its faces. The steps and their order are the same everywhere, so the same bytes give
the same pixels, the same faces and the same crops from every entry point.
"""

from __future__ import annotations

import numpy as np

from s2cnet.faces import FaceBoxes, FaceDetectorFn, detector_side
from s2cnet.imageio import DEFAULT_MAX_PIXELS, ImageSource, LoadedImage, open_image, reduced


def decode(src: ImageSource | LoadedImage, short_side: int, detector: FaceDetectorFn | None,
           max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Upright RGB, decoded no larger than the model's ``short_side`` and the detector's long side need
    (JPEG draft mode); a LoadedImage keeps its full-size record and its faces."""
    long_side = detector_side(detector)
    if isinstance(src, LoadedImage):
        image = open_image(src.image, target_short_side=short_side, target_long_side=long_side).image
        return LoadedImage(image, src.original_size, src.format, src.faces)
    return open_image(src, target_short_side=short_side, max_pixels=max_pixels, target_long_side=long_side)


def faces_in(detector: FaceDetectorFn, loaded: LoadedImage) -> FaceBoxes:
    """The detector's faces in upright full-size pixels, most confident first."""
    boxes, scores = detector(loaded.image)
    sx, sy = loaded.scale
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32([sx, sy, sx, sy])
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    return boxes[order], np.asarray(scores, np.float32)[order]


def for_model(loaded: LoadedImage, short_side: int) -> LoadedImage:
    """The same photo at the model's size (integer box reduction: a second call changes nothing)."""
    return LoadedImage(reduced(loaded.image, short_side), loaded.original_size, loaded.format, loaded.faces)


def image_stage(src: ImageSource | LoadedImage, short_side: int, detector: FaceDetectorFn | None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """decode -> faces -> model-size pixels, in one call: a LoadedImage the Cropper takes as it is."""
    loaded = decode(src, short_side, detector, max_pixels)
    if detector is not None and loaded.faces is None:
        loaded = LoadedImage(loaded.image, loaded.original_size, loaded.format, faces_in(detector, loaded))
    return for_model(loaded, short_side)
