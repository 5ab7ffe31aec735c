#!/usr/bin/env bash
# Creates .venv and installs ugc-crop with its test extras. Safe to run again.
# torch/torchvision are pinned first so pip takes the local CPU-runnable builds, not a download.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e ".[test]"
