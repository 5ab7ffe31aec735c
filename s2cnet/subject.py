"""Faces, people and main objects from the crop scorer's own backbone: one pass per photo serves all.

A thumbnail that cuts a face is the failure people notice first, and the crop choice can only protect
what the proposer finds. These heads read the backbone maps the scorer computes anyway (stride 8
for small faces, the fused stride-16 map for context) and predict, at stride 8:

- faces, CenterNet style: a centre heatmap, the centre's sub-cell offset and the log box size;
- two masks: people (PASCAL "person") and main objects (any PASCAL class: people, animals,
  vehicles, furniture...).

They are distilled from YuNet and DeepLabV3 labels (``s2cnet.training.teacher_labels``, trained by
``s2cnet.training.train_subject``) with the backbone frozen, so crop scores are unchanged by them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torchvision.ops import nms

from s2cnet.backbone import FUSED_CHANNELS
from s2cnet.checkpoint import widen

STRIDE = 8
STAGE8_CHANNELS = 32
STAGE4_CHANNELS = 24
PERSON, OBJECT = 0, 1  # mask channels
# the face thresholds a model file ships with its heads (chosen on validation): faces proposed from the
# first, "sure" (never cut by the crop choice) from the second
FACE_TIERS = ("face_threshold", "sure_face")


class SeparableBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, residual: a receptive field for little compute on one core."""

    def __init__(self, width: int, dilation: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, groups=width)
        self.pw = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.pw(F.relu(self.dw(x))))


@dataclass
class SubjectMaps:
    """Raw head outputs at stride 8: face heatmap logits [B, 1, h, w], face offset and log size
    [B, 4, h, w] (dx, dy, log w/8, log h/8), mask logits [B, 2, h, w] (person, object)."""

    face_logits: torch.Tensor
    face_box: torch.Tensor
    mask_logits: torch.Tensor


class SubjectHeads(nn.Module):
    """detail: the stride-4 map joins at stride 8 (each 2x2 block of it as channels, a pixel
    unshuffle), so a 15-px face's edges are seen at 4-px resolution without a stride-4 trunk.
    dilated: the trunk's blocks dilate 1, 1, 2, 4..., so a cell sees the whole of a face filling a
    third of the photo instead of a 9x9-cell window of it."""

    def __init__(self, width: int = 128, blocks: int = 4, detail: bool = False, dilated: bool = False) -> None:
        super().__init__()
        self.fine = nn.Sequential(nn.Conv2d(STAGE8_CHANNELS, width, 1), nn.ReLU(inplace=True))
        self.context = nn.Sequential(nn.Conv2d(FUSED_CHANNELS, width, 1), nn.ReLU(inplace=True))
        self.detail = nn.Sequential(nn.Conv2d(4 * STAGE4_CHANNELS, width, 1), nn.ReLU(inplace=True)) if detail else None
        rates = [1 if not dilated or i < 2 else 2 ** (i - 1) for i in range(blocks)]
        self.trunk = nn.Sequential(*(SeparableBlock(width, r) for r in rates))
        self.face = nn.Conv2d(width, 5, 1)
        self.masks = nn.Conv2d(width, 2, 1)
        with torch.no_grad():  # CenterNet's prior: few cells are face centres, so training starts calm
            self.face.bias[0] = -2.19

    def forward(self, c8: torch.Tensor, fused: torch.Tensor, c4: torch.Tensor | None = None) -> SubjectMaps:
        ctx = F.interpolate(self.context(fused), size=c8.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fine(c8) + ctx
        if self.detail is not None:
            if c4 is None:
                raise ValueError("these subject heads read the stride-4 map too: pass BackboneMaps.stride4")
            x = x + self.detail(F.pixel_unshuffle(c4, 2))
        x = self.trunk(x)
        face = self.face(x)
        return SubjectMaps(face[:, :1], face[:, 1:], self.masks(x))


@dataclass
class Subjects:
    """What the heads found in one photo, in model-input pixels."""

    faces: np.ndarray  # [F, 4] x1,y1,x2,y2, most confident first
    face_scores: np.ndarray  # [F]
    person: np.ndarray  # [h, w] probability at stride 8
    objects: np.ndarray  # [h, w] probability at stride 8


def decode_faces(maps: SubjectMaps, threshold: float = 0.4, max_faces: int = 20,
                 overlap: float = 0.3, vote: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap peaks (3x3 local maxima) at or above ``threshold`` -> (boxes [F, 4] in input pixels,
    scores), most confident first. With ``vote`` a peak's box is the heat-weighted mean of the boxes
    its 3x3 neighbours predict (they are trained on the same face), which steadies small faces. A big
    face can peak twice a few cells apart: boxes overlapping a more confident one by more than
    ``overlap`` IoU are the same face."""
    heat = torch.sigmoid(maps.face_logits[0, 0].float())
    peaks = (heat == F.max_pool2d(heat[None, None], 3, 1, 1)[0, 0]) & (heat >= threshold)
    ys, xs = torch.nonzero(peaks, as_tuple=True)
    scores = heat[ys, xs]
    order = torch.argsort(scores, descending=True)[:max_faces]
    ys, xs, scores = ys[order], xs[order], scores[order]
    cells = cell_boxes(maps.face_box[0].float())  # [h, w, 4] in cells
    if vote and len(ys):
        h, w = heat.shape
        dy, dx = torch.meshgrid(torch.arange(-1, 2), torch.arange(-1, 2), indexing="ij")
        ny, nx = (ys[:, None] + dy.reshape(1, 9)).clamp(0, h - 1), (xs[:, None] + dx.reshape(1, 9)).clamp(0, w - 1)
        wts = heat[ny, nx]  # [F, 9]
        boxes = (cells[ny, nx] * wts[..., None]).sum(1) / wts.sum(1, keepdim=True)
    else:
        boxes = cells[ys, xs]
    boxes = boxes * STRIDE
    keep = nms(boxes, scores, overlap)
    return boxes[keep].cpu().numpy().astype(np.float32), scores[keep].cpu().numpy().astype(np.float32)


def cell_boxes(box: torch.Tensor) -> torch.Tensor:
    """[..., 4, h, w] per-cell (dx, dy, log w/8, log h/8) -> [..., h, w, 4] x1, y1, x2, y2 in cells:
    the box each cell predicts for the face whose centre is near it."""
    ys, xs = torch.meshgrid(torch.arange(box.shape[-2]), torch.arange(box.shape[-1]), indexing="ij")
    cx, cy = xs + box[..., 0, :, :], ys + box[..., 1, :, :]
    w, h = box[..., 2, :, :].clamp(max=6).exp(), box[..., 3, :, :].clamp(max=6).exp()
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def subjects(maps: SubjectMaps, face_threshold: float = 0.4) -> Subjects:
    faces, scores = decode_faces(maps, face_threshold)
    masks = torch.sigmoid(maps.mask_logits[0].float()).cpu().numpy()
    return Subjects(faces, scores, masks[PERSON], masks[OBJECT])


def mask_regions(prob: np.ndarray, threshold: float = 0.5, min_cells: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions of a stride-8 probability map -> (boxes [R, 4] in input pixels, mass [R]),
    largest mass first; specks under ``min_cells`` cells are noise."""
    labels, n = ndimage.label(prob >= threshold)
    boxes, mass = [], []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        region = labels[sl] == i + 1
        if region.sum() < min_cells:
            continue
        boxes.append([sl[1].start * STRIDE, sl[0].start * STRIDE, sl[1].stop * STRIDE, sl[0].stop * STRIDE])
        mass.append(float(prob[sl][region].sum()))
    order = np.argsort(mass)[::-1]
    return np.asarray(boxes, np.float32).reshape(-1, 4)[order], np.asarray(mass, np.float32)[order]


def load_subject_heads(state: dict) -> SubjectHeads:
    """Heads from a model file's ``subject_heads`` entry: {'config': {...}, 'state': fp16 tensors}."""
    heads = SubjectHeads(**state["config"])
    heads.load_state_dict(widen(state["state"]))
    return heads.eval()
