"""S2CNet: spatial-semantic collaborative cropping (Su et al., AAAI 2024), readable top to bottom.

image -> fused MobileNetV2 map -> RoI+RoD features for every candidate crop and every object box
(the "visual genes") -> one small graph per candidate (crop node + object nodes) with spatial and
semantic edges -> aggregation gate -> L spatial-semantic self-attention layers -> crop node -> score.
With ``use_graph=False`` it is the GAIC baseline: the crop's RoI+RoD features straight to a score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from s2cnet.backbone import FusedMobileNetV2
from s2cnet.graph import AggregationGate, SemanticEdges, SpatialEdges, SpatialSemanticAttention, graph_tokens, pair_geometry
from s2cnet.roi import rod_features, roi_features

STRIDE = 16


@dataclass
class S2CNetConfig:
    reduced_dim: int = 16  # channels after the backbone's 1x1 reduction (GAIC uses 8-32)
    align_size: int = 7  # RoIAlign / RoDAlign output is align_size x align_size
    node_dim: int = 256
    num_layers: int = 2  # spatial-semantic self-attention layers
    num_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    edge_strategy: str = "disemb"  # "disdrop" | "disemb" | "none"
    distance_threshold: float = 0.4  # DisDrop: centre distance in image diagonals
    max_objects: int = 10  # object nodes kept per image
    use_gate: bool = True  # feature aggregation gate
    use_semantic: bool = True  # semantic (feature-similarity) edges
    use_graph: bool = True  # False: GAIC baseline, no object nodes, no attention
    base_readout: bool = False  # True: a GAIC readout of the crop token is added to the graph's score, so the
    # graph learns a correction to a graph-free score (one jointly trained pair, one backbone pass)
    coarse_readout: bool = False  # True: a graph-free readout of the crop token, distilled from the full score,
    # ranks every candidate so the graph head runs only on the front-runners (coarse-to-fine, Cropper.refine)
    tf_padding: bool = False  # TensorFlow "SAME" padding on stride-2 convs (backbones converted from TF)

    @classmethod
    def from_dict(cls, d: dict) -> S2CNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown S2CNetConfig keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def box_position(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Normalised corners, size and log aspect: where in the photo a node lies -> [N, 7]."""
    scale = boxes.new_tensor([width, height, width, height])
    b = boxes / scale
    w, h = (b[:, 2] - b[:, 0]).clamp(min=1e-3), (b[:, 3] - b[:, 1]).clamp(min=1e-3)
    return torch.stack([b[:, 0], b[:, 1], b[:, 2], b[:, 3], w, h, torch.log(w * width / (h * height))], dim=1)


class NodeEncoder(nn.Module):
    """RoI + RoD features of a box -> one node token (GAIC's head, up to its last layers)."""

    def __init__(self, cfg: S2CNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Sequential(
            nn.Conv2d(2 * cfg.reduced_dim, cfg.node_dim, cfg.align_size), nn.ReLU(inplace=True), nn.Flatten()
        )
        self.position = nn.Linear(7, cfg.node_dim)

    def forward(self, feat: torch.Tensor, boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
        s = self.cfg.align_size
        x = torch.cat([roi_features(feat, boxes, s, STRIDE), rod_features(feat, boxes, s, STRIDE)], dim=1)
        return self.conv(x) + self.position(box_position(boxes, width, height))


GRAPH_PARTS = ("spatial.", "semantic.", "gate.", "layers.", "type_embed", "norm.")  # keys before the head had a name


class CropGraphHead(nn.Module):
    """The paper's graph part, as one named module (as torchvision names a detector's heads): every
    candidate crop's small graph (the crop node plus the shared object nodes) with spatial and semantic
    edges, the aggregation gate and the spatial-semantic attention layers -> the crop node's features."""

    def __init__(self, cfg: S2CNetConfig) -> None:
        super().__init__()
        self.spatial = SpatialEdges(cfg.edge_strategy, cfg.num_heads, cfg.distance_threshold)
        self.semantic = SemanticEdges(cfg.node_dim, cfg.num_heads) if cfg.use_semantic else None
        self.gate = AggregationGate(cfg.node_dim) if cfg.use_gate else None
        self.layers = nn.ModuleList(
            SpatialSemanticAttention(cfg.node_dim, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
            for _ in range(cfg.num_layers)
        )
        self.type_embed = nn.Parameter(torch.zeros(2, cfg.node_dim))  # crop node vs object node
        self.norm = nn.LayerNorm(cfg.node_dim)

    def forward(self, crop_tokens: torch.Tensor, obj_tokens: torch.Tensor, crops: torch.Tensor,
                objects: torch.Tensor, width: float, height: float) -> torch.Tensor:
        """Crop tokens [N, D] and object tokens [M, D] (M may be 0) -> normalised crop-node features [N, D]."""
        c, o = crop_tokens + self.type_embed[0], obj_tokens + self.type_embed[1]  # N graphs share the M objects
        geometry, dist = pair_geometry(crops, objects, width, height)
        bias, adjacency, keep = self.spatial(geometry, dist)
        if self.semantic is not None:
            sem_bias, sem_adj = self.semantic(c, o)
            bias, adjacency = bias + sem_bias, (adjacency + sem_adj) / 2
        if keep is not None:  # DisDrop drops the edge itself, whichever graph proposed it
            adjacency = adjacency * keep
        x = self.gate(c, o, adjacency) if self.gate is not None else graph_tokens(c, o)  # [N, 1+M, D]
        for i, layer in enumerate(self.layers):
            x = layer(x, bias, keep, first_only=i == len(self.layers) - 1)
        with torch.autocast(x.device.type, enabled=False):  # fp32 from here: low-precision scores would tie
            return self.norm(x[:, 0].float())


def score_mlp(dim: int) -> nn.Sequential:
    """A node's features -> one score (GAIC's last layers)."""
    return nn.Sequential(nn.Linear(dim, 128), nn.ReLU(inplace=True), nn.Linear(128, 1))


class S2CNet(nn.Module):
    def __init__(self, cfg: S2CNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or S2CNetConfig()
        self.backbone = FusedMobileNetV2(cfg.reduced_dim, tf_padding=cfg.tf_padding)
        self.nodes = NodeEncoder(cfg)
        self.graph = CropGraphHead(cfg) if cfg.use_graph else None  # use_graph=False: no head at all
        self.readout = score_mlp(cfg.node_dim)
        self.base_readout = score_mlp(cfg.node_dim) if cfg.base_readout and cfg.use_graph else None
        self.coarse = score_mlp(cfg.node_dim) if cfg.coarse_readout else None
        self._register_load_state_dict_pre_hook(_name_the_graph_head)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """[1, 3, H, W] normalised image (sides multiples of 32) -> stride-16 map; one pass serves all crops."""
        return self.backbone(image)

    def crop_tokens(self, feat: torch.Tensor, crops: torch.Tensor, width: float, height: float) -> torch.Tensor:
        """Crops [N, 4] in input pixels -> their node tokens [N, D] (RoI + RoD features and position)."""
        return self.nodes(feat, crops, width, height)

    def coarse_scores(self, crop_tokens: torch.Tensor) -> torch.Tensor:
        """A cheap estimate [N] of each crop's full score from its token alone (no objects, no graph):
        enough to tell the front-runners from the rest, on the full score's scale."""
        if self.coarse is None:
            raise ValueError("this model has no coarse readout (S2CNetConfig.coarse_readout)")
        with torch.autocast(crop_tokens.device.type, enabled=False):
            return self.coarse(crop_tokens.float()).squeeze(-1)

    def object_tokens(self, feat: torch.Tensor, objects: torch.Tensor | None, width: float,
                      height: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Objects [M, 4] (or None) -> (the ``max_objects`` first of them [M', 4], their tokens [M', D])."""
        objects = (feat.new_zeros(0, 4) if objects is None else objects)[: self.cfg.max_objects]
        tokens = self.nodes(feat, objects, width, height) if len(objects) else feat.new_zeros(0, self.cfg.node_dim)
        return objects, tokens

    def score_tokens(self, feat: torch.Tensor, crop_tokens: torch.Tensor, crops: torch.Tensor,
                     objects: torch.Tensor | None, width: float, height: float, chunk: int | None = None,
                     obj_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Full scores [N] of crops [N, 4] whose tokens are known, given objects [M, 4] (M may be 0);
        ``obj_tokens``: the objects' tokens when already known (``object_tokens``; several calls on one
        photo share them).

        chunk: run the graph head on that many candidates at a time (same scores; on a CPU a chunk's
        activations stay in cache, about 9% faster scoring at 64 than all ~250 candidates at once)."""
        if self.graph is None:
            return self.readout(crop_tokens).squeeze(-1)
        if obj_tokens is None:
            objects, obj_tokens = self.object_tokens(feat, objects, width, height)
        else:
            objects = objects[: len(obj_tokens)]
        obj_tokens = obj_tokens.to(crop_tokens.dtype)
        step = chunk or max(len(crops), 1)  # every candidate's graph is its own: chunks change nothing but memory
        x = torch.cat([self.graph(t, obj_tokens, c, objects, width, height)
                       for t, c in zip(crop_tokens.split(step), crops.split(step))])
        with torch.autocast(x.device.type, enabled=False):  # fp32 readout: low-precision scores would tie
            score = self.readout(x).squeeze(-1)
            return score if self.base_readout is None else score + self.base_readout(crop_tokens.float()).squeeze(-1)

    def score_crops(self, feat: torch.Tensor, crops: torch.Tensor, objects: torch.Tensor | None,
                    width: float, height: float, chunk: int | None = None) -> torch.Tensor:
        """Full scores [N] for crops [N, 4] given objects [M, 4] (M may be 0), all in input pixels."""
        return self.score_tokens(feat, self.crop_tokens(feat, crops, width, height), crops, objects, width, height, chunk)

    def forward(self, image: torch.Tensor, crops: torch.Tensor, objects: torch.Tensor | None = None) -> torch.Tensor:
        h, w = image.shape[-2:]
        return self.score_crops(self.features(image), crops, objects, float(w), float(h))


def _name_the_graph_head(state: dict, prefix: str, *args) -> None:
    """Files written before the graph head was one module keep loading: 'layers.0...' -> 'graph.layers.0...'."""
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest.startswith(GRAPH_PARTS):
            state[prefix + "graph." + rest] = state.pop(key)
