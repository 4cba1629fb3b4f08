#!/usr/bin/env bash
# Create (or reuse) the virtual environment: the CPU torch wheel first, then alignlab with its dev
# extras. Sourced by scripts/main.sh and scripts/test.sh.
#   ALIGNLAB_VENV   where the environment lives (default: .venv)
#   ALIGNLAB_TORCH  the torch requirement to install first (default: torch==2.13.0, the CPU wheel
#                   on our machines; on a GPU machine the same pin from PyPI is the CUDA build)
set -euo pipefail
VENV="${ALIGNLAB_VENV:-.venv}"
STAMP="$VENV/.alignlab-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "alignlab: setting up $VENV (torch first, then alignlab[dev]) ..." >&2
  python3 -m venv "$VENV"
  # torch before anything that depends on it: an unpinned torch would pull several GB of CUDA packages
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${ALIGNLAB_TORCH:-torch==2.13.0}"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[dev]"
  touch "$STAMP"
fi
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
