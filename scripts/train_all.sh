#!/usr/bin/env bash
# Reproduces the shipped weights end to end on a 2-core CPU machine from ../shared/data (resumable:
# rerun after a stop; finished steps are skipped, interrupted runs resume from their last epoch).
#   1. S2CNet from the ImageNet MobileNetV2 (the TF2 checkpoint, TensorFlow "SAME" padding), 6 epochs
#      on GAICD's MOS plus FCDB's human-voted same-ratio pairs (a vote-margin-weighted hinge), weights
#      averaged over epochs 3-5 (SWA); beside it, on the other core, the graph-free GAIC-style baseline
#      with the same recipe (~40 min together)
#   2. the saliency head fitted on the shipped backbone (frozen) for the proposer: one backbone pass
#      per photo serves scoring and proposals (~15 min)
#   3. fp16 export into s2cnet/weights/, evaluation on the GAICD test split and the FCDB held-out photos,
#      the metrics written into the weight cards. Each run directory ships its last epoch or its weight
#      average, whichever scored the higher validation SRCC (s2cnet.checkpoint.chosen_checkpoint); the
#      test split is only ever read by the final evaluation
#   4. the subject heads (faces, people, main objects) on the shipped backbone (frozen): teacher labels
#      from YuNet and DeepLabV3 over GAICD, DUTS and FCDB (~5 min on both cores, cached in
#      runs/teachers), the backbone's outputs cached once per photo and mirror (~5 min), then 20 epochs
#      of the heads on the cache (~50 min), added to s2cnet/weights/s2cnet.pt with the face thresholds
#      chosen on validation
# The ImageNet file and the teachers are training inputs only: the project ships what it trains.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
EPOCHS=${EPOCHS:-6}
SWA_FROM=${SWA_FROM:-3}
INIT=${INIT:-$DATA/pretrained/mobilenet_v2_imagenet_tf2.pth}
PY=.venv/bin/python
RECIPE=(--init "$INIT" --model tf_padding=true --fcdb "$DATA/fcdb" --epochs "$EPOCHS" --swa-from "$SWA_FROM"
        --scale-jitter 224,256,288 --listwise-weight 1.0 --val-seed 0 --seed 0 --threads 1)
RUN=runs/in_tf2_tfpad_fcdb
BASE=runs/in_tf2_tfpad_fcdb_nograph
mkdir -p runs
done_run() { [ -f "$1/final.pt" ]; }
done_run $RUN || $PY -m s2cnet.training.train --data "$DATA/gaicd" --out $RUN "${RECIPE[@]}" &
done_run $BASE || $PY -m s2cnet.training.train --data "$DATA/gaicd" --out $BASE "${RECIPE[@]}" --model use_graph=false &
wait
[ -f "$RUN.head.pt" ] || $PY -m s2cnet.training.train_saliency --data "$DATA/duts" --backbone-from $RUN \
    --epochs 4 --lr 2e-3 --threads 1 --out "$RUN.head.pt"
export_weights() {  # the cards record the training command, and the test metrics once they exist
    $PY -m s2cnet.training.export --checkpoint $RUN --saliency-head "$RUN.head.pt" --out s2cnet/weights/s2cnet.pt \
        --command "bash scripts/train_all.sh  # python -m s2cnet.training.train ${RECIPE[*]}" "$@"
    $PY -m s2cnet.training.export --checkpoint $BASE --out s2cnet/weights/gaic_baseline.pt \
        --command "bash scripts/train_all.sh  # python -m s2cnet.training.train ${RECIPE[*]} --model use_graph=false" "$@"
}
export_weights
HEADS=runs/subject_heads.pt  # both steps resume: labelled photos and finished epochs are skipped
.venv/bin/pip install -q -e ".[teachers]"
for s in 0 1; do $PY -m s2cnet.training.teacher_labels --data "$DATA" --out runs/teachers --shard $s/2 & done
wait
$PY -m s2cnet.training.train_subject --data "$DATA" --labels runs/teachers --backbone-from s2cnet/weights/s2cnet.pt \
    --out $HEADS --epochs 20 --val-photos 300 --threads 2
$PY -m s2cnet.training.export --into s2cnet/weights/s2cnet.pt --subject-heads $HEADS
$PY -m s2cnet.training.evaluate --data "$DATA/gaicd" --split test --objects all --fcdb "$DATA/fcdb" --json runs/eval.json
export_weights --metrics runs/eval.json
$PY -m s2cnet.training.export --into s2cnet/weights/s2cnet.pt --subject-heads $HEADS  # the export above rewrote the file
# the coarse readout, distilled from the finished model's own scores (coarse-to-fine scoring)
$PY -m s2cnet.training.coarse --data "$DATA" --weights s2cnet/weights/s2cnet.pt --out runs/coarse --threads 2
$PY -m s2cnet.training.export --into s2cnet/weights/s2cnet.pt --coarse-readout runs/coarse/coarse.pt
