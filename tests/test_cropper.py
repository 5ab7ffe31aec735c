"""The public Cropper API on real photos (scikit-image's bundled samples): scores and exact-ratio crops.

Uses the committed weights through ``Cropper.from_pretrained()`` when they exist, else a seeded
random-weight model: every property checked here must hold for any weights.
"""

from __future__ import annotations

import pickle
import threading
from fractions import Fraction

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageOps
from scipy.stats import spearmanr

from s2cnet.candidates import candidates, canonical_ratio
from s2cnet.choice import kept_share
from s2cnet.cropper import DEFAULT_WEIGHTS, Cropper, native_bf16
from s2cnet.imageio import ImageLoadError, open_image
from s2cnet.model import S2CNet, S2CNetConfig
from s2cnet.proposals import Proposals, SaliencyProposer
from s2cnet.saliency import SaliencyHead
from s2cnet.transforms import hflip_boxes, resize_shape

RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:2", "4:5", "21:9"]


@pytest.fixture(scope="module")
def cropper() -> Cropper:
    if DEFAULT_WEIGHTS.exists():
        return Cropper.from_pretrained()
    torch.manual_seed(0)
    return Cropper(S2CNet(), proposer=None)


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "astronaut.jpg"
    Image.fromarray(skimage.data.astronaut()).save(path, quality=92)
    return str(path)


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea())  # 451 x 300: odd sizes test pixel exactness


NO_OBJECTS = np.zeros((0, 4), np.float32)


def test_score_shape_and_input_kinds(cropper: Cropper, astronaut: str) -> None:
    boxes = candidates(512, 512)
    scores = cropper.score(astronaut, boxes, objects=NO_OBJECTS)
    assert scores.shape == (len(boxes),) and np.isfinite(scores).all()
    assert np.ptp(scores) > 0  # different crops, different scores
    with open(astronaut, "rb") as f:
        data = f.read()
    np.testing.assert_allclose(cropper.score(data, boxes, objects=NO_OBJECTS), scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cropper.score(Image.open(astronaut), boxes, objects=NO_OBJECTS), scores,
                               rtol=1e-5, atol=1e-6)
    assert cropper.score(astronaut, np.zeros((0, 4)), objects=NO_OBJECTS).shape == (0,)


def test_objects_change_scores(cropper: Cropper, astronaut: str) -> None:
    if not cropper.model.cfg.use_graph:
        pytest.skip("the loaded model is the GAIC baseline (use_graph=False): objects are not used")
    boxes = candidates(512, 512)[:40]
    face, rocket = [170, 40, 290, 200], [350, 150, 460, 500]
    plain = cropper.score(astronaut, boxes, objects=NO_OBJECTS)
    given = cropper.score(astronaut, boxes, objects=np.array([face, rocket], np.float32))
    assert np.isfinite(given).all() and not np.allclose(plain, given, atol=1e-4)
    np.testing.assert_allclose(cropper.score(astronaut, boxes, objects=[face, rocket]), given, rtol=1e-6)


def test_boxes_are_in_the_images_own_pixels(cropper: Cropper, cat: Image.Image) -> None:
    """The same photo at twice the size, with boxes at twice the coordinates, scores the same."""
    boxes = candidates(*cat.size)
    small = cropper.score(cat, boxes, objects=NO_OBJECTS)
    big_img = cat.resize((cat.width * 2, cat.height * 2), Image.BICUBIC)
    big = cropper.score(big_img, boxes * 2, objects=NO_OBJECTS)
    # resampling the photo moves trained scores a little (measured 0.14 std), never like wrong boxes do
    assert np.corrcoef(small, big)[0, 1] > 0.99 and np.abs(small - big).max() < 0.25 * small.std()
    unscaled = cropper.score(big_img, boxes, objects=NO_OBJECTS)  # control: wrong coordinates score differently
    assert np.abs(small - unscaled).max() > 1.0 * small.std()


@pytest.mark.parametrize("size", [None, (97, 640), (1200, 180)])
def test_crop_per_ratio_is_exact_and_inside(cropper: Cropper, cat: Image.Image, size) -> None:
    image = cat if size is None else cat.resize(size, Image.BILINEAR)
    w, h = image.size
    crops = cropper.crop(image, ratios=RATIOS, objects=NO_OBJECTS)
    assert [c.ratio for c in crops] == [canonical_ratio(r) for r in RATIOS]  # reduced: 21:9 -> 7:3
    for c in crops:
        x1, y1, x2, y2 = c.box
        assert all(isinstance(v, int) for v in c.box)
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (c.ratio, c.box, (w, h))
        a, b = (int(t) for t in c.ratio.split(":"))
        assert Fraction(x2 - x1, y2 - y1) == Fraction(a, b), (c.ratio, c.box)
        assert np.isfinite(c.score)


def test_crop_score_is_the_boxs_score_and_near_the_best(cropper: Cropper, cat: Image.Image) -> None:
    crops = cropper.crop(cat, ratios=["1:1", "16:9"], objects=NO_OBJECTS)
    for c in crops:
        cand = candidates(*cat.size, c.ratio, cropper.grid)
        scores = cropper.score(cat, cand, objects=NO_OBJECTS)
        assert list(c.box) in cand.tolist()
        assert c.score == pytest.approx(float(cropper.score(cat, [c.box], objects=NO_OBJECTS)[0]), abs=1e-5)
        # without object boxes nothing can be cut, so the chosen crop is the best-scored candidate
        assert c.score == pytest.approx(float(scores.max()), abs=1e-5) and c.cut_objects == []


def test_free_crop_and_batch_agree_with_single(cropper: Cropper, cat: Image.Image, astronaut: str) -> None:
    (free,) = cropper.crop(cat, objects=NO_OBJECTS)
    x1, y1, x2, y2 = free.box
    assert free.ratio is None and 0 <= x1 < x2 <= cat.width and 0 <= y1 < y2 <= cat.height
    batch = cropper.crop_batch([cat, astronaut], ["1:1", "4:3"], objects=[NO_OBJECTS, NO_OBJECTS])
    assert len(batch) == 2 and [len(r) for r in batch] == [2, 2]
    single = cropper.crop(astronaut, ["1:1", "4:3"], objects=NO_OBJECTS)
    assert [c.box for c in batch[1]] == [c.box for c in single]
    assert [c.score for c in batch[1]] == pytest.approx([c.score for c in single], abs=1e-5)


def test_crop_rejects_bad_ratios_and_inputs(cropper: Cropper, cat: Image.Image) -> None:
    with pytest.raises(ValueError, match="W:H"):
        cropper.crop(cat, ratios=["16x9"], objects=NO_OBJECTS)
    with pytest.raises(ValueError, match="too small"):
        cropper.crop(cat.resize((15, 40)), ratios=["1:1", "16:9"], objects=NO_OBJECTS)  # 16 px wide needed
    with pytest.raises(ImageLoadError):
        cropper.crop(b"definitely not an image", ratios=["1:1"])


def test_crop_with_objects_stays_near_best_and_reports_cuts(cropper: Cropper, astronaut: str) -> None:
    """Object-aware choice may trade at most ``integrity_margin`` of score for cutting fewer objects."""
    face = [170, 40, 290, 200]
    for c in cropper.crop(astronaut, ratios=["16:9", "9:16", "1:1"], objects=[face]):
        cand = candidates(512, 512, c.ratio, cropper.grid)
        scores = cropper.score(astronaut, cand, objects=[face])
        assert c.score >= scores.max() - cropper.integrity_margin - 1e-5
        x1, y1, x2, y2 = c.box
        kept = max(0, min(x2, 290) - max(x1, 170)) * max(0, min(y2, 200) - max(y1, 40)) / (120 * 160)
        assert (c.cut_objects == [tuple(face)]) == (0.1 < kept < 0.9), (c.box, kept, c.cut_objects)


# -- the fast inference path: bf16 graph head, faces pipelined on a worker thread, pickling ------------

def test_bf16_scoring_keeps_the_ranking_and_fp32_readout(cropper: Cropper, cat: Image.Image) -> None:
    if not native_bf16():
        pytest.skip("this CPU has no native bfloat16 matmul (AVX512-BF16/AMX): the Cropper never enables bf16")
    fp32, bf16 = Cropper(cropper.model, bf16=False), Cropper(cropper.model, bf16=True)
    boxes = np.concatenate([candidates(*cat.size), candidates(*cat.size, "1:1"), candidates(*cat.size, "16:9")])
    boxes = np.unique(boxes, axis=0)  # a box offered for two ratios is one box
    objects = np.array([[100, 50, 250, 200], [300, 100, 420, 280]], np.float32)  # the graph path, not just RoI
    assert len(boxes) > 200
    s32, s16 = fp32.score(cat, boxes, objects), bf16.score(cat, boxes, objects)
    assert isinstance(s16, np.ndarray) and s16.dtype == np.float32 and s16.shape == (len(boxes),)
    assert not np.array_equal(s32, s16)  # control: bf16 really ran
    assert spearmanr(s32, s16)[0] > 0.99
    # fp32 readout: a bf16 readout would round scores onto ~8-bit mantissas and tie many candidates
    assert len(np.unique(s32)) == len(boxes)
    assert len(np.unique(s16)) >= 0.98 * len(boxes)
    a32, c16 = fp32.analyse(cat, RATIOS, objects), bf16.crop(cat, RATIOS, objects)
    assert sum(a.box == b.box for a, b in zip(a32.crops, c16)) >= len(RATIOS) - 1
    for b in c16:  # where the choice differs, it is a near tie in fp32
        cand, sc = a32.candidates[b.ratio].tolist(), a32.scores[b.ratio]
        assert sc[cand.index(list(b.box))] >= sc.max() - fp32.integrity_margin - 0.02


class FaceStageProposer:
    """A proposer with an image-only ``prepare`` stage (like faces) and a second stage that may read the
    Cropper's backbone maps. Its boxes depend on the image, so mixing up photos changes results."""

    def __init__(self, shares_backbone: bool) -> None:
        self._shares = shares_backbone
        self.prepare_threads: list[int] = []
        self.calls: list[tuple[tuple[int, int], np.ndarray, object]] = []

    @property
    def shares_backbone(self) -> bool:
        return self._shares

    def prepare(self, image: Image.Image) -> np.ndarray:
        self.prepare_threads.append(threading.get_ident())
        w, h = image.size
        return np.array([[0.1 * w, 0.15 * h, 0.45 * w, 0.6 * h]], np.float32)  # a "face"

    def propose(self, image: Image.Image, faces, maps) -> np.ndarray:
        assert faces is not None, "the Cropper must hand over prepare()'s result"
        shapes = None if maps is None else (tuple(maps.stride8.shape), tuple(maps.fused.shape))
        self.calls.append((image.size, faces.copy(), shapes))
        w, h = image.size
        return np.concatenate([faces, [[0.5 * w, 0.3 * h, 0.95 * w, 0.9 * h]]]).astype(np.float32)


@pytest.fixture(scope="module")
def three_photos(cat: Image.Image, astronaut: str) -> list:
    return [cat, astronaut, cat.resize((300, 420), Image.BILINEAR)]


@pytest.mark.parametrize("shares", [False, True], ids=["own-features", "shares-backbone"])
def test_crop_batch_pipelines_faces_and_equals_crop_per_image(cropper: Cropper, three_photos: list,
                                                                shares: bool) -> None:
    proposer = FaceStageProposer(shares)
    # the stand-in proposer finds the same place whatever the photo holds: keep photos as given
    c = Cropper(cropper.model, proposer=proposer, mirror_consistent=False)
    ratios = ["1:1", "16:9", "4:5"]
    batch = c.crop_batch(three_photos, ratios)
    assert len(proposer.prepare_threads) == 3
    assert threading.get_ident() not in proposer.prepare_threads  # faces ran beside the backbone
    # each photo's second stage got that photo's own faces (and backbone maps when shared), on the decoded
    # image (the JPEG is drafted to half size); the Cropper maps its boxes back to full-size pixels
    decoded = [open_image(p, target_short_side=c.short_side) for p in three_photos]
    assert [s for s, _, _ in proposer.calls] == [d.image.size for d in decoded]
    assert decoded[1].image.size != decoded[1].original_size  # control: draft mode is exercised
    for ((w, h), faces, maps), d in zip(proposer.calls, decoded):
        np.testing.assert_allclose(faces, [[0.1 * w, 0.15 * h, 0.45 * w, 0.6 * h]], rtol=1e-6)
        iw, ih = resize_shape(*d.original_size, c.short_side)
        assert maps == (((1, 32, ih // 8, iw // 8), (1, 448, ih // 16, iw // 16)) if shares else None)
    W0, H0 = decoded[1].original_size
    np.testing.assert_allclose(c.analyse(three_photos[1], ratios).objects[0], [0.1 * W0, 0.15 * H0, 0.45 * W0, 0.6 * H0],
                               rtol=1e-5)
    single = [c.crop(p, ratios) for p in three_photos]
    assert [[x.box for x in r] for r in batch] == [[x.box for x in r] for r in single]
    assert [[x.cut_objects for x in r] for r in batch] == [[x.cut_objects for x in r] for r in single]
    for rb, rs in zip(batch, single):
        assert [x.score for x in rb] == pytest.approx([x.score for x in rs], abs=1e-6)
    # the objects really took part: scores differ from scoring without any
    plain = Cropper(cropper.model, proposer=None).crop(three_photos[0], ratios)
    assert [x.score for x in plain] != pytest.approx([x.score for x in single[0]], abs=1e-4)


def test_crop_batch_with_a_saliency_head_sharing_the_backbone(cropper: Cropper, three_photos: list) -> None:
    torch.manual_seed(0)
    proposer = SaliencyProposer(SaliencyHead().eval(), max_objects=4)
    assert proposer.shares_backbone
    c = Cropper(cropper.model, proposer=proposer)
    ratios = ["1:1", "3:2"]
    batch = c.crop_batch(three_photos, ratios)
    analyses = [c.analyse(p, ratios) for p in three_photos]
    assert [[x.box for x in r] for r in batch] == [[x.box for x in a.crops] for a in analyses]
    for rb, a in zip(batch, analyses):
        assert [x.score for x in rb] == pytest.approx([x.score for x in a.crops], abs=1e-6)
    assert all(len(a.objects) >= 1 for a in analyses)
    for a in analyses:  # object boxes come back in each photo's own full-size pixels
        w, h = a.size
        assert (a.objects[:, [0, 2]] <= w + 1e-3).all() and (a.objects[:, [1, 3]] <= h + 1e-3).all()


def test_crop_batch_raises_on_an_unreadable_image(cropper: Cropper, cat: Image.Image) -> None:
    c = Cropper(cropper.model, proposer=FaceStageProposer(False))
    with pytest.raises(ImageLoadError):
        c.crop_batch([cat, b"not an image at all", cat], ["1:1"])
    with pytest.raises(ImageLoadError):
        c.crop_batch([b"\xff\xd8\xff truncated jpeg", cat], ["1:1"])
    assert c.crop_batch([], ["1:1"]) == []
    assert len(c.crop_batch([cat], ["1:1"])) == 1  # the worker pool survives the failures


def test_cropper_pickles_after_use(cropper: Cropper, cat: Image.Image) -> None:
    c = Cropper(cropper.model, proposer=FaceStageProposer(False))
    first = c.crop(cat, ["1:1", "16:9"])
    assert c._pool is not None  # the face worker was started
    copy = pickle.loads(pickle.dumps(c))
    assert copy._pool is None and c._pool is not None  # the copy drops the threads, the original keeps them
    again = copy.crop(cat, ["1:1", "16:9"])
    assert copy._pool is not None and copy._pool is not c._pool
    assert [x.box for x in again] == [x.box for x in first]
    assert [x.score for x in again] == pytest.approx([x.score for x in first], abs=1e-6)
    assert [x.box for x in c.crop(cat, ["1:1", "16:9"])] == [x.box for x in first]


def test_crop_never_modifies_the_callers_lazy_image(tmp_path) -> None:
    from PIL import Image as PILImage

    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)).save(path, quality=90)
    cropper = Cropper(S2CNet(S2CNetConfig(node_dim=64)), proposer=None)
    with PILImage.open(path) as img:
        first = cropper.crop(img, ["16:9", "1:1"])
        assert img.size == (1600, 1200) and img.mode == "RGB"
        second = cropper.crop(img, ["16:9", "1:1"])
        assert [c.box for c in second] == [c.box for c in first]
        for c in first:
            assert c.box[2] <= 1600 and c.box[3] <= 1200
        assert np.asarray(img.crop(first[0].box)).mean() > 20  # real pixels, not a black pad
    with open(path, "rb") as f:
        assert [c.box for c in cropper.crop(f.read(), ["16:9", "1:1"])] == [c.box for c in first]


def test_one_ratio_string_and_empty_ratios() -> None:
    cropper = Cropper(S2CNet(S2CNetConfig(node_dim=64)), proposer=None)
    image = np.random.default_rng(1).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    one = cropper.crop(image, "16:9")
    assert len(one) == 1 and one[0].ratio == "16:9"
    assert one[0].box == cropper.crop(image, ["16:9"])[0].box
    with pytest.raises(ValueError, match="ratios is empty"):
        cropper.crop(image, [])


def test_cropper_to_cpu_is_exact_and_cuda_needs_a_device(cat: Image.Image) -> None:
    model = S2CNet(S2CNetConfig(node_dim=64)).eval()
    a = Cropper(model, proposer=None, bf16=False)
    b = Cropper(model, proposer=None, bf16=False).to("cpu")
    boxes = candidates(*cat.size, "16:9", a.grid)
    np.testing.assert_array_equal(a.score(cat, boxes, objects=NO_OBJECTS), b.score(cat, boxes, objects=NO_OBJECTS))
    assert b.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            Cropper(model, proposer=None).to("cuda")


def test_the_untrained_cropper_is_one_seeded_model(cat: Image.Image) -> None:
    from pipelines.config import ModelSpec

    a, b = Cropper.untrained(), Cropper.untrained()
    assert a.model_version == b.model_version == Cropper.UNTRAINED_VERSION
    boxes = candidates(*cat.size, "1:1", a.grid)
    np.testing.assert_array_equal(a.score(cat, boxes, objects=NO_OBJECTS), b.score(cat, boxes, objects=NO_OBJECTS))
    assert ModelSpec(weights="/nonexistent.pt").version() == Cropper.UNTRAINED_VERSION  # the resume key agrees


# -- the explicit choice: faces first, losing counts cut and dropped, subject-centred candidates -------

class KindsProposer:
    """Fixed boxes with kinds, as the subject heads would report them (fractions of the photo)."""

    shares_backbone = False

    def __init__(self, boxes, kinds) -> None:
        self.boxes, self.kinds = np.float32(boxes), tuple(kinds)

    def prepare(self, image):
        return None

    def propose(self, image, prepared, maps) -> Proposals:
        w, h = image.size
        return Proposals(self.boxes * np.float32([w, h, w, h]), self.kinds)


def test_a_face_some_candidate_keeps_is_never_cut_or_dropped(cropper: Cropper, cat: Image.Image) -> None:
    # a small face in the bottom-left corner, a big "person" elsewhere; the scorer knows nothing of them
    c = Cropper(cropper.model, proposer=KindsProposer([[0.03, 0.75, 0.12, 0.9], [0.4, 0.1, 0.9, 0.9]], ["face", "person"]))
    ratios = ["1:1", "16:9", "9:16", "4:5", None]
    analysis = c.analyse(cat, ratios)
    face = analysis.objects[0]
    assert analysis.object_kinds == ("face", "person")
    for crop in analysis.crops:
        boxes = analysis.candidates[crop.ratio]
        keeps = kept_share(boxes, face[None])[:, 0] >= 0.9
        assert keeps.any()  # control: some candidate keeps it
        assert kept_share(np.array([crop.box]), face[None])[0, 0] >= 0.9, crop
        assert crop.kept_faces == crop.faces == 1
        assert tuple(int(round(v)) for v in face) not in crop.cut_objects + crop.dropped_objects
    # without the face the scorer's favourite differs for at least one ratio: the rule did something
    plain = Cropper(cropper.model, proposer=KindsProposer([[0.4, 0.1, 0.9, 0.9]], ["person"])).crop(cat, ratios)
    assert [x.box for x in plain] != [x.box for x in analysis.crops]


def test_losing_an_object_counts_whether_cut_or_dropped(cropper: Cropper, cat: Image.Image) -> None:
    """An object some candidate keeps whole counts as lost when the crop drops it, twice when it slices it."""
    objs = np.float32([[20, 20, 120, 120], [300, 150, 420, 280]])
    c = Cropper(cropper.model, proposer=None)
    analysis = c.analyse(cat, ["16:9", "1:1", "9:16"], objects=objs)
    for crop in analysis.crops:
        boxes, s = analysis.candidates[crop.ratio], analysis.scores[crop.ratio]
        kept = kept_share(boxes, objs)
        keepable = (kept >= 0.9).any(0)
        lost = (((kept > 0.1) & (kept < 0.9) & keepable) * 2 + ((kept <= 0.1) & keepable)).sum(1)
        near = s >= s.max() - c.integrity_margin
        j = [tuple(b) for b in boxes.tolist()].index(tuple(crop.box))
        assert near[j] and lost[j] == lost[near].min()
        assert s[j] == max(s[k] for k in np.flatnonzero(near & (lost == lost[j])))
        kj = kept[j]
        assert len(crop.dropped_objects) == int((kj <= 0.1).sum())
        assert len(crop.cut_objects) == int(((kj > 0.1) & (kj < 0.9)).sum())


def test_candidates_centred_on_the_subject_are_offered(cropper: Cropper) -> None:
    image = Image.new("RGB", (900, 600), (120, 130, 140))
    face = [0.55, 0.3, 0.62, 0.42]  # between the position grid's steps
    c = Cropper(cropper.model, proposer=KindsProposer([face], ["face"]))
    analysis = c.analyse(image, ["9:16"])
    boxes = analysis.candidates["9:16"]
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    grid = candidates(900, 600, "9:16", c.grid)
    centre_x = (face[0] + face[2]) / 2 * 900
    centred = boxes[np.abs((boxes[:, 0] + boxes[:, 2]) / 2 - centre_x) <= 1]
    assert len(centred) >= c.grid.scales - 1
    assert not (np.abs((grid[:, 0] + grid[:, 2]) / 2 - centre_x) <= 1).any()  # control: the grid had none


def test_batched_backbone_equals_photo_by_photo(cropper: Cropper, three_photos: list) -> None:
    """crop_batch with several photos per backbone call (the GPU default) gives the per-photo results:
    photos of two input sizes (two buckets), a proposer that reads the shared maps."""
    torch.manual_seed(0)
    from s2cnet.subject import SubjectHeads

    heads = SubjectHeads(width=32, blocks=1).eval()
    with torch.no_grad():
        heads.masks.bias.fill_(0.5)
    photos = three_photos + [three_photos[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    ratios = ["1:1", "16:9", None]
    one = Cropper(cropper.model, proposer=SaliencyProposer(SaliencyHead().eval(), subject=heads), bf16=False)
    many = Cropper(cropper.model, proposer=SaliencyProposer(SaliencyHead().eval(), subject=heads), bf16=False,
                   backbone_batch=4)
    many.proposer.net.load_state_dict(one.proposer.net.state_dict())
    shapes = {tuple(resize_shape(*open_image(p).original_size, 256)) for p in photos}
    assert 1 < len(shapes) < len(photos)  # control: several buckets, one of them with more than one photo
    seq, bat = one.crop_batch(photos, ratios), many.crop_batch(photos, ratios)
    assert [[c.box for c in r] for r in bat] == [[c.box for c in r] for r in seq]
    for rb, rs in zip(bat, seq):
        assert [c.score for c in rb] == pytest.approx([c.score for c in rs], abs=1e-4)
    seen = []
    real = many._backbone
    many._backbone = lambda x: (seen.append(x.shape[0]), real(x))[1]
    many.crop_batch(photos, ratios)
    assert max(seen) > 1 and sum(seen) == len(photos)


def test_a_mirrored_photo_gets_the_mirrored_crops_and_scores(cropper: Cropper, cat: Image.Image, astronaut: str) -> None:
    ratios = ["1:1", "16:9", "9:16", "4:5", None]
    disagreed = 0
    plain = Cropper(cropper.model, proposer=cropper.proposer)  # the default: every photo scored as given
    cropper = Cropper(cropper.model, proposer=cropper.proposer, mirror_consistent=True)
    for image in (cat, Image.open(astronaut).convert("RGB")):
        flipped, w = ImageOps.mirror(image), image.width
        a, b = cropper.analyse(image, ratios), cropper.analyse(flipped, ratios)
        np.testing.assert_allclose(b.objects, hflip_boxes(a.objects, w), atol=1e-3)  # W - (W - x) rounds in float32
        for x, y in zip(a.crops, b.crops):
            assert y.box == (w - x.box[2], x.box[1], w - x.box[0], x.box[3]), (x, y)
            assert y.score == x.score and (y.faces, y.kept_faces) == (x.faces, x.kept_faces)
            assert sorted(y.cut_objects) == sorted((w - o[2], o[1], w - o[0], o[3]) for o in x.cut_objects)
        boxes = candidates(*image.size, "4:3")
        np.testing.assert_array_equal(cropper.score(flipped, hflip_boxes(boxes, w), NO_OBJECTS),
                                      cropper.score(image, boxes, NO_OBJECTS))
        objs = np.float32([[20, 20, 120, 120], [200, 40, 300, 200]])  # given objects are mirrored with the photo
        assert cropper.crop(flipped, "1:1", objects=hflip_boxes(objs, w))[0].box == \
            tuple(int(v) for v in hflip_boxes(np.array([cropper.crop(image, "1:1", objects=objs)[0].box]), w)[0])
        p, q = plain.crop(image, ratios), plain.crop(flipped, ratios)
        disagreed += sum(y.box != (w - x.box[2], x.box[1], w - x.box[0], x.box[3]) for x, y in zip(p, q))
    assert disagreed, "control: scored as given, some mirrored crop should differ (else this test proves nothing)"


def test_mass_kept_is_the_share_of_the_map_inside_each_box() -> None:
    from s2cnet.choice import mass_kept

    flat = np.ones((10, 20), np.float32)  # covers a 400 x 200 photo
    got = mass_kept(np.array([[0, 0, 400, 200], [0, 0, 200, 200], [100, 50, 300, 150]]), flat, (400, 200))
    np.testing.assert_allclose(got, [1.0, 0.5, 0.25], atol=0.02)
    spot = np.zeros((10, 20), np.float32)
    spot[2:4, 15:18] = 1  # all the mass at x 300-360, y 40-80
    np.testing.assert_allclose(mass_kept(np.array([[280, 20, 380, 100], [0, 0, 200, 200]]), spot, (400, 200)), [1.0, 0.0],
                               atol=0.06)


class SaliencyProposer_(KindsProposer):
    """No boxes, only a saliency map with all its mass in one corner of the photo."""

    def __init__(self, corner: tuple[slice, slice]) -> None:
        super().__init__(np.zeros((0, 4)), [])
        self.corner = corner

    def propose(self, image, prepared, maps) -> Proposals:
        sal = np.zeros((16, 16), np.float32)
        sal[self.corner] = 1
        return Proposals(np.zeros((0, 4), np.float32), (), sal)


def test_the_choice_keeps_more_of_the_saliency_mass_within_the_margin(cropper: Cropper, cat: Image.Image) -> None:
    ratios = ["1:1", "9:16", "4:5"]
    corner = (slice(0, 3), slice(0, 16))  # the top edge of the photo
    plain = Cropper(cropper.model, proposer=SaliencyProposer_(corner), saliency_weight=0.0, mirror_consistent=False)
    keen = Cropper(cropper.model, proposer=SaliencyProposer_(corner), saliency_weight=100.0, mirror_consistent=False)
    a, b = plain.analyse(cat, ratios), keen.analyse(cat, ratios)
    moved = 0
    for x, y in zip(a.crops, b.crops):
        assert y.saliency_kept >= x.saliency_kept
        s = b.scores[y.ratio]
        j = [tuple(v) for v in b.candidates[y.ratio].tolist()].index(y.box)
        assert s[j] >= s.max() - keen.integrity_margin  # never outside the margin, however large the weight
        moved += y.box != x.box
    assert moved, "control: with the whole mass on the top edge some ratio's choice should move up"


def test_hostile_arguments_raise_value_errors_and_nothing_blocks(cropper: Cropper, tmp_path) -> None:
    """Every documented bad argument is a ValueError (ImageLoadError is one) with a reason; a FIFO given
    as a photo or as weights is refused at once instead of blocking the open forever."""
    import os

    photo = tmp_path / "a.jpg"
    Image.new("RGB", (320, 240), "gray").save(photo)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with open(photo) as text_mode:
        cases = [
            (lambda: cropper.crop(str(fifo), "1:1"), "not a regular file"),
            (lambda: Cropper.from_pretrained(str(fifo)), "regular file"),
            (lambda: Cropper.from_pretrained(str(tmp_path)), "regular file"),
            (lambda: Cropper.from_pretrained(str(photo)), "not an S2CNet weights file"),
            (lambda: Cropper.from_pretrained(device="meta"), "device must be"),
            (lambda: cropper.crop(text_mode, "1:1"), "text mode"),
            (lambda: cropper.crop(str(photo), 0), "ratios must be"),
            (lambda: cropper.crop(str(photo), "1:1", objects=[1, 2, 3]), "objects must be"),
        ]
        for call, reason in cases:
            with pytest.raises(ValueError, match=reason):
                call()
    assert len(cropper.crop(str(photo), ["1:1"] * 1000)) == 1  # duplicates merged: one crop, one scoring
    assert len(cropper.crop(str(photo), (r for r in ["1:1", "16:9"]))) == 2  # any iterable of ratios
    assert len(cropper.crop_batch((p for p in [str(photo)] * 2), ["1:1"])) == 2  # and of photos
