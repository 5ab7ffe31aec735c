#!/usr/bin/env bash
# Reproduces the shipped weights end to end on a 2-core CPU machine (resumable: rerun after a stop).
#   1. DUTS saliency pretraining of the backbone
#   2. S2CNet and the graph-free GAIC-style baseline, same recipe, trained side by side (one core each):
#      12 epochs, multi-scale short sides, weights averaged over epochs 5-11 (SWA)
#   3. a saliency head fitted on S2CNet's frozen backbone: the proposer then reads the features the
#      crop scorer computes anyway (one backbone pass per photo)
#   4. export fp16 weights into s2cnet/weights/ and evaluate on the GAICD test split
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
EPOCHS=${EPOCHS:-12}
SWA_FROM=${SWA_FROM:-5}
PY=.venv/bin/python
RECIPE=(--init runs/saliency.pt --epochs "$EPOCHS" --swa-from "$SWA_FROM" --scale-jitter 224,256,288 --threads 1)
mkdir -p runs
[ -f runs/saliency.pt ] || $PY -m s2cnet.saliency --data "$DATA/duts" --epochs 4 --stop-after 3 --out runs/saliency.pt
$PY -m s2cnet.train --data "$DATA/gaicd" --out runs/s2cnet_v2c "${RECIPE[@]}" &
$PY -m s2cnet.train --data "$DATA/gaicd" --out runs/gaic_v2 "${RECIPE[@]}" --model use_graph=false &
wait
[ -f runs/saliency_head.pt ] || $PY -m s2cnet.saliency --data "$DATA/duts" --backbone-from runs/s2cnet_v2c/final.pt \
    --init runs/saliency.pt --epochs 1 --lr 1e-3 --out runs/saliency_head.pt
$PY -m s2cnet.export --checkpoint runs/s2cnet_v2c/final.pt --saliency-head runs/saliency_head.pt --out s2cnet/weights/s2cnet.pt
$PY -m s2cnet.export --checkpoint runs/gaic_v2/final.pt --out s2cnet/weights/gaic_baseline.pt
$PY -m s2cnet.export --saliency runs/saliency.pt --out s2cnet/weights/saliency.pt
$PY -m s2cnet.evaluate --data "$DATA/gaicd" --split test --objects all
