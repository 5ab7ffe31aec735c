"""MobileNetV2 backbone with GAIC's multi-scale fusion at stride 16.

Crop quality depends on both fine detail (stride 8) and global layout (stride 32), so the three
stages are resampled to stride 16 and concatenated before a 1x1 reduction, as in GAIC and S2CNet.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

FUSED_CHANNELS = 32 + 96 + 320  # MobileNetV2 widths at strides 8, 16 and 32
STRIDE4_LAYERS = 4  # features[:4] end at stride 4 (24 channels), inside the stride-8 stage


class BackboneMaps(NamedTuple):
    """One photo's backbone pass, as the heads read it."""

    stride8: torch.Tensor  # [B, 32, H/8, W/8]: the stride-8 stage (small faces need it)
    fused: torch.Tensor  # [B, 448, H/16, W/16]: strides 8, 16 and 32 fused, before the 1x1 reduction
    stride4: torch.Tensor  # [B, 24, H/4, W/4]: inside the stride-8 stage (where a small face's box edges are)


def fuse(c8: torch.Tensor, c16: torch.Tensor, c32: torch.Tensor) -> torch.Tensor:
    """The three stages resampled to stride 16 and concatenated: [B, 448, H/16, W/16]. A function of
    its own so that training on cached stage outputs (2.5x smaller than the fused map) rebuilds
    exactly what the Cropper computes."""
    size = c16.shape[-2:]
    c32 = F.interpolate(c32, size=size, mode="bilinear", align_corners=False)
    return torch.cat([F.adaptive_avg_pool2d(c8, size), c16, c32], dim=1)


class SamePadConv2d(nn.Conv2d):
    """A stride-2 3x3 conv padded the TensorFlow way ("SAME": 0 top/left, 1 bottom/right on even
    inputs). ImageNet weights converted from TF models were learned with that alignment; torchvision's
    symmetric padding shifts the features by a pixel at every stride-2 layer.

    The one-sided pad is never materialised: a zero tap in front of the kernel plus symmetric padding
    reads the same pixels with the same weights (bit-exact), where padding a channels-last input took
    16% of the Cropper's time in one CPU profile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = max((-x.shape[-2]) % self.stride[0] + self.kernel_size[0] - self.stride[0], 0)
        pad_w = max((-x.shape[-1]) % self.stride[1] + self.kernel_size[1] - self.stride[1], 0)
        after_h, after_w = pad_h - pad_h // 2, pad_w - pad_w // 2  # TF puts the odd pixel after
        weight = F.pad(self.weight, (after_w - pad_w // 2, 0, after_h - pad_h // 2, 0))
        return F.conv2d(x, weight, self.bias, self.stride, (after_h, after_w), self.dilation, self.groups)


def use_same_padding(features: nn.Module) -> None:
    """Turns every strided conv into a SamePadConv2d in place: same parameters and state-dict keys."""
    for m in features.modules():
        if type(m) is nn.Conv2d and m.stride != (1, 1):
            m.__class__ = SamePadConv2d
            m.padding = (0, 0)


class FusedMobileNetV2(nn.Module):
    """torchvision's MobileNetV2 ``features`` split into three stages and fused at stride 16."""

    def __init__(self, out_channels: int = 32, imagenet_weights: str | Path | None = None,
                 tf_padding: bool = False) -> None:
        super().__init__()
        features = torchvision.models.mobilenet_v2().features
        if tf_padding:
            use_same_padding(features)
        self.tf_padding = tf_padding
        # sliced Sequentials keep torchvision's layer numbers: stage16.7.* is features.7.*
        self.stage8 = features[:7]  # 32 channels, stride 8
        self.stage16 = features[7:14]  # 96 channels, stride 16
        self.stage32 = features[14:18]  # 320 channels, stride 32
        self.reduce = nn.Sequential(nn.Conv2d(FUSED_CHANNELS, out_channels, 1), nn.ReLU(inplace=True))
        self.out_channels = out_channels
        if imagenet_weights is not None:
            # Users with torchvision's ImageNet checkpoint on disk pass its path; nothing is downloaded.
            self.load_torchvision(torch.load(imagenet_weights, map_location="cpu", weights_only=True))

    def load_torchvision(self, state: dict[str, torch.Tensor]) -> None:
        """Copies a torchvision MobileNetV2 state dict (``features.N.*``, e.g. its ImageNet file) into
        the three stages, read through the layer numbers they kept; the reduction keeps its own weights
        and torchvision's last 1280-channel conv and classifier have no place here."""
        stages = [k for k in self.state_dict() if not k.startswith("reduce.")]
        self.load_state_dict({k: state[f"features.{k.split('.', 1)[1]}"] for k in stages}, strict=False)

    def stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three stage outputs at strides 8, 16 and 32 (what ``fuse`` joins)."""
        return self.stages_from4(x)[1:]

    def stages_from4(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stride-4 map inside the stride-8 stage, then the three stage outputs: one pass."""
        # A frozen stride-8 stage needs no autograd graph: that saves most of a CPU training step.
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.stage8.parameters())):
            c4 = self.stage8[:STRIDE4_LAYERS](x)
            c8 = self.stage8[STRIDE4_LAYERS:](c4)
        c16 = self.stage16(c8)
        return c4, c8, c16, self.stage32(c16)

    def pyramid(self, x: torch.Tensor) -> BackboneMaps:
        """The stride-4 and stride-8 maps and the fused map: the scorer reads the fused map, the
        saliency and subject heads read them too."""
        c4, c8, c16, c32 = self.stages_from4(x)
        return BackboneMaps(c8, fuse(c8, c16, c32), c4)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """The 448-channel stride-16 map before reduction."""
        return self.pyramid(x).fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.fused(x))

    def fold_batchnorm(self) -> FusedMobileNetV2:
        """Inference only: folds every BatchNorm into the conv before it (same outputs, ~fewer passes)."""
        for module in self.modules():
            if isinstance(module, nn.Sequential):
                for i in range(len(module) - 1):
                    conv, bn = module[i], module[i + 1]
                    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                        module[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                        module[i + 1] = nn.Identity()
        return self

    def freeze_pretrained(self, stage8: bool = True, affine: bool = True) -> None:
        """What fine-tuning keeps as pretraining left it: BatchNorm statistics (with ``affine`` also its
        scale and shift) and, with ``stage8``, the whole stride-8 stage. Call it again after ``train()``,
        which puts those layers back in training mode."""
        self.freeze_bn(affine)
        if stage8:
            self.stage8.requires_grad_(False)
            self.stage8.eval()

    def freeze_bn(self, affine: bool = True) -> None:
        """Keep BatchNorm statistics fixed (GAIC-style training sees one image per step); ``affine``
        also freezes the scale and shift, which otherwise go on learning."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
                if affine:
                    for p in m.parameters():
                        p.requires_grad_(False)
