"""Debug overlay: where the model likes to crop, which objects it saw, and what it chose.

Every candidate's score is spread over the pixels it covers and averaged per pixel, so warm areas
are the ones good crops keep and cold ones are what good crops leave out (colours span the
heat's own range, given in the legend). Object nodes are drawn
white (red when a chosen crop cuts through them) and chosen crops in distinct colours with labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from s2cnet.cropper import Analysis, Crop

# Diverging low -> high ramp (blue, pale yellow, red), readable over a grey photo.
_RAMP = np.array([[49, 54, 149], [116, 173, 209], [255, 255, 191], [244, 109, 67], [165, 0, 38]], np.float32)
# One colour per ratio wherever crops are drawn (this overlay, the contact sheet, the service's page), so
# a ratio reads the same everywhere; saturated, so a screenshot test finds each rectangle by colour.
RATIO_COLOURS = {"1:1": (255, 0, 0), "4:3": (0, 255, 0), "16:9": (0, 0, 255), "9:16": (255, 0, 255),
                 "4:5": (0, 255, 255), "3:4": (255, 255, 0), "3:2": (255, 128, 0), "2:3": (128, 0, 255),
                 "free": (255, 105, 180)}
OTHER_RATIO_COLOURS = [(0, 128, 255), (128, 255, 0), (255, 0, 128), (0, 255, 128)]  # by the ratio's characters


def ratio_colour(ratio: str | None) -> tuple[int, int, int]:
    """The colour of a ratio ("W:H" in lowest terms, None or "free" for the free ratio). Ratios without
    their own colour take one of ``OTHER_RATIO_COLOURS`` by the sum of their character codes (the
    service's page computes the same)."""
    key = ratio or "free"
    if key in RATIO_COLOURS:
        return RATIO_COLOURS[key]
    return OTHER_RATIO_COLOURS[sum(ord(c) for c in key) % len(OTHER_RATIO_COLOURS)]


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


OBJECT_COLOUR, CUT_OBJECT_COLOUR = (255, 255, 255), (255, 40, 40)
SAFE_BOX_COLOUR = (255, 230, 120)  # the photo's safe box and focal point (a cross)


def _ramp_lut(levels: int = 256) -> np.ndarray:
    v = np.linspace(0.0, 1.0, levels) * (len(_RAMP) - 1)
    i = np.minimum(v.astype(int), len(_RAMP) - 2)
    t = (v - i)[:, None]
    return np.rint(_RAMP[i] * (1 - t) + _RAMP[i + 1] * t).astype(np.uint8)


_LUT = _ramp_lut()


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (NaN -> 0) -> uint8 RGB along the ramp, through a 256-entry table."""
    index = np.rint(np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_LUT) - 1)).astype(np.intp)
    return _LUT[index]


def score_heat(size: tuple[int, int], boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[H, W] mean score of the candidates covering each pixel; NaN where none do.

    Uses 2-D difference arrays, so it costs O(candidates + pixels) rather than their product.
    """
    w, h = size
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    b = np.rint(boxes).astype(int)
    x1, x2 = np.clip(b[:, 0], 0, w), np.clip(b[:, 2], 0, w)
    y1, y2 = np.clip(b[:, 1], 0, h), np.clip(b[:, 3], 0, h)
    keep = (x2 > x1) & (y2 > y1)
    x1, x2, y1, y2, val = x1[keep], x2[keep], y1[keep], y2[keep], scores[keep]
    total = np.zeros((h + 1, w + 1))
    count = np.zeros((h + 1, w + 1))
    for grid, v in ((total, val), (count, np.ones_like(val))):
        np.add.at(grid, (y1, x1), v)
        np.add.at(grid, (y1, x2), -v)
        np.add.at(grid, (y2, x1), -v)
        np.add.at(grid, (y2, x2), v)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.cumsum(0).cumsum(1)[:h, :w])
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour, font) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=colour, font=font)


def render_overlay(image: Image.Image, boxes: np.ndarray, scores: np.ndarray, objects: np.ndarray,
                   crops: Sequence[Crop], max_side: int | None = 1024, alpha: float = 0.55) -> Image.Image:
    """The photo in grey under the candidates' score heat, object boxes and the chosen crops.

    Everything is given in pixels of ``image``; the overlay is shrunk to ``max_side`` (never enlarged).
    """
    w0, h0 = image.size
    k = min(1.0, max_side / max(w0, h0)) if max_side else 1.0
    size = (max(1, round(w0 * k)), max(1, round(h0 * k)))
    sx, sy = size[0] / w0, size[1] / h0
    scale = np.array([sx, sy, sx, sy])

    grey = np.asarray(image.convert("L").resize(size, Image.BILINEAR), np.float32)[..., None].repeat(3, -1)
    heat = score_heat(size, np.asarray(boxes, np.float64).reshape(-1, 4) * scale, scores)
    covered = ~np.isnan(heat)
    lo, hi = (float(heat[covered].min()), float(heat[covered].max())) if covered.any() else (0.0, 0.0)
    stretched = (heat - lo) / (hi - lo) if hi > lo else np.full_like(heat, 0.5)  # colours span the heat's range
    a = np.where(covered, alpha, 0.0)[..., None]
    out = Image.fromarray(np.rint(grey * (1 - a) + colormap(stretched).astype(np.float32) * a).astype(np.uint8))

    draw = ImageDraw.Draw(out)
    font = _font(max(10, min(size) // 40))
    line = max(2, min(size) // 200)
    text_h = draw.textbbox((0, 0), "Ag", font=font)[3] + 4
    cut = {tuple(int(v) for v in c) for crop in crops for c in crop.cut_objects}
    for obj in np.asarray(objects, np.float64).reshape(-1, 4):
        colour = CUT_OBJECT_COLOUR if tuple(int(round(v)) for v in obj) in cut else OBJECT_COLOUR
        x1, y1, x2, y2 = obj * scale
        draw.rectangle((x1, y1, x2, y2), outline=(0, 0, 0), width=line + 2)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
    for i, crop in enumerate(crops):  # boxes, and a colour-keyed list top-left (labels on boxes collide)
        colour = ratio_colour(crop.ratio)
        x1, y1, x2, y2 = np.asarray(crop.box, np.float64) * scale
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=line + 1)
        terms = f"  faces {crop.kept_faces}/{crop.faces}" if crop.faces else ""
        terms += f"  cut {len(crop.cut_objects)}  dropped {len(crop.dropped_objects)}"
        terms += f"  salient {crop.saliency_kept:.0%}" if crop.saliency_kept is not None else ""
        _label(draw, (line + 2, line + 2 + i * text_h), f"{crop.ratio or 'free'}  score {crop.score:.3f}{terms}", colour, font)

    if crops and crops[0].safe_box is not None:  # per photo: what every crop should hold, and where to centre
        x1, y1, x2, y2 = np.asarray(crops[0].safe_box, np.float64) * scale
        draw.rectangle((x1, y1, x2, y2), outline=SAFE_BOX_COLOUR, width=max(1, line // 2))
        _label(draw, (x1 + line, y2 - text_h), "safe box", SAFE_BOX_COLOUR, font)
    if crops and crops[0].focal_point is not None:
        fx, fy = crops[0].focal_point[0] * sx, crops[0].focal_point[1] * sy
        r = 3 * line
        draw.line((fx - r, fy, fx + r, fy), fill=SAFE_BOX_COLOUR, width=line)
        draw.line((fx, fy - r, fx, fy + r), fill=SAFE_BOX_COLOUR, width=line)

    if covered.any():  # legend: the ramp from the lowest to the highest per-pixel mean score
        bar_w, bar_h = max(32, size[0] // 4), max(6, size[1] // 60)
        ramp = colormap(np.linspace(0, 1, bar_w))[None].repeat(bar_h, 0)
        y = size[1] - bar_h - line - 2
        out.paste(Image.fromarray(ramp), (line + 2, y))
        text = f"mean score of candidates covering a pixel: {lo:.3f} .. {hi:.3f}"
        _label(draw, (line + 2, max(0, y - text_h - 2)), text, (255, 255, 255), font)
    return out


def debug_overlay(image: Image.Image, analysis: Analysis, max_side: int | None = 1024) -> Image.Image:
    """Overlay for one photo from the very analysis that chose its crops (no second scoring pass)."""
    boxes = np.concatenate(list(analysis.candidates.values()))
    scores = np.concatenate(list(analysis.scores.values()))
    return render_overlay(image, boxes, scores, analysis.objects, analysis.crops, max_side=max_side)
