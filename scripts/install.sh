#!/usr/bin/env bash
# Create .venv and install fedkit with its test tools. On a machine without an NVIDIA GPU the
# CPU build torch==2.13.0 is pinned first (a local wheel on the team's machines; it also keeps
# pip from pulling several GB of CUDA packages). pyproject.toml itself accepts torch>=2.3.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch>=2.3"
  else
    "$PY" -m pip install -q "torch==2.13.0"
  fi
fi
"$PY" -m pip install -q -e ".[dev]"
# Optional: the headless browser of the slow HTML-report test (make test-all). Off by default
# (about 400 MB); the test skips, saying why, where no Chromium is found.
if [ "${FEDKIT_BROWSER:-0}" = "1" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends chromium >/dev/null
  else
    echo "FEDKIT_BROWSER=1: no apt-get here; install Chromium by hand for the browser test" >&2
  fi
fi
