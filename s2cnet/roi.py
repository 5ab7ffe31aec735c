"""RoIAlign and RoDAlign: what a box keeps and what it discards, as fixed-size features.

GAIC showed that a crop's quality depends on the discarded region as much as on its content, so every
node gets both: RoIAlign samples inside the box, RoDAlign samples the whole map with the box removed.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align


def _with_batch_index(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)


def roi_features(feat: torch.Tensor, boxes: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """feat [1, C, h, w], boxes [N, 4] x1,y1,x2,y2 in input pixels -> [N, C, size, size]."""
    return roi_align(feat, _with_batch_index(boxes), output_size=size, spatial_scale=1.0 / stride,
                     sampling_ratio=2, aligned=True)


def box_coverage(boxes: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
    """Fraction of each feature cell covered by each box -> [N, h, w], exact for axis-aligned boxes."""
    edges_x = torch.arange(w + 1, device=boxes.device, dtype=boxes.dtype) * stride
    edges_y = torch.arange(h + 1, device=boxes.device, dtype=boxes.dtype) * stride
    ox = (torch.minimum(boxes[:, 2:3], edges_x[None, 1:]) - torch.maximum(boxes[:, 0:1], edges_x[None, :-1])).clamp(min=0)
    oy = (torch.minimum(boxes[:, 3:4], edges_y[None, 1:]) - torch.maximum(boxes[:, 1:2], edges_y[None, :-1])).clamp(min=0)
    return (oy[:, :, None] * ox[:, None, :]) / float(stride * stride)


def rod_features(feat: torch.Tensor, boxes: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """The whole map with each box's area zeroed, RoIAligned over the full image -> [N, C, size, size]."""
    _, c, h, w = feat.shape
    keep = 1.0 - box_coverage(boxes, h, w, stride)  # [N, h, w]
    masked = feat * keep[:, None]  # [N, C, h, w]
    full = boxes.new_tensor([0.0, 0.0, w * stride, h * stride]).expand(len(boxes), 4)
    idx = torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None]
    return roi_align(masked, torch.cat([idx, full], dim=1), output_size=size, spatial_scale=1.0 / stride,
                     sampling_ratio=2, aligned=True)
