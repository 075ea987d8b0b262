#!/usr/bin/env bash
# The same-budget table: every seed architecture trained from scratch on
# CamVid for the same number of minutes (default 2, one CPU thread each), then
# tested once. One JSON per model in benchmarks/results/camvid-budget-<model>.json;
# benchmarks/camvid_table.py turns them into the table in docs/benchmarks.md.
# Usage: benchmarks/camvid_table.sh [MINUTES] [MODEL ...]
set -u
minutes=${1:-2}
shift || true
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  # Cheapest first, so that an interrupted sweep still covers the most models.
  models=(lraspp hrnetv2_w18_small unet fdnet segnet_basic gcn pan deeplabv3plus_dpc autodeeplab_s
          deeplabv3plus deeplabv3 pspnet segnet bayesian_segnet fcn8s refinenet unet_original
          deeplabv1 deconvnet deeplabv2)
fi
for model in "${models[@]}"; do
  OMP_NUM_THREADS=1 python "$(dirname "$0")/camvid.py" budget --model "$model" --budget-minutes "$minutes" \
    --threads 1 --no-boundary || echo "camvid_table: $model failed (recorded in its JSON)" >&2
done
