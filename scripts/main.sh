#!/usr/bin/env bash
# The main job, from a fresh clone: set up the environment, then run the smoke frontier experiment.
# Data: $ALIGNLAB_DATA_DIR (a directory holding imdb/train.jsonl.gz), else the Hugging Face Hub.
# Extra arguments are dotted overrides, e.g.  bash scripts/main.sh train.steps=96 eval.prompts=64
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec alignlab run experiments/imdb_smoke.yaml "$@"
