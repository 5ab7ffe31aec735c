"""Object proposals: saliency regions, faces, and the Faster R-CNN adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from s2cnet.checkpoint import load_checkpoint
from s2cnet.cropper import DEFAULT_WEIGHTS, Cropper
from s2cnet.faces import HaarCascade
from s2cnet.model import S2CNet, S2CNetConfig
from s2cnet.proposals import SALIENCY_WEIGHTS, DetectorProposer, SaliencyProposer, default_proposer, load_saliency
from s2cnet.saliency import SaliencyHead, SaliencyNet
from s2cnet.transforms import model_input


def astronaut() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut())


def test_boxes_from_map_finds_each_blob_in_image_pixels():
    proposer = SaliencyProposer(SaliencyNet().eval(), thresholds=(0.5,))
    sal = np.zeros((10, 20), np.float32)
    sal[2:5, 2:6] = 0.9  # left blob: cells x 2..5, y 2..4
    sal[5:9, 12:18] = 1.0  # right blob
    boxes, mass = proposer.boxes_from_map(sal, width=400, height=200)  # 20 px per cell
    assert len(boxes) == 3  # two blobs and their joint extent
    left = boxes[np.argmin(boxes[:, 0])]
    assert abs(left[0] - 40) <= 20 and abs(left[2] - 120) <= 20 and abs(left[1] - 40) <= 20 and abs(left[3] - 100) <= 20
    right = [b for b in boxes if b[0] > 200][0]
    assert abs(right[0] - 240) <= 20 and abs(right[2] - 360) <= 20
    assert (boxes[:, [0, 2]] <= 400).all() and (boxes[:, [1, 3]] <= 200).all()
    assert mass[list(map(tuple, boxes)).index(tuple(right))] > mass[list(map(tuple, boxes)).index(tuple(left))]


def test_face_detector_finds_the_astronauts_face():
    faces, scores = HaarCascade()(astronaut())
    assert len(faces) >= 1
    x1, y1, x2, y2 = faces[0]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert 180 < cx < 280 and 60 < cy < 170  # her face, in the 512x512 photo


def test_face_detector_finds_nothing_in_a_flat_image():
    assert HaarCascade()(Image.new("RGB", (300, 200), (120, 130, 140)))[0].shape == (0, 4)


@pytest.mark.skipif(not SALIENCY_WEIGHTS.exists(), reason="bundled saliency weights not present")
def test_default_proposer_keeps_faces_first_and_boxes_inside():
    image = astronaut()
    boxes = default_proposer(max_objects=6)(image)
    assert 1 <= len(boxes) <= 6
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= image.width).all() and (boxes[:, [1, 3]] <= image.height).all()
    cx, cy = boxes[0, [0, 2]].mean(), boxes[0, [1, 3]].mean()
    assert 180 < cx < 280 and 60 < cy < 170  # the face is the first object node


@pytest.mark.skipif(not SALIENCY_WEIGHTS.exists(), reason="bundled saliency weights not present")
def test_bundled_saliency_prefers_the_object_over_flat_background():
    net = load_saliency()
    image = Image.new("RGB", (320, 320), (200, 200, 200))
    image.paste(Image.fromarray(np.asarray(astronaut().resize((120, 120)))), (100, 100))
    sal = SaliencyProposer(net, short_side=320).saliency_map(image)  # 20x20 cells of 16 px
    inside, outside = sal[7:13, 7:13].mean(), np.concatenate([sal[:4].ravel(), sal[-4:].ravel()]).mean()
    assert inside > outside + 0.1


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory):
    torch.manual_seed(0)
    import torchvision

    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=5)
    path = tmp_path_factory.mktemp("det") / "frcnn.pt"
    torch.save(model.state_dict(), path)
    return path


def test_detector_proposer_from_a_local_file(detector_weights):
    det = DetectorProposer(detector_weights, num_classes=5, score_threshold=0.0, max_objects=4)
    boxes = det(astronaut())
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) <= 4
    assert (boxes[:, [0, 2]] <= 512).all()


def test_detector_proposer_from_s3(detector_weights, local_s3, monkeypatch):
    local_s3.create_bucket("models")
    local_s3.client().upload_file(str(detector_weights), "models", "det/frcnn.pt")
    for k, v in local_s3.env().items():
        monkeypatch.setenv(k, v)
    det = DetectorProposer("s3://models/det/frcnn.pt", num_classes=5, endpoint_url=local_s3.endpoint_url)
    local = DetectorProposer(detector_weights, num_classes=5)
    a, b = det.model.state_dict(), local.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_detector_proposer_rejects_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        DetectorProposer(tmp_path / "nope.pt")


# -- a saliency head that reads the S2CNet backbone's maps (one backbone pass per photo) ---------

def _model_input(image: Image.Image, short_side: int = 256) -> torch.Tensor:
    return model_input(image, image.size, short_side)[0]


def test_head_only_proposer_needs_the_backbone_maps_and_keeps_boxes_inside():
    torch.manual_seed(0)
    head = SaliencyHead().eval()
    proposer = SaliencyProposer(head, max_objects=5)
    assert proposer.shares_backbone and proposer.head is head
    assert not SaliencyProposer(SaliencyNet().eval()).shares_backbone
    image = astronaut().resize((384, 256))
    with pytest.raises(ValueError, match="maps="):
        proposer(image)
    model = S2CNet().eval()
    with torch.no_grad():
        maps = model.backbone.pyramid(_model_input(image))
    assert maps.fused.shape == (1, 448, 16, 24) and maps.stride8.shape == (1, 32, 32, 48)
    boxes = proposer(image, maps=maps)
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and 1 <= len(boxes) <= 5
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 384).all() and (boxes[:, [1, 3]] <= 256).all()
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    # faces handed over by prepare() come first, unchanged
    face = np.array([[40, 30, 90, 100]], np.float32)
    with_face = proposer(image, maps=maps, faces=face)
    np.testing.assert_array_equal(with_face[0], face[0])


def test_head_on_cropper_features_equals_standalone_net_on_the_same_backbone():
    """The Cropper's fused map (BatchNorm folded, channels-last) read by the head gives the saliency a
    SaliencyNet made of the same backbone and head computes on its own."""
    torch.manual_seed(0)
    if DEFAULT_WEIGHTS.exists():
        model, _ = load_checkpoint(DEFAULT_WEIGHTS)
    else:  # random weights: BatchNorm statistics that keep the features from fading out
        model = S2CNet().eval()
        with torch.no_grad():
            for m in model.backbone.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.fill_(0.5)
    head = SaliencyHead().eval()
    net = SaliencyNet(tf_padding=model.cfg.tf_padding).eval()  # the same backbone, padded alike
    shared = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("reduce")}
    assert not net.backbone.load_state_dict(shared, strict=False).unexpected_keys
    image = astronaut().resize((320, 256))
    with torch.no_grad():  # calibrate the untrained head to logits of spread ~2 around 0: a map with contrast
        logits = head(net.backbone.fused(_model_input(image))) - head.net[2].bias
        k = 2.0 / logits.std()
        head.net[2].weight.mul_(k), head.net[2].bias.copy_(-k * logits.mean())
    net.head.load_state_dict(head.state_dict())

    seen = {}

    class Recording(SaliencyProposer):
        def saliency_map(self, image, maps=None):
            seen["map"] = super().saliency_map(image, maps)
            return seen["map"]

    # the map of this very image (not of its mirror, the orientation the Cropper might choose)
    Cropper(model, proposer=Recording(head), mirror_consistent=False, bf16_backbone=False).score(image, [[0, 0, 256, 256]])
    want = SaliencyProposer(net, short_side=256).saliency_map(image)
    assert seen["map"].shape == want.shape == (16, 20)
    assert want.std() > 0.1  # control: not a flat map
    np.testing.assert_allclose(seen["map"], want, atol=1e-4)


def test_default_proposer_with_a_head_state_shares_the_backbone():
    torch.manual_seed(0)
    head = SaliencyHead()
    state = {k: v.half() for k, v in head.state_dict().items()}  # as shipped (fp16)
    proposer = default_proposer(faces=False, head_state=state)
    assert proposer.shares_backbone and proposer.faces is None and not proposer.head.training
    for k, v in proposer.head.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, head.state_dict()[k], rtol=1e-3, atol=1e-3)


def _checkpoint(path, with_head: bool) -> None:
    ck = {"model": S2CNet().state_dict(), "config": S2CNetConfig().to_dict()}
    if with_head:
        ck["saliency_head"] = SaliencyHead().state_dict()
    torch.save(ck, path)


def test_from_pretrained_picks_the_shared_head_when_the_file_has_one(tmp_path):
    _checkpoint(tmp_path / "with_head.pt", with_head=True)
    cropper = Cropper.from_pretrained(tmp_path / "with_head.pt")
    assert isinstance(cropper.proposer, SaliencyProposer) and cropper.proposer.shares_backbone
    assert isinstance(cropper.proposer.faces, HaarCascade)
    (c,) = cropper.crop(astronaut().resize((256, 256)), ["1:1"])
    assert len(c.box) == 4
    if not SALIENCY_WEIGHTS.exists():
        pytest.skip(f"no bundled standalone saliency weights at {SALIENCY_WEIGHTS}: the file-without-head case needs them")
    _checkpoint(tmp_path / "plain.pt", with_head=False)
    plain = Cropper.from_pretrained(tmp_path / "plain.pt")
    assert isinstance(plain.proposer, SaliencyProposer) and not plain.proposer.shares_backbone
    assert isinstance(plain.proposer.net, SaliencyNet)
