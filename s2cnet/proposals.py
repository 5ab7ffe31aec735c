"""Object proposals ("visual genes") for any photo, with no downloaded weights.

GAICD ships boxes from a Visual Genome detector; uploads do not. We propose them from the DUTS-trained
saliency map (connected regions at several thresholds, plus the whole salient extent) and from
OpenCV's bundled frontal-face cascade, then keep the top N by saliency mass after NMS. Users who have
detector weights can plug in torchvision's Faster R-CNN instead (``DetectorProposer``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torchvision.ops import nms

from s2cnet.saliency import SALIENCY_WEIGHTS, SaliencyHead, SaliencyNet, load_saliency, load_saliency_head
from s2cnet.transforms import model_input


class Proposer(Protocol):
    """What the Cropper calls for object boxes, in two stages so the image-only part (faces) runs on a
    worker thread while the backbone runs: ``prepare(image)`` there, then ``propose`` on the caller's
    thread with prepare's result and, when ``shares_backbone``, the scorer's fused stride-16 map of
    the same photo. Boxes are [M, 4] float x1,y1,x2,y2 in ``image``'s pixels, best first."""

    shares_backbone: bool

    def prepare(self, image: Image.Image) -> Any: ...

    def propose(self, image: Image.Image, prepared: Any, fused: torch.Tensor | None) -> np.ndarray: ...


class ImageProposer:
    """Any ``image -> boxes`` callable as a Proposer (no image-only stage, no shared backbone)."""

    shares_backbone = False

    def __init__(self, fn: Callable[[Image.Image], np.ndarray]) -> None:
        self.fn = fn

    def prepare(self, image: Image.Image) -> None:
        return None

    def propose(self, image: Image.Image, prepared: None, fused: torch.Tensor | None) -> np.ndarray:
        return self.fn(image)


def as_proposer(proposer: Proposer | Callable[[Image.Image], np.ndarray] | None) -> Proposer | None:
    """A Proposer as it is; a plain callable wrapped; None stays None (no object nodes)."""
    if proposer is None or hasattr(proposer, "propose"):
        return proposer
    if not callable(proposer):
        raise TypeError(f"a proposer is a Proposer or a callable image -> boxes, got {type(proposer).__name__}")
    return ImageProposer(proposer)


class FaceDetector:
    """OpenCV's Haar frontal-face cascade (shipped inside opencv-python-headless 4.x).

    Runs at ``max_side`` px and looks for faces of at least ``min_face`` px there (7.5% of the long
    side by default). The cascade's cost is mostly its finest pyramid levels: on 1,618 GAICD/DUTS
    photos, 30 px instead of 20-24 px cut its time by ~27% and kept 98% of the faces spanning >= 10%
    of the long side (92% of all faces the finer search found).
    """

    def __init__(self, max_side: int = 400, min_face: int = 30) -> None:
        import cv2

        self.cv2 = cv2
        cv2.setNumThreads(1)  # one core: the Cropper runs faces beside the backbone, Ray gives actors one CPU
        self.cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        if self.cascade.empty():
            raise RuntimeError("OpenCV's frontal-face cascade could not be loaded")
        self.max_side, self.min_face = max_side, min_face

    def __call__(self, image: Image.Image) -> np.ndarray:
        s = min(1.0, self.max_side / max(image.size))
        small = image.convert("L").resize((max(1, round(image.width * s)), max(1, round(image.height * s))))
        faces = self.cascade.detectMultiScale(np.asarray(small), scaleFactor=1.15, minNeighbors=6,
                                              minSize=(self.min_face, self.min_face))
        if len(faces) == 0:
            return np.zeros((0, 4), np.float32)
        f = np.asarray(faces, np.float32)
        return np.stack([f[:, 0], f[:, 1], f[:, 0] + f[:, 2], f[:, 1] + f[:, 3]], 1) / s


class SaliencyProposer:
    """Top-N boxes from the saliency map's connected regions, faces first.

    ``net`` is a whole SaliencyNet (its own backbone pass at ``short_side``) or only a SaliencyHead
    that reads the fused stride-16 features the Cropper's S2CNet backbone has already computed, which
    saves a second backbone pass per photo. Face detection needs only the image, so ``prepare`` lets
    the Cropper run it on another core while the backbone runs.
    """

    def __init__(self, net: SaliencyNet | SaliencyHead, max_objects: int = 10, short_side: int = 160,
                 thresholds: tuple[float, ...] = (0.3, 0.5, 0.7), faces: FaceDetector | None = None) -> None:
        self.net, self.max_objects, self.short_side = net, max_objects, short_side
        self.thresholds, self.faces = thresholds, faces

    @property
    def shares_backbone(self) -> bool:
        return isinstance(self.net, SaliencyHead)

    def to(self, device: str | torch.device) -> SaliencyProposer:
        """A head that reads the scorer's features must sit on the scorer's device."""
        self.net.to(device)
        return self

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The image-only stage (faces); safe to run on another thread."""
        return self.faces(image) if self.faces is not None else np.zeros((0, 4), np.float32)

    @torch.no_grad()
    def saliency_map(self, image: Image.Image, fused: torch.Tensor | None = None) -> np.ndarray:
        """Saliency probabilities at stride 16 of the resized image -> [h, w] in 0..1."""
        if fused is not None:
            logits = self.head(fused)
        elif self.shares_backbone:
            raise ValueError("this proposer reads the S2CNet backbone's fused features: pass fused=")
        else:
            x, _ = model_input(image, image.size, self.short_side)
            logits = self.net(x.to(next(self.net.parameters()).device))
        return torch.sigmoid(logits)[0, 0].float().cpu().numpy()

    @property
    def head(self) -> SaliencyHead:
        return self.net if isinstance(self.net, SaliencyHead) else self.net.head

    def boxes_from_map(self, sal: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Connected regions at each threshold -> (boxes in image pixels, saliency mass)."""
        up = F.interpolate(torch.from_numpy(sal)[None, None], scale_factor=4, mode="bilinear", align_corners=False)[0, 0].numpy()
        sy, sx = height / up.shape[0], width / up.shape[1]
        boxes, mass = [], []
        peak = float(up.max())
        for t in self.thresholds:
            labels, n = ndimage.label(up >= t * max(peak, 1e-6))
            for i, sl in enumerate(ndimage.find_objects(labels)):
                region = labels[sl] == i + 1
                m = float(up[sl][region].sum())
                if region.sum() < 4:
                    continue
                boxes.append([sl[1].start * sx, sl[0].start * sy, sl[1].stop * sx, sl[0].stop * sy])
                mass.append(m)
            if n > 1:  # the extent of everything salient at this level, as one more node
                ys, xs = np.nonzero(labels)
                boxes.append([xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy])
                mass.append(float(up[labels > 0].sum()) * 0.9)
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(mass, np.float32)

    def propose(self, image: Image.Image, prepared: np.ndarray, fused: torch.Tensor | None) -> np.ndarray:
        return self(image, fused=fused, faces=prepared)  # the Cropper passes fused only when shares_backbone

    def __call__(self, image: Image.Image, fused: torch.Tensor | None = None,
                 faces: np.ndarray | None = None) -> np.ndarray:
        """Boxes in ``image``'s pixels; ``fused`` must come from this same image, ``faces`` from ``prepare``."""
        boxes, mass = self.boxes_from_map(self.saliency_map(image, fused), image.width, image.height)
        faces = self.prepare(image) if faces is None else faces
        if len(faces):
            # faces go first: a cut-off head is the worst thumbnail failure
            boxes = np.concatenate([faces, boxes])
            mass = np.concatenate([np.full(len(faces), mass.max(initial=1.0) * 2 + 1, np.float32), mass])
        if len(boxes) == 0:
            return boxes
        keep = nms(torch.from_numpy(boxes), torch.from_numpy(mass), 0.7).numpy()[: self.max_objects]
        out = boxes[keep]
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, image.width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, image.height)
        return out


class DetectorProposer(ImageProposer):
    """torchvision Faster R-CNN boxes, for users who have detector weights (local path or s3:// URI)."""

    def __init__(self, weights: str | Path, arch: str = "fasterrcnn_mobilenet_v3_large_fpn", num_classes: int = 91,
                 score_threshold: float = 0.3, max_objects: int = 10, endpoint_url: str | None = None) -> None:
        import torchvision

        builder = getattr(torchvision.models.detection, arch)
        self.model = builder(weights=None, weights_backbone=None, num_classes=num_classes).eval()
        state = torch.load(io.BytesIO(read_bytes(str(weights), endpoint_url)), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.score_threshold, self.max_objects = score_threshold, max_objects

    def propose(self, image: Image.Image, prepared: None, fused: torch.Tensor | None) -> np.ndarray:
        return self(image)

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> np.ndarray:
        x = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0
        out = self.model([x])[0]
        keep = out["scores"] >= self.score_threshold
        return out["boxes"][keep][: self.max_objects].numpy().astype(np.float32)


def read_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    """A local path or an s3://bucket/key URI (endpoint override for S3-compatible stores)."""
    if uri.startswith("s3://"):
        from pyarrow import fs

        s3 = fs.S3FileSystem(endpoint_override=endpoint_url) if endpoint_url else fs.S3FileSystem()
        with s3.open_input_stream(uri[len("s3://"):]) as f:
            return f.read()
    return Path(uri).read_bytes()


def default_proposer(max_objects: int = 10, faces: bool = True, head_state: dict | None = None) -> SaliencyProposer:
    """The bundled proposer with face boxes: a saliency head sharing the S2CNet backbone when the
    model file carries one (``head_state``), else the standalone DUTS saliency network."""
    detector = FaceDetector() if faces else None
    if head_state is not None:
        return SaliencyProposer(load_saliency_head(head_state), max_objects=max_objects, faces=detector)
    if not SALIENCY_WEIGHTS.exists():
        raise FileNotFoundError(f"no saliency weights at {SALIENCY_WEIGHTS}")
    return SaliencyProposer(load_saliency(), max_objects=max_objects, faces=detector)
