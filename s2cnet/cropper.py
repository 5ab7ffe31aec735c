"""The public API: score candidate crops and choose the best crop per aspect ratio.

    from s2cnet import Cropper
    cropper = Cropper.from_pretrained()
    scores = cropper.score(image, boxes, objects=None)
    crops = cropper.crop(image, ratios=["1:1", "16:9"])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps

from s2cnet.backbone import BackboneMaps
from s2cnet.candidates import GridConfig, anchored_candidates, anchored_free_candidates, candidates, canonical_ratio, unique_rows
from s2cnet.checkpoint import load_checkpoint, weights_version
from s2cnet.choice import (
    SALIENCY_WEIGHT,
    Crop,
    Policy,
    Regions,
    Subjects,
    by_prominence,
    caller_regions,
    focal_point_and_safe_box,
    mass_kept,
)
from s2cnet.faces import FaceBoxes, FaceDetectorFn, as_face_detector, default_face_detector
from s2cnet.image_stage import decode, faces_in, for_model, image_stage
from s2cnet.imageio import DEFAULT_MAX_PIXELS, LoadedImage
from s2cnet.model import S2CNet
from s2cnet.proposals import FACE, OBJECT, POSSIBLE_FACE, Proposals, Proposer, as_proposer
from s2cnet.transforms import hflip_boxes, mirror_first, model_input

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "s2cnet.pt"
DEFAULT_SHORT_SIDE = 256  # the model's input short side (GAIC's): photos are decoded no larger than it needs
MAX_NODES = 10  # object nodes per photo: the graph's size (faces first, then the proposer's other boxes)
DEFAULT_REFINE = 8  # graph-scored candidates per ratio in the coarse-to-fine path (benchmarks/bench_coarse.py)
MAX_REFINE_ROUNDS = 8  # extra graph calls per ratio while the policy's pick carries a coarse score


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
    image-only stage running on the worker thread (``prepared``: the proposer's; ``faces``: the face
    detector's, or the faces the photo arrived with)."""

    boxes: np.ndarray | None = None
    prepared: Future | None = None
    faces: Future | FaceBoxes | None = None


class Cropper:
    def __init__(self, model: S2CNet, proposer: Proposer | Callable | None = None, short_side: int = DEFAULT_SHORT_SIDE,
                 grid: GridConfig = GridConfig(),
                 model_version: str = "untrained", integrity_margin: float = 0.1, protected_objects: int = 3,
                 saliency_weight: float = SALIENCY_WEIGHT,
                 bf16: bool | None = None, backbone_batch: int = 1, mirror_consistent: bool = False,
                 graph_chunk: int | None = 64, face_detector: FaceDetectorFn | None = None,
                 refine: int | None = DEFAULT_REFINE, bf16_backbone: bool | None = None) -> None:
        self.model = inference_copy(model)
        self.proposer = as_proposer(proposer)
        # Faces from a dedicated detector (``s2cnet.faces``: any image -> (boxes, scores) callable), run
        # on a decode large enough for it, on the worker thread; they replace the proposer's faces.
        self.face_detector = as_face_detector(face_detector)
        self.device = torch.device("cpu")
        self._pool: ThreadPoolExecutor | None = None  # one worker: face detection beside the backbone
        # The graph head's large matmuls in bfloat16 where the CPU has native bf16 (AVX512-BF16/AMX):
        # 85 against 92 ms a photo on the 2-core machine, ranking unchanged on GAICD (docs/experiments.md);
        # None picks it from the hardware.
        self.bf16 = native_bf16() if bf16 is None else bf16
        # The backbone in bfloat16 too (None: as ``bf16``): 10 against 16 ms a photo here, GAICD test
        # SRCC 0.7732 either way (docs/experiments.md); False is the float path.
        self.bf16_backbone = self.bf16 if bf16_backbone is None else bf16_backbone
        self.short_side = short_side
        self.grid = grid
        self.model_version = model_version
        # The crop policy (``s2cnet.choice``): the caller's regions, then faces by prominence, then within
        # ``integrity_margin`` of the best score the fewest of the first ``protected_objects`` other boxes lost.
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
        # Coarse-to-fine: with a coarse readout in the weights, the graph head scores only each ratio's
        # ``refine`` best admissible candidates by the coarse score (and the policy's pick, until it is
        # graph-scored); None: every candidate through the graph. ``score`` always takes the full path.
        if refine is not None and refine < 1:
            raise ValueError(f"refine must be a positive number of candidates or None, got {refine!r}")
        self.refine = refine

    def to(self, device: str | torch.device) -> Cropper:
        """Moves the scorer (and a proposer that reads its features) to ``device``, e.g. "cuda". Photos
        are still decoded on the CPU; scores and boxes come back as NumPy arrays."""
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from e
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
        self.model.to(device)
        if hasattr(self.proposer, "to"):
            self.proposer.to(device)
        if device.type != "cpu" and self.bf16 and not native_bf16():
            self.bf16 = self.bf16_backbone = False  # the bf16 default was the CPU's choice
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
                        face_detector="default", **kwargs) -> Cropper:
        """Loads the committed weights (or ``path``); ``proposer=None`` disables object proposals (and
        faces); ``face_detector``: "default" (``s2cnet.faces.LibFaceDetection``), None (faces from the
        subject heads alone), or any image -> (boxes, scores) callable; ``device`` ("cuda", ...) moves
        the scorer there (default: the CPU)."""
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        model, ck = load_checkpoint(path)  # FileNotFoundError, or ValueError for what is not S2CNet weights
        version = weights_version(path)
        if proposer == "default":
            from s2cnet.proposals import default_proposer

            proposer = default_proposer(head_state=ck.get("saliency_head"), subject_state=ck.get("subject_heads"))
        if face_detector == "default":
            face_detector = default_face_detector() if proposer is not None else None
        cropper = cls(model, proposer=proposer, model_version=version, face_detector=face_detector, **kwargs)
        return cropper.to(device) if device else cropper

    @property
    def policy(self) -> Policy:
        return Policy(self.integrity_margin, self.saliency_weight)

    # -- internals -------------------------------------------------------------------------------
    def _load(self, src) -> LoadedImage:
        """Decoded as every entry point decodes (``s2cnet.image_stage``): large enough for the face
        detector, JPEG draft mode; boxes stay in full-size pixels; a LoadedImage keeps its faces."""
        return decode(src, self.short_side, self.face_detector)

    def image_stage(self, src, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
        """Decode, faces and model-size pixels in one call, for callers that run the image-only stage
        apart from the model (the service's request path); the result is taken as it is by ``crop``."""
        return image_stage(src, self.short_side, self.face_detector, max_pixels)

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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16_backbone):
            maps = self.model.backbone.pyramid(x)
            feat = self.model.backbone.reduce(maps.fused)
        if self.bf16_backbone:  # the heads and the aligns read float32
            maps, feat = BackboneMaps(*(m.float() for m in maps)), feat.float()
        # RoI/RoDAlign want a contiguous map: converting once here saves a copy per align call
        return feat.contiguous(), maps

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

    def _start_objects(self, detail: LoadedImage, loaded: LoadedImage, objects) -> PendingObjects:
        """Given objects (or none, without a proposer) as they are; else starts the image-only stage on
        the worker thread: the face detector on the large decode ``detail``, the proposer's own stage
        on the model-size ``loaded``."""
        if objects is not None or self.proposer is None:
            boxes = np.zeros((0, 4), np.float32) if objects is None else finite_boxes(objects, "objects")
            return PendingObjects(boxes=boxes)
        if self._pool is None:
            # the worker keeps to the caller's torch threads: a new thread would otherwise start OpenMP
            # teams of one thread per core, whose spinning halved photos/s with every core busy
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="s2cnet-proposals",
                                            initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),))
        faces = detail.faces
        if faces is None and self.face_detector is not None:
            faces = self._pool.submit(faces_in, self.face_detector, detail)
        return PendingObjects(prepared=self._pool.submit(self.proposer.prepare, loaded.image), faces=faces)

    def _finish_objects(self, loaded: LoadedImage, pending: PendingObjects, maps: BackboneMaps) -> Proposals:
        """Object boxes in full-size pixels, what each one is and how sure: the detector's faces (most
        prominent first), then the proposer's other boxes; given boxes are plain objects."""
        if pending.boxes is not None:
            return Proposals(pending.boxes, (OBJECT,) * len(pending.boxes))
        found = self.proposer.propose(loaded.image, pending.prepared.result(),
                                      maps if self.proposer.shares_backbone else None)
        boxes, kinds, saliency, conf = (found if isinstance(found, Proposals) else Proposals(found, None))
        sx, sy = loaded.scale
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
        kinds = tuple(kinds) if kinds is not None else (OBJECT,) * len(boxes)
        conf = np.ones(len(boxes), np.float32) if conf is None else np.asarray(conf, np.float32)
        if pending.faces is None:
            return Proposals(boxes, kinds, saliency, conf)
        faces, scores = pending.faces.result() if isinstance(pending.faces, Future) else pending.faces
        order = by_prominence(faces, scores)
        rest = [i for i, k in enumerate(kinds) if k not in (FACE, POSSIBLE_FACE)]
        faces, scores = faces[order][:MAX_NODES], scores[order][:MAX_NODES]
        rest = rest[: MAX_NODES - len(faces)]
        return Proposals(np.concatenate([faces, boxes[rest]]).astype(np.float32),
                         (FACE,) * len(faces) + tuple(kinds[i] for i in rest), saliency,
                         np.concatenate([scores, conf[rest]]).astype(np.float32))

    def _oriented(self, loaded: LoadedImage) -> tuple[LoadedImage, bool]:
        """The photo in the orientation every choice is made in (``transforms.mirror_first``), and
        whether that is its mirror; results are mirrored back, so callers never see it."""
        if not self.mirror_consistent or not mirror_first(for_model(loaded, self.short_side).image):
            return loaded, False
        faces = loaded.faces
        if faces is not None:
            faces = (hflip_boxes(faces[0], loaded.original_size[0]), faces[1])
        return LoadedImage(ImageOps.mirror(loaded.image), loaded.original_size, loaded.format, faces), True

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}  # threads do not pickle; a copy starts its own

    @property
    def coarse_to_fine(self) -> bool:
        """Whether crops take the coarse-to-fine path (a coarse readout in the weights and ``refine`` set)."""
        return self.refine is not None and self.model.coarse is not None

    @torch.no_grad()
    def _score_candidates(self, feat: torch.Tensor, scale: np.ndarray, per_ratio: list[np.ndarray], objects: np.ndarray,
                          masses: list[np.ndarray | None], subjects: Subjects,
                          regions: Regions) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every candidate's score per ratio, and which of them the graph head scored. Coarse-to-fine: the
        coarse readout ranks all of them (on the full score's scale), the graph head scores each ratio's
        ``refine`` best admissible ones, then whichever candidate the policy would pick, until its pick
        is graph-scored (after ``MAX_REFINE_ROUNDS``, every admissible one); the rest keep their coarse
        score. The pick is therefore always graph-scored."""
        boxes = np.concatenate(per_ratio)
        cuts = np.cumsum([len(b) for b in per_ratio])[:-1]
        if not self.coarse_to_fine:
            return np.split(self._score(feat, scale, boxes, objects), cuts), [np.ones(len(b), bool) for b in per_ratio]
        h, w = float(feat.shape[-2] * 16), float(feat.shape[-1] * 16)
        crops_t = torch.from_numpy(np.asarray(boxes, np.float32) * scale).to(self.device)
        objs_t = torch.from_numpy(objects * scale).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            tokens = self.model.crop_tokens(feat, crops_t, w, h)
            objs_t, obj_tokens = self.model.object_tokens(feat, objs_t, w, h)  # once for every graph call

            def graph(idx: np.ndarray) -> np.ndarray:
                index = torch.from_numpy(idx).to(self.device)
                return self.model.score_tokens(feat, tokens[index], crops_t[index], objs_t, w, h,
                                               self.graph_chunk, obj_tokens).float().cpu().numpy()

            scores = self.model.coarse_scores(tokens).float().cpu().numpy()
            refined = np.zeros(len(boxes), bool)

            def refine(idx: np.ndarray) -> None:
                idx = np.unique(idx[~refined[idx]])
                if len(idx):
                    scores[idx], refined[idx] = graph(idx), True

            policy, starts = self.policy, np.concatenate([[0], cuts])
            front = []
            for start, b, m in zip(starts, per_ratio, masses):
                ok = policy.admissible(b, subjects, regions)
                total = scores[start : start + len(b)] + (0 if m is None else self.saliency_weight * m)
                front.append(start + np.argsort(np.where(ok, -total, np.inf), kind="stable")[: self.refine])
            refine(np.concatenate(front))  # one graph call for every ratio's front-runners
            for start, b, m in zip(starts, per_ratio, masses):
                for _ in range(MAX_REFINE_ROUNDS):
                    j = start + policy.pick(b, scores[start : start + len(b)], subjects, m, regions)
                    if refined[j]:
                        break
                    refine(np.array([j]))
                else:  # the coarse score misleads on this photo: every admissible candidate through the graph
                    refine(start + np.flatnonzero(policy.admissible(b, subjects, regions)))
        return np.split(scores, cuts), np.split(refined, cuts)

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
        detail, mirrored = self._oriented(self._load(image))
        if len(boxes) == 0:
            return np.zeros(0, np.float32)
        if mirrored:
            boxes = hflip_boxes(boxes, detail.original_size[0])
            objects = objects if objects is None else hflip_boxes(finite_boxes(objects, "objects"), detail.original_size[0])
        loaded = for_model(detail, self.short_side)
        started = self._start_objects(detail, loaded, objects)
        feat, maps, scale = self._features(loaded)
        return self._score(feat, scale, boxes, self._finish_objects(loaded, started, maps).boxes)

    def crop(self, image, ratios: str | Sequence[str] | None = None, objects=None, keep=None, focus=None) -> list[Crop]:
        """Best crop per ratio (one result per distinct ratio, in order of first mention; one "W:H"
        string is one ratio; ratios=None: the best free-ratio crop). ``keep``: boxes [K, 4] x1,y1,x2,y2
        in the photo's pixels to keep whole whenever a crop can (ranked above faces); ``focus``: a
        point (x, y) every crop must contain. The caller's image is never modified."""
        return self.analyse(image, ratios, objects, keep=keep, focus=focus).crops

    def crop_batch(self, images: Sequence, ratios: Sequence[str] | None = None, objects=None,
                   keep: Sequence | None = None, focus: Sequence | None = None) -> list[list[Crop]]:
        """One backbone pass per image serves every ratio; each image's result list follows ``ratios``.
        ``objects``, ``keep`` and ``focus``, when given, hold one entry (or None) per image.

        With ``backbone_batch`` > 1 (the default on CUDA) up to that many photos of the same input size
        share one backbone call; otherwise photos are pipelined: while one photo's backbone and scoring
        run, the worker thread runs the next photo's image-only stage (faces). Raises on the first
        unreadable image; callers that must not lose the rest (the pipeline, the service) call
        ``crop`` per image or catch ``ImageLoadError`` themselves.
        """
        images = list(images)  # any iterable of images (a generator too)
        per_image = lambda v: [None] * len(images) if v is None else list(v)  # noqa: E731
        given = [per_image(v) for v in (objects, keep, focus)]
        for name, v in zip(("objects", "keep", "focus"), given):
            if len(v) != len(images):
                raise ValueError(f"{name} holds {len(v)} entries for {len(images)} images")
        return [a.crops for a in self._analyses(images, ratios, *given)]

    def analyse(self, image, ratios: Sequence[str] | None = None, objects=None, keep=None, focus=None) -> Analysis:
        """Everything behind a crop decision: candidates and their scores per ratio, the object nodes."""
        return next(self._analyses([image], ratios, [objects], [keep], [focus]))

    def _analyses(self, images: Sequence, ratios: Sequence[str] | None, objects: list, keeps: list,
                  focuses: list) -> Iterator[Analysis]:
        if ratios is not None and not isinstance(ratios, str) and not isinstance(ratios, Iterable):
            raise ValueError(f"ratios must be a 'W:H' string, a sequence of them, or None; got {ratios!r}")
        keys = [None] if ratios is None else [ratios] if isinstance(ratios, str) else list(ratios)
        keys = list(dict.fromkeys(None if r is None else canonical_ratio(r) for r in keys))  # '8:6' -> '4:3', once each
        if not keys:
            raise ValueError("ratios is empty: give one or more 'W:H' strings, or None for a free-ratio crop")

        def begin(i: int):
            detail, mirrored = self._oriented(self._load(images[i]))
            w, h = detail.original_size
            regions = caller_regions((w, h), keeps[i], focuses[i])
            per_ratio = [candidates(w, h, r, self.grid) for r in keys]  # bad ratios fail before any model work
            given = objects[i]
            if mirrored:
                given = None if given is None else hflip_boxes(finite_boxes(given, "objects"), w)
                regions = regions.mirrored(w)
            loaded = for_model(detail, self.short_side)
            return loaded, mirrored, per_ratio, regions, self._start_objects(detail, loaded, given)

        def finish(loaded: LoadedImage, mirrored: bool, per_ratio: list[np.ndarray], regions: Regions,
                   started: PendingObjects, feat: torch.Tensor, maps: BackboneMaps, scale: np.ndarray) -> Analysis:
            found = self._finish_objects(loaded, started, maps)
            w, h = loaded.original_size
            subjects = Subjects.of(found, (w, h), self.protected_objects)
            anchors = np.concatenate([regions.anchors, subjects.anchors()])
            per_ratio = [unique_rows(np.concatenate([b, anchored_free_candidates(w, h, anchors, self.grid) if r is None
                                                     else anchored_candidates(w, h, r, anchors, self.grid)]))
                         for r, b in zip(keys, per_ratio)]
            boxes, cuts = np.concatenate(per_ratio), np.cumsum([len(b) for b in per_ratio])[:-1]
            # one integral image of the map serves every ratio's candidates
            saliency = found.saliency
            masses = [None] * len(keys) if saliency is None else np.split(mass_kept(boxes, saliency, (w, h)), cuts)
            per_scores, refined = self._score_candidates(feat, scale, per_ratio, found.boxes, masses, subjects, regions)
            crops = self._choose((w, h), keys, per_ratio, per_scores, masses, subjects, regions, saliency)
            analysis = Analysis(loaded.original_size, crops, dict(zip(keys, per_ratio)), dict(zip(keys, per_scores)),
                                found.boxes, found.kinds, regions, dict(zip(keys, refined)))
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
                # the next photo's image-only stage (faces) queues behind this one's, after the backbone:
                # started before it, it slowed the backbone more than it saved (docs/experiments.md)
                upcoming = begin(i + 1)
            yield finish(*begun, feat, maps, scale)

    def _choose(self, size: tuple[int, int], ratios: list[str | None], per_ratio: list[np.ndarray],
                per_scores: list[np.ndarray], masses: list[np.ndarray | None], subjects: Subjects, regions: Regions,
                saliency: np.ndarray | None) -> list[Crop]:
        """The policy's choice per ratio (``s2cnet.choice``), each crop carrying the photo's focal point
        and safe box (``size``: the full-size upright photo's)."""
        point, safe = focal_point_and_safe_box(size, subjects, regions, saliency)
        policy = self.policy
        return [replace(policy.choose(r, b, sc, subjects, m, regions), focal_point=point, safe_box=safe)
                for r, b, sc, m in zip(ratios, per_ratio, per_scores, masses)]


@dataclass
class Analysis:
    size: tuple[int, int]  # full-size upright (width, height)
    crops: list[Crop]  # the chosen crop per ratio
    candidates: dict  # ratio -> [N, 4] int boxes
    scores: dict  # ratio -> [N] scores (the graph head's where ``graph_scored``, else the coarse readout's)
    objects: np.ndarray  # [M, 4] object nodes used
    object_kinds: tuple[str, ...] = ()  # per object: "face", "person", "object" or "salient"
    regions: Regions = field(default_factory=Regions)  # the caller's keep boxes and focus point
    graph_scored: dict = field(default_factory=dict)  # ratio -> [N] bool: scored by the graph head (coarse-to-fine)

    def mirrored(self) -> Analysis:
        """The same analysis of the mirrored photo: every box mirrored, scores and choices unchanged."""
        w = self.size[0]
        flip = lambda boxes: hflip_boxes(np.asarray(boxes).reshape(-1, 4), w)  # noqa: E731
        as_tuples = lambda boxes: [tuple(int(v) for v in b) for b in flip(np.array(boxes, np.int64))]  # noqa: E731
        point = lambda p: None if p is None else (w - p[0], p[1])  # noqa: E731
        crops = [replace(c, box=as_tuples([c.box])[0], cut_objects=as_tuples(c.cut_objects),
                         dropped_objects=as_tuples(c.dropped_objects), focal_point=point(c.focal_point),
                         safe_box=None if c.safe_box is None else as_tuples([c.safe_box])[0]) for c in self.crops]
        return Analysis(self.size, crops, {r: flip(b) for r, b in self.candidates.items()}, self.scores,
                        flip(self.objects), self.object_kinds, self.regions.mirrored(w), self.graph_scored)
