#!/usr/bin/env bash
# The tests, from a fresh clone: set up the environment, then lint, type-check and run pytest.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m slow   or   bash scripts/test.sh -k dpo
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
echo "== ruff" && ruff check . && ruff format --check .
echo "== mypy" && mypy alignlab
echo "== pytest" && exec python -m pytest "$@"
