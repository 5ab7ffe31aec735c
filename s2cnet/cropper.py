"""The public API: score candidate crops and choose the best crop per aspect ratio.

    from s2cnet import Cropper
    cropper = Cropper.from_pretrained()
    scores = cropper.score(image, boxes, objects=None)
    crops = cropper.crop(image, ratios=["1:1", "16:9"])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps

from s2cnet.backbone import BackboneMaps
from s2cnet.candidates import GridConfig, anchored_candidates, anchored_free_candidates, candidates, canonical_ratio, unique_rows
from s2cnet.checkpoint import load_checkpoint, weights_version
from s2cnet.imageio import LoadedImage, open_image
from s2cnet.model import S2CNet
from s2cnet.proposals import FACE, OBJECT, Proposals, Proposer, as_proposer, upsampled
from s2cnet.transforms import hflip_boxes, mirror_first, model_input

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "s2cnet.pt"
DEFAULT_SHORT_SIDE = 256  # the model's input short side (GAIC's): photos are decoded no larger than it needs
SALIENCY_WEIGHT = 2.0  # score units per share of the saliency mass kept, within the integrity margin (chosen on validation)


@dataclass
class Crop:
    ratio: str | None  # "W:H", or None for the free-ratio crop
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the upright image
    score: float
    cut_objects: list[tuple[int, int, int, int]] = field(default_factory=list)  # protected boxes the crop cuts through
    dropped_objects: list[tuple[int, int, int, int]] = field(default_factory=list)  # protected boxes it leaves out
    kept_faces: int = 0  # faces kept whole
    faces: int = 0  # faces found (that some candidate of this ratio could keep whole)
    saliency_kept: float | None = None  # share of the photo's saliency mass inside the crop (None: no saliency map)


def native_bf16() -> bool:
    """True when this CPU computes bfloat16 matmuls natively (else autocast would be slower)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_copy(model: S2CNet) -> S2CNet:
    """An eval copy for CPU inference: BatchNorm folded into the convs and a channels-last backbone,
    about twice as fast as the training layout; the caller's model is left untouched."""
    model = copy.deepcopy(model).eval()
    model.backbone.fold_batchnorm().to(memory_format=torch.channels_last)
    return model


MAX_COORDINATE = 1e6  # pixels; photos are at most 64 MP, so anything past this is a caller's bug


def finite_boxes(boxes, name: str) -> np.ndarray:
    """[N, 4] float32 x1,y1,x2,y2; NaN, inf or absurd coordinates are a ValueError, not a crash deep in
    RoIAlign (or a NaN score)."""
    try:
        arr = np.asarray(boxes, np.float64)
        arr = arr.reshape(-1, 4)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an [N, 4] array of x1, y1, x2, y2, got {np.shape(boxes)}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite coordinates")
    if np.abs(arr).max(initial=0) > MAX_COORDINATE:
        raise ValueError(f"{name} holds coordinates beyond {MAX_COORDINATE:.0e} pixels")
    return arr.astype(np.float32)


@dataclass
class PendingObjects:
    """A photo's object boxes on their way: known already (``boxes``, full-size pixels), or the
    proposer's image-only stage running on the worker thread (``prepared``)."""

    boxes: np.ndarray | None = None
    prepared: Future | None = None


class Cropper:
    def __init__(self, model: S2CNet, proposer: Proposer | Callable | None = None, short_side: int = DEFAULT_SHORT_SIDE,
                 grid: GridConfig = GridConfig(),
                 model_version: str = "untrained", integrity_margin: float = 0.1, protected_objects: int = 3,
                 saliency_weight: float = SALIENCY_WEIGHT,
                 bf16: bool | None = None, backbone_batch: int = 1, mirror_consistent: bool = False,
                 graph_chunk: int | None = 64) -> None:
        self.model = inference_copy(model)
        self.proposer = as_proposer(proposer)
        self.device = torch.device("cpu")
        self._pool: ThreadPoolExecutor | None = None  # one worker: face detection beside the backbone
        # The graph head's large matmuls in bfloat16 where the CPU has native bf16 (AVX512-BF16/AMX):
        # 85 against 92 ms a photo on the 2-core machine, ranking unchanged on GAICD (docs/experiments.md);
        # None picks it from the hardware.
        self.bf16 = native_bf16() if bf16 is None else bf16
        self.short_side = short_side
        self.grid = grid
        self.model_version = model_version
        # Faces are never cut or dropped when some candidate keeps them; then a crop within
        # ``integrity_margin`` of the best score that loses fewer of the first ``protected_objects``
        # other boxes (people, objects, salient regions) is preferred (see _choose).
        self.integrity_margin = integrity_margin
        self.saliency_weight = saliency_weight
        self.protected_objects = protected_objects
        # crop_batch: photos per backbone call. 1 on a CPU (no faster batched, and bit-exact with
        # crop); ``to("cuda")`` raises it to 8 unless set.
        self.backbone_batch = backbone_batch
        # candidates per graph-head call (S2CNet.score_crops: same scores); None: all at once, as on a GPU
        self.graph_chunk = graph_chunk
        # True: a photo and its mirror get mirrored crops (and the same scores for mirrored boxes), each
        # processed in one canonical orientation (_oriented). Off by default: the shipped scorer ranks
        # mirrored photos worse (GAICD validation SRCC 0.787 -> 0.781, Acc5 58.2 -> 55.4; README).
        self.mirror_consistent = mirror_consistent

    def to(self, device: str | torch.device) -> Cropper:
        """Moves the scorer (and a proposer that reads its features) to ``device``, e.g. "cuda". Photos
        are still decoded on the CPU; scores and boxes come back as NumPy arrays."""
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
        self.model.to(device)
        if hasattr(self.proposer, "to"):
            self.proposer.to(device)
        if device.type != "cpu" and self.bf16 and not native_bf16():
            self.bf16 = False  # the bf16 default was the CPU's choice
        self.device = device
        if device.type == "cuda":
            self.backbone_batch = 8 if self.backbone_batch == 1 else self.backbone_batch
            self.graph_chunk = None  # chunks exist for a CPU's cache; a GPU wants every candidate in one call
        return self

    UNTRAINED_VERSION = "untrained-seed0"

    @classmethod
    def untrained(cls, proposer=None, **kwargs) -> Cropper:
        """The one "random model" for development, demos and load tests: seeded, so every process that
        builds one scores alike; the compute (and latency) is the real model's, the crops are meaningless."""
        torch.manual_seed(0)
        return cls(S2CNet(), proposer=proposer, model_version=cls.UNTRAINED_VERSION, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, proposer="default", device: str | None = None,
                        **kwargs) -> Cropper:
        """Loads the committed weights (or ``path``); ``proposer=None`` disables object proposals;
        ``device`` ("cuda", "cuda:1", ...) moves it there (default: the CPU)."""
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"no S2CNet weights at {path}")
        model, ck = load_checkpoint(path)
        version = weights_version(path)
        if proposer == "default":
            from s2cnet.proposals import default_proposer

            proposer = default_proposer(head_state=ck.get("saliency_head"), subject_state=ck.get("subject_heads"))
        cropper = cls(model, proposer=proposer, model_version=version, **kwargs)
        return cropper.to(device) if device else cropper

    # -- internals -------------------------------------------------------------------------------
    def _load(self, src) -> LoadedImage:
        """Decode no larger than the model needs (JPEG draft mode); boxes stay in full-size pixels.
        An already decoded LoadedImage (e.g. the service's validation) keeps its full-size record; the
        loader reduces its pixels as it would an upload's (a no-op when they are small already)."""
        if isinstance(src, LoadedImage):
            return LoadedImage(open_image(src.image, target_short_side=self.short_side).image, src.original_size, src.format)
        return open_image(src, target_short_side=self.short_side)

    def _features(self, loaded: LoadedImage) -> tuple[torch.Tensor, BackboneMaps, np.ndarray]:
        """One backbone pass -> (reduced map for the crops, the maps a sharing proposer reads, scale
        from full-size pixels to model-input pixels)."""
        x, scale = model_input(loaded.image, loaded.original_size, self.short_side)
        feat, maps = self._backbone(x)
        return feat, maps, scale

    @torch.no_grad()
    def _backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, BackboneMaps]:
        """[B, 3, H, W] inputs of one size -> (reduced maps [B, C, H/16, W/16], backbone maps)."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        maps = self.model.backbone.pyramid(x)
        # RoI/RoDAlign want a contiguous map: converting once here saves a copy per align call
        return self.model.backbone.reduce(maps.fused).contiguous(), maps

    def _batched_features(self, loaded: list[LoadedImage]) -> list[tuple[torch.Tensor, BackboneMaps, np.ndarray]]:
        """``_features`` for several photos, photos of the same input size in one backbone call (on a
        GPU one call per photo leaves it mostly idle); equal to the per-photo results up to float
        rounding."""
        inputs = [model_input(x.image, x.original_size, self.short_side) for x in loaded]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (x, _) in enumerate(inputs):
            by_shape.setdefault(tuple(x.shape), []).append(i)
        out: list = [None] * len(loaded)
        for idx in by_shape.values():
            for start in range(0, len(idx), self.backbone_batch):
                part = idx[start : start + self.backbone_batch]
                feat, maps = self._backbone(torch.cat([inputs[i][0] for i in part]))
                for k, i in enumerate(part):
                    one = BackboneMaps(*(m[k : k + 1] for m in maps))
                    out[i] = (feat[k : k + 1], one, inputs[i][1])
        return out

    def _start_objects(self, loaded: LoadedImage, objects) -> PendingObjects:
        """Given objects (or none, without a proposer) as they are; else starts the proposer's
        image-only stage on the worker thread."""
        if objects is not None or self.proposer is None:
            boxes = np.zeros((0, 4), np.float32) if objects is None else finite_boxes(objects, "objects")
            return PendingObjects(boxes=boxes)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="s2cnet-proposals")
        return PendingObjects(prepared=self._pool.submit(self.proposer.prepare, loaded.image))

    def _finish_objects(self, loaded: LoadedImage, pending: PendingObjects, maps: BackboneMaps) -> Proposals:
        """Object boxes in full-size pixels, and what each one is (given boxes are plain objects)."""
        if pending.boxes is not None:
            return Proposals(pending.boxes, (OBJECT,) * len(pending.boxes))
        found = self.proposer.propose(loaded.image, pending.prepared.result(),
                                      maps if self.proposer.shares_backbone else None)
        boxes, kinds, saliency = found if isinstance(found, Proposals) else (found, None, None)
        sx, sy = loaded.scale
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
        return Proposals(boxes, tuple(kinds) if kinds is not None else (OBJECT,) * len(boxes), saliency)

    def _oriented(self, loaded: LoadedImage) -> tuple[LoadedImage, bool]:
        """The photo in the orientation every choice is made in (``transforms.mirror_first``), and
        whether that is its mirror; results are mirrored back, so callers never see it."""
        if not self.mirror_consistent or not mirror_first(loaded.image):
            return loaded, False
        return LoadedImage(ImageOps.mirror(loaded.image), loaded.original_size, loaded.format), True

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}  # threads do not pickle; a copy starts its own

    @torch.no_grad()
    def _score(self, feat: torch.Tensor, scale: np.ndarray, boxes: np.ndarray, objects: np.ndarray) -> np.ndarray:
        h, w = feat.shape[-2] * 16, feat.shape[-1] * 16
        crops_t = torch.from_numpy(np.asarray(boxes, np.float32) * scale).to(self.device)
        objs_t = torch.from_numpy(objects * scale).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model.score_crops(feat, crops_t, objs_t, float(w), float(h), self.graph_chunk).float().cpu().numpy()

    # -- public API -------------------------------------------------------------------------------
    def score(self, image, boxes, objects=None) -> np.ndarray:
        """Scores [N] (higher is better) for boxes [N, 4] x1,y1,x2,y2 in ``image``'s pixels.

        objects: [M, 4] boxes, an empty [0, 4] array for no object nodes, or None to propose them.
        """
        boxes = finite_boxes(boxes, "boxes")
        loaded, mirrored = self._oriented(self._load(image))
        if len(boxes) == 0:
            return np.zeros(0, np.float32)
        if mirrored:
            boxes = hflip_boxes(boxes, loaded.original_size[0])
            objects = objects if objects is None else hflip_boxes(finite_boxes(objects, "objects"), loaded.original_size[0])
        started = self._start_objects(loaded, objects)
        feat, maps, scale = self._features(loaded)
        return self._score(feat, scale, boxes, self._finish_objects(loaded, started, maps).boxes)

    def crop(self, image, ratios: str | Sequence[str] | None = None, objects=None) -> list[Crop]:
        """Best crop per ratio (one result per ratio, in order); one "W:H" string is one ratio;
        ratios=None: the best free-ratio crop. The caller's image is never modified."""
        return self.analyse(image, ratios, objects).crops

    def crop_batch(self, images: Sequence, ratios: Sequence[str] | None = None, objects=None) -> list[list[Crop]]:
        """One backbone pass per image serves every ratio; each image's result list follows ``ratios``.

        With ``backbone_batch`` > 1 (the default on CUDA) up to that many photos of the same input size
        share one backbone call; otherwise photos are pipelined: while one photo's backbone and scoring
        run, the worker thread runs the next photo's image-only proposer stage. Raises on the first
        unreadable image; callers that must not lose the rest (the pipeline, the service) call
        ``crop`` per image or catch ``ImageLoadError`` themselves.
        """
        per_image = [None] * len(images) if objects is None else list(objects)
        return [a.crops for a in self._analyses(images, ratios, per_image)]

    def analyse(self, image, ratios: Sequence[str] | None = None, objects=None) -> Analysis:
        """Everything behind a crop decision: candidates and their scores per ratio, the object nodes."""
        return next(self._analyses([image], ratios, [objects]))

    def _analyses(self, images: Sequence, ratios: Sequence[str] | None, objects: list) -> Iterator[Analysis]:
        keys = [None] if ratios is None else [ratios] if isinstance(ratios, str) else list(ratios)
        keys = [None if r is None else canonical_ratio(r) for r in keys]  # Crop.ratio: '8:6' -> '4:3'
        if not keys:
            raise ValueError("ratios is empty: give one or more 'W:H' strings, or None for a free-ratio crop")

        def begin(i: int) -> tuple[LoadedImage, bool, list[np.ndarray], PendingObjects]:
            loaded, mirrored = self._oriented(self._load(images[i]))
            w, h = loaded.original_size
            per_ratio = [candidates(w, h, r, self.grid) for r in keys]  # bad ratios fail before any model work
            given = objects[i]
            if mirrored and given is not None:
                given = hflip_boxes(finite_boxes(given, "objects"), w)
            return loaded, mirrored, per_ratio, self._start_objects(loaded, given)

        def finish(loaded: LoadedImage, mirrored: bool, per_ratio: list[np.ndarray], started: PendingObjects,
                   feat: torch.Tensor, maps: BackboneMaps, scale: np.ndarray) -> Analysis:
            objs, kinds, saliency = self._finish_objects(loaded, started, maps)
            w, h = loaded.original_size
            anchors = subject_anchors(objs, kinds, self.protected_objects)
            per_ratio = [unique_rows(np.concatenate([b, anchored_free_candidates(w, h, anchors, self.grid) if r is None
                                                     else anchored_candidates(w, h, r, anchors, self.grid)]))
                         for r, b in zip(keys, per_ratio)]
            boxes, cuts = np.concatenate(per_ratio), np.cumsum([len(b) for b in per_ratio])[:-1]
            per_scores = np.split(self._score(feat, scale, boxes, objs), cuts)
            # one integral image of the map serves every ratio's candidates
            masses = [None] * len(keys) if saliency is None else np.split(mass_kept(boxes, saliency, (w, h)), cuts)
            crops = [self._choose(r, b, sc, objs, kinds, m) for r, b, sc, m in zip(keys, per_ratio, per_scores, masses)]
            analysis = Analysis(loaded.original_size, crops, dict(zip(keys, per_ratio)), dict(zip(keys, per_scores)), objs, kinds)
            return analysis.mirrored() if mirrored else analysis

        if self.backbone_batch > 1 and len(images) > 1:
            for first in range(0, len(images), self.backbone_batch):
                begun = [begin(i) for i in range(first, min(first + self.backbone_batch, len(images)))]
                features = self._batched_features([b[0] for b in begun])
                for b, f in zip(begun, features):
                    yield finish(*b, *f)
            return
        upcoming = begin(0) if len(images) else None
        for i in range(len(images)):
            begun = upcoming
            feat, maps, scale = self._features(begun[0])
            if i + 1 < len(images):
                upcoming = begin(i + 1)  # queues the next photo's faces behind this one's
            yield finish(*begun, feat, maps, scale)

    def _choose(self, ratio: str | None, boxes: np.ndarray, s: np.ndarray, objs: np.ndarray,
                kinds: tuple[str, ...] | None = None, mass: np.ndarray | None = None) -> Crop:
        """The explicit choice, in three steps:

        1. Faces: among the candidates that keep the most faces whole (counting only faces some
           candidate keeps whole), so a face is never cut or dropped when another crop keeps it.
        2. Other protected objects (the first ``protected_objects`` people, objects and salient
           regions): within ``integrity_margin`` of the best score left, the fewest lost (cut or
           dropped, counting only objects some remaining candidate keeps whole).
        3. Among those, the best of score + ``saliency_weight`` x the share of the saliency mass kept
           (``mass``, when the proposer has a saliency map).
        """
        kinds = kinds if kinds is not None else (OBJECT,) * len(objs)
        kept = kept_share(boxes, objs)  # [N, M]
        whole = kept >= KEEP_WHOLE
        faces = [m for m, k in enumerate(kinds) if k == FACE]
        first_others = [m for m, k in enumerate(kinds) if k != FACE][: self.protected_objects]
        face_idx = [m for m in faces if whole[:, m].any()]
        faces_kept = whole[:, face_idx].sum(1)
        eligible = faces_kept == faces_kept.max(initial=0)
        others = [m for m in first_others if whole[eligible, m].any()]
        near = eligible & (s >= s[eligible].max() - self.integrity_margin)
        lost = (~whole[:, others]).sum(1)
        chosen = near & (lost == lost[near].min())  # near always holds the best eligible candidate
        total = s if mass is None else s + self.saliency_weight * mass
        j = int(np.argmax(np.where(chosen, total, -np.inf)))
        protected = faces + first_others
        as_box = lambda m: tuple(int(round(v)) for v in objs[m])  # noqa: E731
        cut = [as_box(m) for m in protected if DROPPED < kept[j, m] < KEEP_WHOLE]
        dropped = [as_box(m) for m in protected if kept[j, m] <= DROPPED]
        return Crop(ratio=ratio, box=tuple(int(v) for v in boxes[j]), score=float(s[j]), cut_objects=cut,
                    dropped_objects=dropped, kept_faces=int(faces_kept[j]), faces=len(face_idx),
                    saliency_kept=None if mass is None else round(float(mass[j]), 4))


@dataclass
class Analysis:
    size: tuple[int, int]  # full-size upright (width, height)
    crops: list[Crop]  # the chosen crop per ratio
    candidates: dict  # ratio -> [N, 4] int boxes
    scores: dict  # ratio -> [N] scores
    objects: np.ndarray  # [M, 4] object nodes used
    object_kinds: tuple[str, ...] = ()  # per object: "face", "person", "object" or "salient"

    def mirrored(self) -> Analysis:
        """The same analysis of the mirrored photo: every box mirrored, scores and choices unchanged."""
        w = self.size[0]
        flip = lambda boxes: hflip_boxes(np.asarray(boxes).reshape(-1, 4), w)  # noqa: E731
        as_tuples = lambda boxes: [tuple(int(v) for v in b) for b in flip(np.array(boxes, np.int64))]  # noqa: E731
        crops = [replace(c, box=as_tuples([c.box])[0], cut_objects=as_tuples(c.cut_objects),
                         dropped_objects=as_tuples(c.dropped_objects)) for c in self.crops]
        return Analysis(self.size, crops, {r: flip(b) for r, b in self.candidates.items()}, self.scores,
                        flip(self.objects), self.object_kinds)


KEEP_WHOLE, DROPPED = 0.9, 0.1  # an object is kept whole at >= 90% inside the crop, dropped at <= 10%


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


def kept_share(crops: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """[N, M] share of object m's box inside crop n."""
    if len(objects) == 0:
        return np.zeros((len(crops), 0))
    c, o = np.asarray(crops, np.float64)[:, None], np.asarray(objects, np.float64)[None]
    iw = (np.minimum(c[..., 2], o[..., 2]) - np.maximum(c[..., 0], o[..., 0])).clip(min=0)
    ih = (np.minimum(c[..., 3], o[..., 3]) - np.maximum(c[..., 1], o[..., 1])).clip(min=0)
    return iw * ih / ((o[..., 2] - o[..., 0]) * (o[..., 3] - o[..., 1])).clip(min=1e-6)


def subject_anchors(objs: np.ndarray, kinds: tuple[str, ...], protected: int) -> np.ndarray:
    """At most three boxes to centre extra candidates on (each costs one candidate per scale and
    ratio): the faces (their union), the first other protected box, and the union of all of them."""
    faces = objs[[k == FACE for k in kinds]] if len(objs) else objs
    others = objs[[k != FACE for k in kinds]][:protected] if len(objs) else objs
    union = lambda b: np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)])[None]  # noqa: E731
    out = [union(faces)] if len(faces) else []
    if len(others):
        out += [others[:1], union(np.concatenate([faces, others]))]
    return np.concatenate(out).reshape(-1, 4) if out else np.zeros((0, 4), np.float32)
