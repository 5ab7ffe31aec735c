"""The face / person / object heads: their targets and decoding agree, masks become boxes, the face
benchmark counts as documented, and the proposer puts faces and people first."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from s2cnet.model import S2CNet
from s2cnet.proposals import SaliencyProposer, default_proposer
from s2cnet.saliency import SaliencyHead, SaliencyNet
from s2cnet.subject import STRIDE, SubjectHeads, SubjectMaps, cell_boxes, decode_faces, load_subject_heads, mask_regions
from s2cnet.training.train_subject import FACE_SCORE, backbone_digest, cache_photo, collate, head_loss, match_faces, targets
from s2cnet.transforms import model_input
from tests.test_proposals import astronaut


def maps_from_targets(t: dict[str, np.ndarray]) -> SubjectMaps:
    """The head output a perfect student would give for these targets."""
    heat = torch.from_numpy(t["heat"]).clamp(1e-4, 1 - 1e-4)
    logits = torch.log(heat / (1 - heat))[None, None]
    return SubjectMaps(logits, torch.from_numpy(t["box"])[None], torch.from_numpy(np.log(t["masks"] + 1e-4))[None])


def test_targets_decode_back_to_the_faces():
    faces = np.float32([[40, 50, 80, 102, 0.95], [150.5, 20, 166, 38, 0.8]])
    t = targets(faces, np.zeros((256, 256), np.uint8), (32, 32))
    assert t["centre"].sum() == 2 and t["heat"].max() == 1.0
    boxes, scores = decode_faces(maps_from_targets(t), threshold=0.5)
    assert len(boxes) == 2 and (scores > 0.99).all()
    got = sorted(boxes.tolist())
    np.testing.assert_allclose(got, faces[:, :4][np.argsort(faces[:, 0])], atol=1e-3)


def test_every_box_cell_decodes_to_its_face_on_a_wide_grid():
    faces = np.float32([[40, 50, 80, 102, 0.95], [300, 20, 316, 38, 0.8]])
    t = targets(faces, np.zeros((128, 384), np.uint8), (16, 48))
    cells = t["box_weight"] > 0
    assert t["box_weight"].max() == 1.0 and cells.sum() == 18  # each face: its centre cell and 8 neighbours
    boxes = cell_boxes(torch.from_numpy(t["box"])[None])[0][torch.from_numpy(cells)].numpy() * STRIDE
    for b in boxes:
        assert np.abs(faces[:, :4] - b).max(1).min() < 1e-3
    # the neighbours learn less than the centre, and the small face's far less than the big one's
    assert t["box_weight"][cells].min() < 0.2 and t["box_weight"][9, 6] > t["box_weight"][2, 38]


def test_cached_training_photos_are_what_the_cropper_computes_and_mirror_exactly(tmp_path):
    torch.manual_seed(0)
    backbone = S2CNet().eval().backbone
    photo = tmp_path / "p.jpg"
    astronaut().resize((300, 200)).save(photo)
    (tmp_path / "masks" / "set").mkdir(parents=True)
    classes = np.zeros((513, 513), np.uint8)
    classes[:, :100] = 15
    Image.fromarray(classes).save(tmp_path / "masks" / "set" / "p.png")
    row = {"faces": [[30, 20, 60, 60] + [0] * 10 + [0.9]]}
    plain = cache_photo(backbone, "set/p", photo, row, tmp_path, mirror=False, stride4=True)
    mirror = cache_photo(backbone, "set/p", photo, row, tmp_path, mirror=True)
    x, scale = model_input(Image.open(photo), (300, 200))
    assert plain.grid == (x.shape[-2] // STRIDE, x.shape[-1] // STRIDE)
    c8, fused, c4, t = collate([plain])
    with torch.no_grad():
        want = backbone.pyramid(x)
    torch.testing.assert_close(fused, want.fused, atol=2e-2, rtol=1e-2)  # the cache holds fp16 stages
    torch.testing.assert_close(c4, want.stride4, atol=2e-2, rtol=1e-2)
    assert c4.shape[-2:] == (x.shape[-2] // 4, x.shape[-1] // 4) and c4.shape[1] == 24
    assert collate([mirror])[2] is None  # cached without the stride-4 map: heads that do not read it
    np.testing.assert_allclose(plain.faces[0, :4], np.float32([30, 20, 90, 80]) * scale, rtol=1e-5)
    width = x.shape[-1]
    np.testing.assert_allclose(mirror.faces[0, [0, 2]], width - plain.faces[0, [2, 0]], rtol=1e-5)
    np.testing.assert_allclose(mirror.targets["heat"].sum(), plain.targets["heat"].sum(), rtol=1e-5)
    np.testing.assert_array_equal(mirror.person, plain.person[:, ::-1])
    assert plain.person[:, 0].all() and not plain.person[:, -1].any()


def test_the_cache_is_named_by_the_backbone_weights_alone():
    torch.manual_seed(0)
    a, b = S2CNet().backbone, S2CNet().backbone
    b.load_state_dict(a.state_dict())
    assert backbone_digest(a) == backbone_digest(b)  # same weights, another object (and another model file)
    with torch.no_grad():
        b.stage16[0].conv[0][0].weight[0, 0, 0, 0] += 1e-3
    assert backbone_digest(a) != backbone_digest(b)


def test_unsure_and_tiny_faces_carry_no_loss_either_way():
    faces = np.float32([[40, 40, 90, 100, FACE_SCORE - 0.1], [200, 200, 204, 204, 0.99]])
    t = targets(faces, np.zeros((256, 256), np.uint8), (32, 32))
    assert t["centre"].sum() == 0 and t["heat"].max() == 0
    assert t["weight"][5:12, 5:11].max() == 0  # the unsure face's box is "don't care"
    assert t["weight"][25, 25] == 0 and t["weight"][0, 0] == 1


def test_masks_are_the_share_of_each_cell():
    classes = np.zeros((256, 256), np.uint8)
    classes[0:8, 0:4] = 15  # half a cell of person
    classes[64:128, 64:128] = 12  # a dog: an object, not a person
    classes[200:208, 200:208] = 255  # PASCAL's "void" border: neither
    m = targets(np.zeros((0, 5), np.float32), classes, (32, 32))["masks"]
    assert m[0, 0, 0] == 0.5 and m[1, 0, 0] == 0.5
    assert m[0, 8:16, 8:16].max() == 0 and m[1, 8:16, 8:16].min() == 1
    assert m[:, 25, 25].max() == 0


def test_a_perfect_student_has_a_lower_loss_than_a_random_one():
    faces = np.float32([[40, 50, 80, 102, 0.95]])
    classes = np.zeros((256, 256), np.uint8)
    classes[100:200, 30:120] = 15
    t = targets(faces, classes, (32, 32))
    batch = {k: torch.from_numpy(v)[None] for k, v in t.items()}
    perfect = head_loss(maps_from_targets(t), batch)
    torch.manual_seed(0)
    random = SubjectMaps(torch.randn(1, 1, 32, 32) - 2, torch.randn(1, 4, 32, 32), torch.randn(1, 2, 32, 32))
    worse = head_loss(random, batch)
    for k in ("focal", "box", "mask"):
        assert perfect[k] < worse[k], k
    assert perfect["box"] < 1e-4


def test_mask_regions_are_boxes_largest_first_and_drop_specks():
    prob = np.zeros((32, 40), np.float32)
    prob[2:6, 3:7] = 0.9  # 16 cells
    prob[10:20, 20:30] = 0.8  # 100 cells
    prob[30, 0] = 1.0  # a speck
    boxes, mass = mask_regions(prob)
    np.testing.assert_array_equal(boxes, np.float32([[20, 10, 30, 20], [3, 2, 7, 6]]) * STRIDE)
    assert mass[0] > mass[1]


def test_match_faces_counts_as_documented():
    short = 200.0
    truth = np.float32([
        [10, 10, 40, 40, 0.9],  # 15% of the short side: counted
        [100, 100, 104, 104, 0.9],  # 2%: too small to count, a prediction on it is no false positive
        [150, 10, 180, 40, 0.4],  # YuNet unsure: don't care
        [60, 60, 90, 90, 0.9],  # counted, missed
    ])
    pred = np.float32([[11, 11, 41, 41], [100, 100, 104, 104], [150, 10, 180, 40], [120, 150, 160, 190], [0, 190, 3, 193]])
    scores = np.float32([0.9, 0.8, 0.7, 0.6, 0.5])
    tp, fp, found, total = match_faces(pred, scores, truth, short)
    # one hit, one false positive (the 20% box on nothing); the 1.5% stray box is out of range
    assert (tp, fp, found, total) == (1, 1, 1, 2)


def _calibrated(heads: SubjectHeads) -> SubjectHeads:
    with torch.no_grad():  # a random head whose masks fire somewhere and whose heatmap has peaks
        heads.masks.bias.fill_(0.5)
        heads.face.bias[0] = 3.0
    return heads.eval()


def test_proposer_with_subject_heads_puts_faces_then_people_first():
    torch.manual_seed(0)
    proposer = SaliencyProposer(SaliencyHead().eval(), max_objects=10, subject=_calibrated(SubjectHeads()))
    assert proposer.shares_backbone
    image = astronaut().resize((384, 256))
    with torch.no_grad():
        maps = S2CNet().eval().backbone.pyramid(model_input(image, image.size)[0])
    faces, possible, people, objects = proposer.subjects(image, maps)
    assert len(faces) and len(people) and len(possible) == 0  # the calibrated head is sure of its faces
    roomy = SaliencyProposer(proposer.net, max_objects=100, subject=proposer.subject)
    kinds = roomy.proposals(image, maps).kinds
    assert kinds[0] == "face" and "person" in kinds
    assert kinds.index("person") > max(i for i, k in enumerate(kinds) if k == "face")  # tiers in order
    boxes = proposer(image, maps=maps)
    assert 1 <= len(boxes) <= 10
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 384).all() and (boxes[:, [1, 3]] <= 256).all()
    clipped = faces.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, 384)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, 256)
    np.testing.assert_allclose(boxes[0], clipped[0], atol=1e-4)  # the most confident face leads
    with pytest.raises(ValueError, match="SaliencyHead"):
        SaliencyProposer(SaliencyNet(), subject=SubjectHeads())


def test_default_proposer_uses_shipped_subject_heads_instead_of_the_cascade():
    torch.manual_seed(0)
    half = lambda m: {k: v.half() for k, v in m.state_dict().items()}  # noqa: E731  as shipped
    heads = SubjectHeads(width=32, blocks=2)
    state = {"config": {"width": 32, "blocks": 2}, "state": half(heads)}
    loaded = load_subject_heads(state)
    x8, x16 = torch.randn(1, 32, 8, 10), torch.randn(1, 448, 4, 5)
    torch.testing.assert_close(loaded(x8, x16).face_logits, heads.half().float()(x8, x16).face_logits)
    proposer = default_proposer(head_state=half(SaliencyHead()), subject_state=state)
    assert proposer.subject is not None and proposer.faces is None
    assert default_proposer(head_state=half(SaliencyHead())).faces is not None  # no heads: the cascade


def test_detail_heads_read_the_stride4_map_and_dilated_ones_see_further():
    torch.manual_seed(0)
    backbone = S2CNet().eval().backbone
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        maps = backbone.pyramid(x)
        c8, c16, c32 = backbone.stages(x)
    assert maps.stride4.shape == (1, 24, 32, 48)
    torch.testing.assert_close(maps.stride8, c8)  # the stride-4 tap changes nothing downstream
    heads = SubjectHeads(width=16, blocks=4, detail=True).eval()
    with torch.no_grad():
        out = heads(maps.stride8, maps.fused, maps.stride4)
        assert out.face_logits.shape == (1, 1, 16, 24)
        moved = maps.stride4.clone()
        moved[..., :4, :4] += 1.0  # the top-left 4x4 stride-4 cells: stride-8 cells (0..1, 0..1)
        changed = (heads(maps.stride8, maps.fused, moved).face_logits - out.face_logits).abs()[0, 0] > 0
    assert changed[:2, :2].all()
    with pytest.raises(ValueError, match="stride4"):
        heads(maps.stride8, maps.fused)
    # receptive field at stride 8: 4 plain blocks reach 4 cells away, dilations 1, 1, 2, 4 reach 8
    for dilated, reach in ((False, 4), (True, 8)):
        trunk = SubjectHeads(width=8, blocks=4, dilated=dilated).trunk.eval()
        with torch.no_grad():  # every ReLU open, so each path through the blocks carries a gradient
            for block in trunk:
                block.dw.bias.fill_(10.0), block.pw.bias.fill_(10.0)
        probe = torch.randn(1, 8, 21, 21, requires_grad=True)
        trunk(probe)[0, :, 10, 10].sum().backward()
        cols = torch.nonzero(probe.grad.abs().sum((0, 1, 2)) > 0).flatten()
        assert int(cols.max()) - 10 == reach


def test_decode_faces_keeps_the_strongest_peaks():
    logits = torch.full((1, 1, 16, 16), -6.0)
    logits[0, 0, 3, 4], logits[0, 0, 3, 5], logits[0, 0, 10, 10] = 4.0, 3.0, 1.0  # (3,5) is no local max
    box = torch.zeros(1, 4, 16, 16)
    box[:, 2:] = math.log(2.0)
    boxes, scores = decode_faces(SubjectMaps(logits, box, torch.zeros(1, 2, 16, 16)), threshold=0.5, vote=False)
    assert len(boxes) == 2 and scores[0] > scores[1]
    np.testing.assert_allclose(boxes[0], [4 * STRIDE - STRIDE, 3 * STRIDE - STRIDE, 4 * STRIDE + STRIDE, 3 * STRIDE + STRIDE])


def test_the_vote_averages_what_the_neighbours_predict_for_the_same_face():
    logits = torch.full((1, 1, 16, 16), -6.0)
    logits[0, 0, 5, 5], logits[0, 0, 5, 6] = 4.0, 4.0 - 1e-3  # the peak and one confident neighbour
    box = torch.zeros(1, 4, 16, 16)
    box[0, 0, 5, 5], box[0, 0, 5, 6] = 0.5, -0.5  # both point at the centre x = 5.5 cells
    box[0, 2:, 5, 5], box[0, 2:, 5, 6] = math.log(2.0), math.log(3.0)  # and disagree on the size
    maps = SubjectMaps(logits, box, torch.zeros(1, 2, 16, 16))
    voted, _ = decode_faces(maps, threshold=0.5)
    alone, _ = decode_faces(maps, threshold=0.5, vote=False)
    np.testing.assert_allclose(alone[0], np.float32([4.5, 4, 6.5, 6]) * STRIDE, atol=1e-4)
    assert len(voted) == 1
    np.testing.assert_allclose((voted[0][0] + voted[0][2]) / 2, 5.5 * STRIDE, atol=0.2)  # same centre (the cold cells weigh ~0)
    assert 2 * STRIDE < voted[0][2] - voted[0][0] < 3 * STRIDE  # a size between the two


def test_attached_heads_ship_in_the_model_file_and_replace_the_cascade(tmp_path):
    from s2cnet.checkpoint import half
    from s2cnet.cropper import Cropper
    from s2cnet.model import S2CNetConfig
    from s2cnet.training.export import attach_subject_heads

    torch.manual_seed(0)
    model_file = tmp_path / "s2cnet.pt"
    torch.save({"model": half(S2CNet().state_dict()), "config": S2CNetConfig().to_dict(),
                "saliency_head": half(SaliencyHead().state_dict())}, model_file)
    heads = SubjectHeads(width=32, blocks=2)
    torch.save({"heads": heads.state_dict(), "config": {"width": 32, "blocks": 2}, "history": [{"epoch": 0}],
                "command": "python -m s2cnet.training.train_subject --epochs 1", "face_threshold": 0.45, "sure_face": 0.65},
               tmp_path / "heads.pt")
    before = Cropper.from_pretrained(model_file)
    assert before.proposer.subject is None and before.proposer.faces is not None
    attach_subject_heads(model_file, tmp_path / "heads.pt")
    after = Cropper.from_pretrained(model_file)
    assert after.proposer.subject is not None and after.proposer.faces is None
    assert (after.proposer.face_threshold, after.proposer.sure_face) == (0.45, 0.65)  # chosen on validation, shipped
    assert after.model_version != before.model_version  # new proposals: resumed jobs redo their photos
    state = torch.load(model_file, weights_only=True)["subject_heads"]["state"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    image = astronaut().resize((320, 256))
    analysis = after.analyse(image, ["1:1"])
    assert len(analysis.object_kinds) == len(analysis.objects)


def test_unsure_faces_are_possible_faces_ranked_after_sure_ones():
    torch.manual_seed(0)
    heads = _calibrated(SubjectHeads())
    image = astronaut().resize((384, 256))
    with torch.no_grad():
        maps = S2CNet().eval().backbone.pyramid(model_input(image, image.size)[0])
    every = SaliencyProposer(SaliencyHead().eval(), subject=heads, face_threshold=0.0, sure_face=2.0)  # nothing is sure
    kinds = every.proposals(image, maps).kinds
    assert "face" not in kinds and kinds[0] == "possible face"
