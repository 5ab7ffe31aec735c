"""The crop policy: which scored candidate becomes the crop, and what every result says about it.

The learned score says which crop people prefer; the policy makes sure the crop keeps what matters,
in this order (each step only narrows the candidates the step before left):

1. The caller's ``focus`` point lies inside the crop; the caller's ``keep`` boxes are kept whole
   whenever some candidate can (else as much of each as can be).
2. Faces, most prominent first (area x detector confidence). The most prominent face is kept whole
   when some candidate can; faces of at least ``face_share`` of its area come after it, each only
   among the candidates that already serve the faces before it, never at their expense. A face no
   remaining candidate keeps whole is left out cleanly (under 10% inside) rather than sliced.
   Much smaller faces (a crowd behind the subject) are not protected.
3. Within ``integrity_margin`` of the best learned score left: the fewest of the other protected boxes
   lost (a head-and-shoulders region under the first face, then people, main objects, salient regions;
   a box cut through counts twice, a box left out once).
4. Among those, the best learned score plus ``saliency_weight`` x the share of the saliency mass kept.

Every result also carries the photo's focal point and safe box (``focal_point``, ``safe_box``), so a
CDN can cut any other ratio later without the model: the smallest box holding what must be kept, and
the point a crop should be centred near.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from s2cnet.proposals import FACE, Proposals, upsampled

KEEP_WHOLE, DROPPED = 0.9, 0.1  # an object is kept whole at >= 90% inside the crop, dropped at <= 10%
KEEP_EXACT = 0.999  # a caller's keep box is exact: all of it, whenever a candidate can
SALIENCY_WEIGHT = 2.0  # score units per share of the saliency mass kept, within the integrity margin (chosen on validation)
FACE_SHARE = 0.3  # faces of at least this share of the most prominent face's area are protected after it
MAX_KEEP_BOXES = 16  # caller's keep boxes per photo


@dataclass
class Crop:
    ratio: str | None  # "W:H", or None for the free-ratio crop
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the upright image
    score: float
    cut_objects: list[tuple[int, int, int, int]] = field(default_factory=list)  # protected boxes the crop cuts through
    dropped_objects: list[tuple[int, int, int, int]] = field(default_factory=list)  # protected boxes it leaves out
    kept_faces: int = 0  # protected faces kept whole
    faces: int = 0  # protected faces found (the most prominent face and those of at least FACE_SHARE of its area)
    saliency_kept: float | None = None  # share of the photo's saliency mass inside the crop (None: no saliency map)
    # per photo, the same on every crop of it: where any crop should be centred, and what it must hold
    focal_point: tuple[int, int] | None = None
    safe_box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Regions:
    """What the caller says must stay, in pixels of the upright full-size photo."""

    keep: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # [K, 4] x1,y1,x2,y2
    focus: tuple[float, float] | None = None  # (x, y)

    @property
    def anchors(self) -> np.ndarray:
        """Boxes to centre extra candidates on, so some candidate of every ratio can honour them."""
        out = [self.keep] if len(self.keep) else []
        if self.focus is not None:
            out.append(np.float32([[*self.focus, *self.focus]]))
        if len(self.keep) > 1:
            out.append(union(self.keep)[None])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 4), np.float32)

    def mirrored(self, width: int) -> Regions:
        keep = self.keep.copy()
        keep[:, [0, 2]] = width - self.keep[:, [2, 0]]
        focus = None if self.focus is None else (width - self.focus[0], self.focus[1])
        return Regions(keep, focus)


def caller_regions(size: tuple[int, int], keep=None, focus=None) -> Regions:
    """The caller's ``keep`` boxes and ``focus`` point, checked against the photo: a ValueError says
    what is wrong (not finite, outside the photo, empty, too many)."""
    w, h = size
    if keep is None:
        boxes = np.zeros((0, 4), np.float32)
    else:
        try:
            boxes = np.asarray(keep, np.float64).reshape(-1, 4)
        except (TypeError, ValueError):
            raise ValueError("keep must be a list of [x1, y1, x2, y2] boxes") from None
        if len(boxes) > MAX_KEEP_BOXES:
            raise ValueError(f"keep holds {len(boxes)} boxes; at most {MAX_KEEP_BOXES} are taken")
        for b in boxes:
            if not np.isfinite(b).all():
                raise ValueError(f"keep box {b.tolist()} is not finite")
            if b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h:
                raise ValueError(f"keep box {[round(v, 1) for v in b.tolist()]} lies outside the {w}x{h} photo")
            if b[2] <= b[0] or b[3] <= b[1]:
                raise ValueError(f"keep box {b.tolist()} is empty: give x1 < x2 and y1 < y2")
        boxes = boxes.astype(np.float32)
    point = None
    if focus is not None:
        try:
            x, y = (float(v) for v in focus)
        except (TypeError, ValueError):
            raise ValueError("focus must be a point (x, y)") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"focus ({x}, {y}) is not finite")
        if not (0 <= x <= w and 0 <= y <= h):
            raise ValueError(f"focus ({x:g}, {y:g}) lies outside the {w}x{h} photo")
        point = (x, y)
    return Regions(boxes, point)


def union(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])


def kept_share(crops: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """[N, M] share of object m's box inside crop n."""
    if len(objects) == 0:
        return np.zeros((len(crops), 0))
    c, o = np.asarray(crops, np.float64)[:, None], np.asarray(objects, np.float64)[None]
    iw = (np.minimum(c[..., 2], o[..., 2]) - np.maximum(c[..., 0], o[..., 0])).clip(min=0)
    ih = (np.minimum(c[..., 3], o[..., 3]) - np.maximum(c[..., 1], o[..., 1])).clip(min=0)
    return iw * ih / ((o[..., 2] - o[..., 0]) * (o[..., 3] - o[..., 1])).clip(min=1e-6)


def mass_kept(crops: np.ndarray, saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N] share of the saliency map's mass inside each crop (boxes in pixels of a ``size`` photo; the
    map covers the whole photo at its own resolution), from an integral image of the map at 4x, the
    resolution the proposer reads its salient regions at."""
    up = upsampled(saliency).astype(np.float64)
    total = up.sum()
    if len(crops) == 0 or total <= 0:
        return np.ones(len(crops))
    ii = np.pad(up.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = up.shape
    c = np.asarray(crops, np.float64)
    x1, x2 = (np.clip(np.round(c[:, k] * w / size[0]), 0, w).astype(int) for k in (0, 2))
    y1, y2 = (np.clip(np.round(c[:, k] * h / size[1]), 0, h).astype(int) for k in (1, 3))
    return (ii[y2, x2] - ii[y1, x2] - ii[y2, x1] + ii[y1, x1]) / total


def by_prominence(faces: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of ``faces`` [F, 4] from the most prominent (area x detector confidence) down, ties in order."""
    area = (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])
    return np.argsort(-(area * scores), kind="stable")


def head_and_shoulders(face: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The region a portrait keeps with a face: a face width either side, half a face above, one below."""
    x1, y1, x2, y2 = (float(v) for v in face)
    fw, fh = x2 - x1, y2 - y1
    return np.float32([max(0, x1 - fw), max(0, y1 - 0.5 * fh), min(size[0], x2 + fw), min(size[1], y2 + fh)])


@dataclass(frozen=True)
class Subjects:
    """A photo's proposals as the policy reads them: faces ranked by prominence, the rest in order."""

    faces: np.ndarray  # [F, 4] protected faces, most prominent first
    minor_faces: np.ndarray  # [G, 4] faces much smaller than the most prominent one (not protected)
    others: np.ndarray  # [P, 4] the other protected boxes, in protection order

    @classmethod
    def of(cls, found: Proposals, size: tuple[int, int], protected_objects: int, face_share: float = FACE_SHARE) -> Subjects:
        boxes = np.asarray(found.boxes, np.float32).reshape(-1, 4)
        kinds = found.kinds if found.kinds else ("object",) * len(boxes)
        conf = np.ones(len(boxes), np.float32) if found.confidence is None else np.asarray(found.confidence, np.float32)
        is_face = np.array([k == FACE for k in kinds], bool)
        order = by_prominence(boxes[is_face], conf[is_face])
        faces = boxes[is_face][order]
        area = (faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])
        major = area >= face_share * area[0] if len(faces) else np.zeros(0, bool)
        rest = [b for b, k in zip(boxes, kinds) if k != FACE][:protected_objects]
        grown = [head_and_shoulders(faces[0], size)] if len(faces) else []
        others = np.asarray(grown + rest, np.float32).reshape(-1, 4)
        return cls(faces[major], faces[~major], others)

    @property
    def protected(self) -> np.ndarray:
        return np.concatenate([self.faces, self.others])

    def anchors(self) -> np.ndarray:
        """At most four boxes to centre extra candidates on (each costs one candidate per scale and
        ratio): the most prominent face, the union of the protected faces, the first other protected
        box, and the union of all of them."""
        out = []
        if len(self.faces):
            out += [self.faces[:1], union(self.faces)[None]]
        if len(self.others):
            out += [self.others[:1], union(self.protected)[None]]
        return np.concatenate(out).reshape(-1, 4).astype(np.float32) if out else np.zeros((0, 4), np.float32)


@dataclass(frozen=True)
class Policy:
    integrity_margin: float = 0.1
    saliency_weight: float = SALIENCY_WEIGHT

    def admissible(self, boxes: np.ndarray, subjects: Subjects, regions: Regions = Regions()) -> np.ndarray:
        """[N] bool: the candidates the choice may take at all, whatever their scores: holding the focus
        point, the caller's boxes whole, then each face whole (or, where none can, left out cleanly)."""
        ok = np.ones(len(boxes), bool)
        if regions.focus is not None:
            fx, fy = regions.focus
            inside = (boxes[:, 0] <= fx) & (fx <= boxes[:, 2]) & (boxes[:, 1] <= fy) & (fy <= boxes[:, 3])
            ok = inside if inside.any() else ok
        for share in kept_share(boxes, regions.keep).T:  # the caller's boxes, in the order given: all of each
            best = share[ok].max(initial=0)
            ok &= share >= min(best, KEEP_EXACT)
        for share in kept_share(boxes, subjects.faces).T:  # faces, most prominent first
            if (ok & (share >= KEEP_WHOLE)).any():
                ok &= share >= KEEP_WHOLE
            elif (ok & (share <= DROPPED)).any():
                ok &= share <= DROPPED  # left out cleanly, not sliced
        return ok

    def pick(self, boxes: np.ndarray, s: np.ndarray, subjects: Subjects, mass: np.ndarray | None = None,
             regions: Regions = Regions()) -> int:
        """The index of the chosen candidate among ``boxes`` [N, 4] with learned scores ``s`` [N]: the
        admissible ones; of those within ``integrity_margin`` of the best score, the ones losing the
        fewest other protected boxes; of those, the best score plus the saliency it keeps."""
        ok = self.admissible(boxes, subjects, regions)
        other_kept = kept_share(boxes, subjects.others)
        judged = [m for m in range(other_kept.shape[1]) if (ok & (other_kept[:, m] >= KEEP_WHOLE)).any()]
        near = ok & (s >= s[ok].max() - self.integrity_margin)
        o = other_kept[:, judged]
        lost = 2 * ((o > DROPPED) & (o < KEEP_WHOLE)).sum(1) + (o <= DROPPED).sum(1)
        chosen = near & (lost == lost[near].min())  # near always holds the best remaining candidate
        total = s if mass is None else s + self.saliency_weight * mass
        return int(np.argmax(np.where(chosen, total, -np.inf)))

    def choose(self, ratio: str | None, boxes: np.ndarray, s: np.ndarray, subjects: Subjects,
               mass: np.ndarray | None = None, regions: Regions = Regions()) -> Crop:
        """The crop of ``ratio`` among ``boxes`` [N, 4] with learned scores ``s`` [N] (``pick``), with
        what it cuts and drops of the protected boxes."""
        j = self.pick(boxes, s, subjects, mass, regions)
        reported = subjects.others[1:] if len(subjects.faces) else subjects.others  # not the grown head region
        protected = np.concatenate([regions.keep, subjects.faces, reported])
        kept = kept_share(boxes[j : j + 1], protected)[0]
        as_box = lambda b: tuple(int(round(v)) for v in b)  # noqa: E731
        return Crop(ratio=ratio, box=tuple(int(v) for v in boxes[j]), score=float(s[j]),
                    cut_objects=[as_box(b) for b, k in zip(protected, kept) if DROPPED < k < KEEP_WHOLE],
                    dropped_objects=[as_box(b) for b, k in zip(protected, kept) if k <= DROPPED],
                    kept_faces=int((kept_share(boxes[j : j + 1], subjects.faces)[0] >= KEEP_WHOLE).sum()),
                    faces=len(subjects.faces), saliency_kept=None if mass is None else round(float(mass[j]), 4))


def focal_point_and_safe_box(size: tuple[int, int], subjects: Subjects, regions: Regions,
                             saliency: np.ndarray | None) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """The photo's focal point and safe box. The safe box is the smallest box holding the caller's keep
    boxes and focus, and the protected faces; without any, the first protected box (a person, the
    main object); None when there is nothing to protect. The focal point is the caller's focus, else
    the centre of the most prominent face, else of the safe box, else the saliency map's centre of
    mass, else the photo's centre."""
    w, h = size
    must = [regions.keep, subjects.faces]
    if regions.focus is not None:
        must.append(np.float32([[*regions.focus, *regions.focus]]))
    must = np.concatenate(must)
    if not len(must) and len(subjects.others) > (1 if len(subjects.faces) else 0):
        must = subjects.others[:1]
    safe = None if not len(must) else tuple(int(round(v)) for v in union(must))
    if regions.focus is not None:
        point = regions.focus
    elif len(subjects.faces):
        f = subjects.faces[0]
        point = ((f[0] + f[2]) / 2, (f[1] + f[3]) / 2)
    elif safe is not None:
        point = ((safe[0] + safe[2]) / 2, (safe[1] + safe[3]) / 2)
    elif saliency is not None and float(np.sum(saliency)) > 0:
        sal = np.asarray(saliency, np.float64)
        ys, xs = np.mgrid[0 : sal.shape[0], 0 : sal.shape[1]]
        point = ((xs * sal).sum() / sal.sum() + 0.5) * w / sal.shape[1], ((ys * sal).sum() / sal.sum() + 0.5) * h / sal.shape[0]
    else:
        point = (w / 2, h / 2)
    return (int(round(min(max(point[0], 0), w))), int(round(min(max(point[1], 0), h)))), safe


__all__ = ["Crop", "Policy", "Regions", "Subjects", "caller_regions", "focal_point_and_safe_box", "kept_share", "mass_kept",
           "KEEP_WHOLE", "DROPPED"]
