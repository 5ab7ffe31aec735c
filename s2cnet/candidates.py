"""Candidate crops on GAIC's grid: every crop the model scores comes from here.

Free aspect ratio: the photo is cut into ``bins`` x ``bins`` cells; a crop's top-left corner lies in
the first ``corner_bins`` cells and its bottom-right in the last ones (GAIC), subject to a minimum
area and an aspect ratio in [1/2, 2]. Fixed ratio "W:H": crops of exactly that ratio (integer
multiples of the reduced W:H, so exact to the pixel) at several scales, slid over a position grid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd

import numpy as np

_RATIO = re.compile(r"([0-9]+)\s*:\s*([0-9]+)")


@dataclass(frozen=True)
class GridConfig:
    bins: int = 12  # free ratio: grid cells per side
    corner_bins: int = 4  # free ratio: cells each corner may move over
    min_area: float = 0.5  # minimum crop area as a share of the photo (fixed ratio: of the largest crop)
    max_aspect: float = 2.0  # free ratio: aspect ratio limits [1/max_aspect, max_aspect]
    scales: int = 4  # fixed ratio: sizes from the largest fitting crop down to sqrt(min_area) of it
    positions: int = 4  # fixed ratio: positions per free axis (subject-centred crops are added beside them)
    # free ratio: crops centred on a small subject may go down to this share of the photo (GAIC's grid
    # never goes under min_area, while about a fifth of the crops people draw do)
    subject_min_area: float = 0.3


def parse_ratio(ratio: str) -> tuple[int, int]:
    """'16:9' -> (16, 9) reduced; raises ValueError with the reason for anything else."""
    m = _RATIO.fullmatch(ratio.strip()) if isinstance(ratio, str) else None
    if m is None:
        raise ValueError(f"aspect ratio must look like 'W:H' with positive integers, got {ratio!r}")
    w, h = int(m[1]), int(m[2])
    if w <= 0 or h <= 0 or w > 100 or h > 100:
        raise ValueError(f"aspect ratio terms must be between 1 and 100, got {ratio!r}")
    g = gcd(w, h)
    return w // g, h // g


def canonical_ratio(ratio: str) -> str:
    """'8:6' -> '4:3': the one form every output (Parquet, HTTP, CLI, file names) uses."""
    a, b = parse_ratio(ratio)
    return f"{a}:{b}"


def ratio_name(ratio: str | None) -> str:
    """'16:9' -> '16x9', None (free ratio) -> 'free': a ratio in file and object names."""
    return "free" if ratio is None else canonical_ratio(ratio).replace(":", "x")


def free_candidates(width: int, height: int, grid: GridConfig = GridConfig()) -> np.ndarray:
    """GAIC's grid anchors -> [N, 4] int x1,y1,x2,y2 inside the photo."""
    xs = np.round(np.arange(grid.bins + 1) * width / grid.bins).astype(int)
    ys = np.round(np.arange(grid.bins + 1) * height / grid.bins).astype(int)
    lo, hi = range(grid.corner_bins), range(grid.bins - grid.corner_bins + 1, grid.bins + 1)
    out = []
    for x1 in xs[list(lo)]:
        for y1 in ys[list(lo)]:
            for x2 in xs[list(hi)]:
                for y2 in ys[list(hi)]:
                    w, h = x2 - x1, y2 - y1
                    if w <= 0 or h <= 0 or w * h < grid.min_area * width * height:
                        continue
                    if not (1 / grid.max_aspect <= w / h <= grid.max_aspect):
                        continue
                    out.append((x1, y1, x2, y2))
    if not out:  # extreme panoramas: fall back to the whole photo
        out.append((0, 0, width, height))
    return np.unique(np.array(out, dtype=np.int64), axis=0)


def unique_rows(boxes: np.ndarray) -> np.ndarray:
    """Boxes without repeats, first occurrences in order."""
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def _multiples(k_max: int, grid: GridConfig) -> list[int]:
    """The grid's scales of an exact-ratio crop, as multiples of the reduced W:H, largest first."""
    k_min = max(1, int(np.ceil(k_max * np.sqrt(grid.min_area))))
    return sorted({int(round(k)) for k in np.linspace(k_max, k_min, grid.scales)}, reverse=True)


def too_small(width: int, height: int, ratio: str | None) -> str | None:
    """Why a ``width`` x ``height`` photo holds no exact crop of ``ratio`` (e.g. 16:9 in 12x12), else None."""
    if ratio is None:  # a free-ratio crop fits any photo
        return None
    a, b = parse_ratio(ratio)
    return f"a {width}x{height} photo is too small for an exact {ratio} crop" if width < a or height < b else None


def split_fitting(width: int, height: int, ratios: Sequence[str | None]) -> tuple[list[str | None], list[dict]]:
    """The one rule every entry point follows for a ratio the photo cannot hold: that ratio fails alone.
    -> (the ratios it holds, one ``{"ratio", "detail"}`` per ratio it does not)."""
    fits, errors = [], []
    for r in ratios:
        reason = too_small(width, height, r)
        fits += [r] if reason is None else []
        errors += [] if reason is None else [{"ratio": r, "detail": reason}]
    return fits, errors


def fixed_candidates(width: int, height: int, ratio: str, grid: GridConfig = GridConfig()) -> np.ndarray:
    """Crops of exactly ``ratio`` -> [N, 4] int x1,y1,x2,y2 inside the photo, largest first."""
    reason = too_small(width, height, ratio)
    if reason is not None:
        raise ValueError(reason)
    a, b = parse_ratio(ratio)
    k_max = min(width // a, height // b)
    out = []
    for k in _multiples(k_max, grid):
        w, h = a * k, b * k
        for x1 in np.unique(np.round(np.linspace(0, width - w, grid.positions)).astype(int)):
            for y1 in np.unique(np.round(np.linspace(0, height - h, grid.positions)).astype(int)):
                out.append((x1, y1, x1 + w, y1 + h))
    return unique_rows(np.array(out, dtype=np.int64))


def anchored_candidates(width: int, height: int, ratio: str, anchors: np.ndarray, grid: GridConfig = GridConfig()) -> np.ndarray:
    """Crops of exactly ``ratio`` centred on each anchor box (a face, the union of the protected
    objects...) at each of the grid's scales, shifted inside the photo: a position grid cannot
    centre a subject that sits between its steps. -> [N, 4] int, possibly empty."""
    a, b = parse_ratio(ratio)
    k_max = min(width // a, height // b)
    anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
    if k_max < 1 or len(anchors) == 0:
        return np.zeros((0, 4), np.int64)
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    out = []
    for k in _multiples(k_max, grid):
        w, h = a * k, b * k
        x1 = np.clip(np.round(cx - w / 2), 0, width - w).astype(np.int64)
        y1 = np.clip(np.round(cy - h / 2), 0, height - h).astype(np.int64)
        out.append(np.stack([x1, y1, x1 + w, y1 + h], 1))
    return np.concatenate(out)


def anchored_free_candidates(width: int, height: int, anchors: np.ndarray, grid: GridConfig = GridConfig()) -> np.ndarray:
    """Free-ratio crops smaller than the grid's, centred on each anchor box that is small enough to
    leave room: at the photo's aspect and at the anchor's own (within the grid's aspect limits), with
    areas from ``subject_min_area`` up to ``min_area`` of the photo, shifted inside the photo; only
    crops that hold the whole anchor. -> [N, 4] int, possibly empty."""
    anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
    out = []
    if grid.subject_min_area >= grid.min_area:
        return np.zeros((0, 4), np.int64)
    areas = np.linspace(grid.subject_min_area, grid.min_area, 3, endpoint=False) * width * height
    for x1, y1, x2, y2 in anchors:
        aw, ah = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        own = float(np.clip(aw / ah, 1 / grid.max_aspect, grid.max_aspect))
        for aspect in {width / height, own}:
            for area in areas:
                w, h = min(np.sqrt(area * aspect), width), min(np.sqrt(area / aspect), height)
                if w < aw or h < ah:
                    continue  # too small to hold the subject
                cx = np.clip((x1 + x2) / 2, w / 2, width - w / 2)
                cy = np.clip((y1 + y2) / 2, h / 2, height - h / 2)
                out.append((round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2)))
    return np.array(out, np.int64).reshape(-1, 4)


def candidates(width: int, height: int, ratio: str | None = None, grid: GridConfig = GridConfig()) -> np.ndarray:
    """Free-ratio candidates when ``ratio`` is None, else exact ``ratio`` candidates."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return free_candidates(width, height, grid) if ratio is None else fixed_candidates(width, height, ratio, grid)
