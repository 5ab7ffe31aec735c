#!/usr/bin/env bash
# Reproduces the shipped weights end to end on a 2-core CPU machine (resumable: rerun after a stop).
#   1. DUTS saliency pretraining of the backbone (also the object proposer's weights)
#   2. S2CNet and the graph-free GAIC-style baseline, trained side by side (one core each)
#   3. export fp16 weights into s2cnet/weights/ and evaluate on the GAICD test split
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
EPOCHS=${EPOCHS:-16}
PY=.venv/bin/python
mkdir -p runs
[ -f runs/saliency.pt ] || $PY -m s2cnet.saliency --data "$DATA/duts" --epochs 4 --stop-after 3 --out runs/saliency.pt
$PY -m s2cnet.train --data "$DATA/gaicd" --init runs/saliency.pt --out runs/s2cnet --epochs "$EPOCHS" --threads 1 &
$PY -m s2cnet.train --data "$DATA/gaicd" --init runs/saliency.pt --out runs/gaic --epochs "$EPOCHS" --threads 1 \
    --model use_graph=false &
wait
$PY -m s2cnet.export --checkpoint runs/s2cnet/final.pt --out s2cnet/weights/s2cnet.pt
$PY -m s2cnet.export --checkpoint runs/gaic/final.pt --out s2cnet/weights/gaic_baseline.pt
$PY -m s2cnet.export --saliency runs/saliency.pt --out s2cnet/weights/saliency.pt
$PY -m s2cnet.evaluate --data "$DATA/gaicd" --split test --objects all
