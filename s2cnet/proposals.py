"""Object proposals ("visual genes") for any photo, with no downloaded weights.

GAICD ships boxes from a Visual Genome detector; uploads do not. We propose them from heads on the
scorer's own backbone: faces, people and main objects (``s2cnet.subject``, distilled from YuNet and
DeepLabV3) and the DUTS-trained saliency map (connected regions at several thresholds, plus the
whole salient extent), then keep the top N after NMS, faces first. OpenCV's Haar face cascade
remains for models without subject heads. A dedicated face detector (``s2cnet.faces``), when the
Cropper has one, replaces the faces proposed here. Users who have detector weights can plug in
torchvision's Faster R-CNN instead (``DetectorProposer``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torchvision.ops import nms

from s2cnet.backbone import BackboneMaps
from s2cnet.faces import HaarCascade
from s2cnet.saliency import SALIENCY_WEIGHTS, SaliencyHead, SaliencyNet, load_saliency, load_saliency_head
from s2cnet.subject import FACE_TIERS, STRIDE, SubjectHeads, load_subject_heads, mask_regions, subjects
from s2cnet.transforms import model_input


class Proposer(Protocol):
    """What the Cropper calls for object boxes, in two stages so an image-only part (e.g. a face
    cascade) can run on a worker thread while the backbone runs: ``prepare(image)`` there, then
    ``propose`` on the caller's thread with prepare's result and, when ``shares_backbone``, the
    scorer's backbone maps of the same photo. Boxes are [M, 4] float x1,y1,x2,y2 in ``image``'s
    pixels, best first (the crop choice protects the first few); a ``Proposals`` also says which
    boxes are faces."""

    shares_backbone: bool

    def prepare(self, image: Image.Image) -> Any: ...

    def propose(self, image: Image.Image, prepared: Any, maps: BackboneMaps | None) -> np.ndarray | Proposals: ...


# What a proposed box is. The crop choice never cuts a FACE that some candidate keeps; a POSSIBLE_FACE
# (the face head less sure) is protected like a person or an object, within the score margin.
FACE, POSSIBLE_FACE, PERSON, OBJECT, SALIENT = "face", "possible face", "person", "object", "salient"


def upsampled(sal: np.ndarray) -> np.ndarray:
    """A stride-16 saliency map at 4x (bilinear): the resolution its regions and mass are read at."""
    return F.interpolate(torch.as_tensor(sal, dtype=torch.float32)[None, None], scale_factor=4, mode="bilinear",
                         align_corners=False)[0, 0].numpy()


class Proposals(NamedTuple):
    """A proposer's boxes [M, 4] (best first) and, per box, what it is: the crop choice never cuts or
    drops a face that some candidate keeps, and protects the other kinds within a score margin."""

    boxes: np.ndarray
    kinds: tuple[str, ...]
    # The saliency probabilities over the whole photo ([h, w], any resolution) when the proposer has
    # them: the crop choice prefers, within its margin, the crop that keeps more of their mass.
    saliency: np.ndarray | None = None
    # per box, the detector's confidence in 0..1 (faces are ranked by area x confidence); None: all 1
    confidence: np.ndarray | None = None


class ImageProposer:
    """Any ``image -> boxes`` callable as a Proposer (no image-only stage, no shared backbone)."""

    shares_backbone = False

    def __init__(self, fn: Callable[[Image.Image], np.ndarray]) -> None:
        self.fn = fn

    def prepare(self, image: Image.Image) -> None:
        return None

    def propose(self, image: Image.Image, prepared: None, maps: BackboneMaps | None) -> np.ndarray:
        return self.fn(image)


def as_proposer(proposer: Proposer | Callable[[Image.Image], np.ndarray] | None) -> Proposer | None:
    """A Proposer as it is; a plain callable wrapped; None stays None (no object nodes)."""
    if proposer is None or hasattr(proposer, "propose"):
        return proposer
    if not callable(proposer):
        raise TypeError(f"a proposer is a Proposer or a callable image -> boxes, got {type(proposer).__name__}")
    return ImageProposer(proposer)


class SaliencyProposer:
    """Top-N object boxes, in the order the crop choice protects them: faces, then people, then main
    objects, then salient regions.

    ``net`` is a whole SaliencyNet (its own backbone pass at ``short_side``) or only a SaliencyHead
    that reads the fused map the Cropper's S2CNet backbone has already computed (one backbone pass per
    photo). ``subject`` heads on that same backbone add faces, people and main objects; without them,
    ``faces`` (the Haar cascade) finds faces from the image alone, which ``prepare`` runs on another
    core while the backbone runs.
    """

    def __init__(self, net: SaliencyNet | SaliencyHead, max_objects: int = 10, short_side: int = 160,
                 thresholds: tuple[float, ...] = (0.3, 0.5, 0.7), faces: HaarCascade | None = None,
                 subject: SubjectHeads | None = None, face_threshold: float = 0.4, sure_face: float = 0.6) -> None:
        if subject is not None and not isinstance(net, SaliencyHead):
            raise ValueError("subject heads read the scorer's backbone: pair them with a SaliencyHead")
        self.net, self.max_objects, self.short_side = net, max_objects, short_side
        self.thresholds, self.faces = thresholds, faces
        # faces from face_threshold are proposed; from sure_face on they are FACEs, below POSSIBLE_FACEs
        self.subject, self.face_threshold, self.sure_face = subject, face_threshold, sure_face

    @property
    def shares_backbone(self) -> bool:
        return isinstance(self.net, SaliencyHead)

    def to(self, device: str | torch.device) -> SaliencyProposer:
        """Heads that read the scorer's features must sit on the scorer's device."""
        self.net.to(device)
        if self.subject is not None:
            self.subject.to(device)
        return self

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The image-only stage (Haar faces); safe to run on another thread."""
        return self.faces(image)[0] if self.faces is not None else np.zeros((0, 4), np.float32)

    @torch.no_grad()
    def saliency_map(self, image: Image.Image, maps: BackboneMaps | None = None) -> np.ndarray:
        """Saliency probabilities at stride 16 of the resized image -> [h, w] in 0..1."""
        if maps is not None:
            logits = self.head(maps.fused)
        elif self.shares_backbone:
            raise ValueError("this proposer reads the S2CNet backbone's maps: pass maps=")
        else:
            x, _ = model_input(image, image.size, self.short_side)
            logits = self.net(x.to(next(self.net.parameters()).device))
        return torch.sigmoid(logits)[0, 0].float().cpu().numpy()

    @property
    def head(self) -> SaliencyHead:
        return self.net if isinstance(self.net, SaliencyHead) else self.net.head

    def boxes_from_map(self, sal: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Connected regions at each threshold -> (boxes in image pixels, saliency mass)."""
        up = upsampled(sal)
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

    @torch.no_grad()
    def subjects(self, image: Image.Image, maps: BackboneMaps) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sure faces, possible faces, people, main objects) from the subject heads, boxes in
        ``image``'s pixels, each best first."""
        found = subjects(self.subject(maps.stride8, maps.fused, maps.stride4), self.face_threshold)
        h8, w8 = found.person.shape
        scale = np.float32([image.width / (w8 * STRIDE), image.height / (h8 * STRIDE)] * 2)
        people = mask_regions(found.person)[0]
        objects = mask_regions(found.objects)[0]
        sure = found.face_scores >= self.sure_face
        return found.faces[sure] * scale, found.faces[~sure] * scale, people * scale, objects * scale

    def propose(self, image: Image.Image, prepared: np.ndarray, maps: BackboneMaps | None) -> Proposals:
        return self.proposals(image, maps=maps, faces=prepared)  # the Cropper passes maps only when shares_backbone

    def __call__(self, image: Image.Image, maps: BackboneMaps | None = None,
                 faces: np.ndarray | None = None) -> np.ndarray:
        """Boxes in ``image``'s pixels; ``maps`` must come from this same image, ``faces`` from ``prepare``."""
        return self.proposals(image, maps, faces).boxes

    def proposals(self, image: Image.Image, maps: BackboneMaps | None = None,
                  faces: np.ndarray | None = None) -> Proposals:
        """Boxes and what each one is, faces first."""
        sal = self.saliency_map(image, maps)
        boxes, mass = self.boxes_from_map(sal, image.width, image.height)
        faces = self.prepare(image) if faces is None else faces
        # faces, possible faces, people, main objects: a cut-off head is the worst failure
        tiers = [np.zeros((0, 4), np.float32)] * 4
        if self.subject is not None:
            tiers = list(self.subjects(image, maps))
        tiers[0] = np.concatenate([np.asarray(faces, np.float32).reshape(-1, 4), tiers[0]])
        # each tier ranks above everything after it; within a tier the given order holds
        top = mass.max(initial=1.0) + 1
        ranked, ranks, kinds = [boxes], [mass], [SALIENT] * len(boxes)
        for level, (tier, kind) in enumerate(zip(reversed(tiers), (OBJECT, PERSON, POSSIBLE_FACE, FACE)), start=1):
            ranked.append(tier)
            ranks.append(top * level + 1 - np.arange(len(tier), dtype=np.float32) / (len(tier) + 1))
            kinds = [kind] * len(tier) + kinds
        boxes, mass = np.concatenate(ranked[::-1]), np.concatenate(ranks[::-1]).astype(np.float32)
        if len(boxes) == 0:
            return Proposals(boxes, (), sal)
        keep = nms(torch.from_numpy(boxes), torch.from_numpy(mass), 0.7).numpy()[: self.max_objects]
        out = boxes[keep]
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, image.width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, image.height)
        return Proposals(out, tuple(kinds[i] for i in keep), sal)


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

    def propose(self, image: Image.Image, prepared: None, maps: BackboneMaps | None) -> np.ndarray:
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


def default_proposer(max_objects: int = 10, faces: bool = True, head_state: dict | None = None,
                     subject_state: dict | None = None) -> SaliencyProposer:
    """The bundled proposer. With a model file that carries heads on its own backbone: the saliency head
    (``head_state``) and, when present, the subject heads (``subject_state``: faces, people, main
    objects), all reading the scorer's backbone pass. Without subject heads, faces come from OpenCV's
    Haar cascade; without a saliency head, from the standalone DUTS saliency network."""
    if head_state is not None:
        subject = load_subject_heads(subject_state) if subject_state is not None and faces else None
        detector = HaarCascade() if faces and subject is None else None
        # the heads' own face thresholds, chosen on validation (files from before carry none)
        tiers = {k: subject_state[k] for k in FACE_TIERS if subject is not None and k in subject_state}
        return SaliencyProposer(load_saliency_head(head_state), max_objects=max_objects, faces=detector, subject=subject,
                                **tiers)
    if not SALIENCY_WEIGHTS.exists():
        raise FileNotFoundError(f"no saliency weights at {SALIENCY_WEIGHTS}")
    return SaliencyProposer(load_saliency(), max_objects=max_objects, faces=HaarCascade() if faces else None)
