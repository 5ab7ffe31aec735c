"""Teacher labels for the face and object heads, made once and cached outside the project.

No face or person detector weights can be shipped or downloaded, so the heads learn from two small
public teachers in ``../shared/data/teachers`` (distillation): YuNet for faces and DeepLabV3
(MobileNetV2, PASCAL VOC) for people and other objects. The teachers are never shipped; only the
heads trained on their outputs are.

    python -m s2cnet.training.teacher_labels --data ../shared/data --out runs/teachers --shard 0/2 &
    python -m s2cnet.training.teacher_labels --data ../shared/data --out runs/teachers --shard 1/2

writes ``faces.<shard>.jsonl`` (one line per photo: upright size and YuNet rows ``x, y, w, h, score``
plus ten landmark coordinates, in upright full-size pixels) and ``masks/<set>/<name>.png`` (DeepLab's
513x513 class ids, stretched over the whole photo). Runs resume: photos already labelled are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from s2cnet.imageio import open_image
from s2cnet.training.fcdb import split_fcdb

YUNET_SIDE = 640  # YuNet's long side: faces down to ~10 px there, ~35 ms a photo on one core
LOW_SCORE = 0.3  # rows kept from here: the low-confidence ones become "ignore" regions in training
DEEPLAB_SIDE = 513
FCDB_VAL_SIZE = 138  # the FCDB split s2cnet.training.train validates on (TrainConfig.fcdb_val_size, seed 0)
DUTS_VAL_SIZE = 100  # the DUTS photos train_saliency validates on (first 100 names)


def photo_list(data: Path) -> list[tuple[str, Path]]:
    """(photo id "<set>/<name>", path) for every GAICD, DUTS and FCDB photo."""
    out = []
    for name, folder in (("gaicd", "gaicd/images"), ("duts", "duts/images"), ("fcdb", "fcdb/images")):
        out += [(f"{name}/{p.stem}", p) for p in sorted((data / folder).glob("*.jpg"))]
    return out


def heldout_ids(data: Path) -> set[str]:
    """Photos the heads never train on: every split that another benchmark measures on (GAICD test,
    FCDB validation, DUTS validation), plus one photo in ten of the rest by a hash of its id, so the
    face benchmark has enough faces."""
    held = {f"gaicd/{i}" for i in json.loads((data / "gaicd/split.json").read_text())["test"]}
    held |= {f"fcdb/{Path(n).stem}" for n in split_fcdb(data / "fcdb", FCDB_VAL_SIZE)[1]}
    held |= {f"duts/{p.stem}" for p in sorted((data / "duts/images").glob("*.jpg"))[:DUTS_VAL_SIZE]}
    held |= {pid for pid, _ in photo_list(data) if zlib.crc32(pid.encode()) % 10 == 0}
    return held


class YuNet:
    """OpenCV's YuNet face detector, run at ``side`` px on the long side."""

    def __init__(self, path: Path, side: int = YUNET_SIDE, score: float = LOW_SCORE) -> None:
        import cv2

        cv2.setNumThreads(1)
        self.cv2, self.side = cv2, side
        self.net = cv2.FaceDetectorYN.create(str(path), "", (side, side), score, 0.3, 5000)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """[N, 15] rows x, y, w, h, ten landmark coordinates, score, in ``image``'s pixels."""
        s = self.side / max(image.size)
        w, h = max(1, round(image.width * s)), max(1, round(image.height * s))
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR))[:, :, ::-1])
        self.net.setInputSize((w, h))
        _, faces = self.net.detect(bgr)
        if faces is None:
            return np.zeros((0, 15), np.float32)
        faces = faces.astype(np.float32)
        faces[:, :14] /= s
        return faces


class DeepLab:
    """DeepLabV3-MobileNetV2 on PASCAL VOC (21 classes, 15 = person), through LiteRT."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(path), num_threads=1)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]["index"]
        self.out = self.interp.get_output_details()[0]["index"]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """[513, 513] uint8 class ids over the whole photo (stretched)."""
        x = np.asarray(image.convert("RGB").resize((DEEPLAB_SIDE, DEEPLAB_SIDE), Image.BILINEAR))[None]
        self.interp.set_tensor(self.inp, x.astype(np.uint8))
        self.interp.invoke()
        return self.interp.get_tensor(self.out)[0].astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("runs/teachers"))
    ap.add_argument("--shard", default="0/1", help="i/n: this process labels every n-th photo from the i-th")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    i, n = (int(v) for v in args.shard.split("/"))
    photos = photo_list(args.data)[i::n][: args.limit]
    faces_path = args.out / f"faces.{i}.jsonl"
    done = set()
    if faces_path.exists():
        done = {json.loads(line)["id"] for line in faces_path.read_text().splitlines() if line.strip()}
    teachers = args.data / "teachers"
    yunet, deeplab = YuNet(teachers / "face_detection_yunet.onnx"), DeepLab(teachers / "deeplabv3_mnv2_pascal_quant.tflite")
    args.out.mkdir(parents=True, exist_ok=True)
    t0, count = time.time(), 0
    with faces_path.open("a") as log:
        for pid, path in photos:
            if pid in done:
                continue
            image = open_image(path).image  # upright, as the product sees it
            mask_path = args.out / "masks" / f"{pid}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(deeplab(image)).save(mask_path)
            faces = yunet(image)
            log.write(json.dumps({"id": pid, "size": list(image.size), "faces": np.round(faces, 2).tolist()}) + "\n")
            log.flush()
            count += 1
            if count % 100 == 0:
                print(f"{count} photos, {(time.time() - t0) / count * 1000:.0f} ms each", flush=True)
    print(f"labelled {count} photos into {args.out}")


if __name__ == "__main__":
    main()
