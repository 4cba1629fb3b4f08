#!/usr/bin/env bash
# The tests, from a fresh clone: set up the environment, then lint, type-check and run pytest.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m slow   or   bash scripts/test.sh -k dpo
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
# one command per line: under `set -e` a failure inside an `a && b` list does not stop the script
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy alignlab benchmarks scripts  # the benchmarks and scripts import alignlab: a renamed function fails here, not at run time
echo "== pytest"
exec python -m pytest "$@"
