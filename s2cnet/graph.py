"""The spatial-semantic graph over one crop node and M object nodes (S2CNet, sections 3.2-3.4).

Each candidate crop forms its own small graph: node 0 is the crop, nodes 1..M are the visual genes.
Spatial edges come from box geometry (DisDrop or DisEmb), semantic edges from feature similarity.
The adjacency is folded into the tokens by the aggregation gate, then biases the logits of every
self-attention layer, which replaces the graph convolution of earlier croppers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EDGE_STRATEGIES = ("disdrop", "disemb", "none")
GEOMETRY_DIM = 8


def pair_geometry(crops: torch.Tensor, objects: torch.Tensor, width: float, height: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise box geometry for every candidate graph.

    crops [N, 4], objects [M, 4] in pixels -> (geometry [N, K, K, 8], distance [N, K, K]) with K = M + 1.
    Geometry is translation- and scale-aware (relative offsets, log size ratios, IoU, the share of
    node j that lies inside node i); distance is between centres, in units of the image diagonal.
    """
    n = crops.shape[0]
    boxes = torch.cat([crops[:, None], objects[None].expand(n, -1, -1)], dim=1)  # [N, K, 4]
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1.0)
    ctr = (boxes[..., 2:] + boxes[..., :2]) / 2
    diag = math.hypot(width, height)
    d = ctr[:, None, :, :] - ctr[:, :, None, :]  # [N, K, K, 2]: j minus i
    dist = d.norm(dim=-1) / diag
    rel = d / wh[:, :, None, :]
    logr = torch.log(wh[:, None, :, :] / wh[:, :, None, :])
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = wh.prod(-1)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter)
    inside_j = inter / area[:, None, :]  # share of node j kept by node i: 1 = whole, between = cut
    geometry = torch.cat([rel, logr, iou[..., None], inside_j[..., None], dist[..., None],
                          (inside_j * (1 - inside_j))[..., None] * 4], dim=-1)
    return geometry, dist


class SpatialEdges(nn.Module):
    """Per-head attention bias and a non-negative adjacency from box geometry.

    DisDrop keeps an edge only when two nodes' centres are within ``threshold`` (image diagonals);
    DisEmb keeps every edge and embeds the geometry, distance included, into its weight.
    """

    def __init__(self, strategy: str, heads: int, threshold: float, hidden: int = 32) -> None:
        super().__init__()
        if strategy not in EDGE_STRATEGIES:
            raise ValueError(f"edge strategy must be one of {EDGE_STRATEGIES}, got {strategy!r}")
        self.strategy, self.threshold = strategy, threshold
        self.embed = nn.Sequential(nn.Linear(GEOMETRY_DIM, hidden), nn.ReLU(), nn.Linear(hidden, heads + 1))

    def forward(self, geometry: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (bias [N, H, K, K], adjacency [N, K, K], keep-mask [N, K, K] or None)."""
        n, k = dist.shape[:2]
        if self.strategy == "none":
            eye = torch.eye(k, device=dist.device).expand(n, k, k)
            return dist.new_zeros(n, self.embed[-1].out_features - 1, k, k), eye, None
        e = self.embed(geometry)  # [N, K, K, H+1]
        bias, weight = e[..., :-1].permute(0, 3, 1, 2), e[..., -1]
        if self.strategy == "disdrop":
            keep = (dist <= self.threshold) | torch.eye(k, dtype=torch.bool, device=dist.device)
            adjacency = keep.float() * torch.sigmoid(weight)
            return bias, adjacency, keep
        return bias, torch.sigmoid(weight), None


def small_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32 even under bf16 autocast: the per-graph K x K products are too small to
    gain from bf16, and on a CPU oneDNN builds a new bf16 kernel for every new batch shape (about 1 ms
    each; every photo brings a new candidate count), which cost more than the products themselves."""
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float()


def graph_tokens(crops: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Crop tokens [N, D] and the M object tokens every graph shares [M, D] -> [N, 1+M, D]."""
    return torch.cat([crops[:, None], objects[None].expand(len(crops), -1, -1)], dim=1)


class SemanticEdges(nn.Module):
    """Cosine similarity between projected node features: per-head bias and adjacency."""

    def __init__(self, dim: int, heads: int, proj_dim: int = 64) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, proj_dim)
        self.scale = nn.Parameter(torch.ones(heads))

    def forward(self, crops: torch.Tensor, objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """crops [N, D], shared objects [M, D] -> (bias [N, H, K, K], adjacency [N, K, K])."""
        z = graph_tokens(F.normalize(self.proj(crops), dim=-1), F.normalize(self.proj(objects), dim=-1))
        sim = small_matmul(z, z.transpose(1, 2))  # [N, K, K]
        return self.scale[None, :, None, None] * sim[:, None], sim.clamp(min=0)


class AggregationGate(nn.Module):
    """Encodes the adjacency into the node tokens: x + g * W(A x), with g gated on [x, A x].

    Object tokens are the same in every candidate's graph, and a linear map commutes with the
    row mixing A, so W(A x) = A (W x): every linear runs once per distinct token (N + M), not per
    graph node (N * (1 + M)). The result is identical to the direct form.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.msg = nn.Linear(dim, dim)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, crops: torch.Tensor, objects: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """crops [N, D], shared objects [M, D], adjacency [N, K, K] -> gated tokens [N, K, D]."""
        n, d = crops.shape
        a = adjacency / adjacency.sum(-1, keepdim=True).clamp(min=1e-6)
        tokens = torch.cat([crops, objects])  # the N + M distinct tokens

        def mixed(weight: torch.Tensor) -> torch.Tensor:  # A (x W^T), with x W^T computed per distinct token
            t = F.linear(tokens, weight)
            return small_matmul(a, graph_tokens(t[:n], t[n:]))

        own = F.linear(tokens, self.gate.weight[:, :d])
        g = torch.sigmoid(graph_tokens(own[:n], own[n:]) + mixed(self.gate.weight[:, d:]) + self.gate.bias)
        return graph_tokens(crops, objects) + g * (mixed(self.msg.weight) + self.msg.bias)


class SpatialSemanticAttention(nn.Module):
    """Pre-LayerNorm transformer block whose attention logits carry the graph's edge biases."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"node_dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor | None,
                first_only: bool = False) -> torch.Tensor:
        """x [N, K, D] -> [N, K, D]; ``first_only`` updates just node 0 ([N, 1, D]): the last layer's
        object rows are never read out, so skipping them is exact and saves most of that layer."""
        n, k, d = x.shape
        hd = d // self.heads
        rows = 1 if first_only else k
        h, w, b = self.norm1(x), self.qkv.weight, self.qkv.bias
        if first_only:  # keys and values of every node, the query of node 0 alone
            kv = F.linear(h, w[d:], b[d:]).view(n, k, 2, self.heads, hd)
            q = F.linear(h[:, :1], w[:d], b[:d]).view(n, 1, self.heads, hd)
        else:
            qkv = F.linear(h, w, b).view(n, k, 3, self.heads, hd)
            q, kv = qkv[:, :, 0], qkv[:, :, 1:]
        q, kk, v = q.transpose(1, 2), kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [N, H, rows or K, hd]
        logits = small_matmul(q, kk.transpose(-1, -2)) / math.sqrt(hd) + bias[:, :, :rows]
        if keep is not None:
            logits = logits.masked_fill(~keep[:, None, :rows], float("-inf"))
        attn = self.drop(logits.softmax(-1))
        x = x[:, :rows] + self.drop(self.out(small_matmul(attn, v).transpose(1, 2).reshape(n, rows, d)))
        return x + self.drop(self.mlp(self.norm2(x)))
