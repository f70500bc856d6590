#!/usr/bin/env bash
# One entry point for a fresh machine: `bash run.sh quickstart` (the main job) or `bash run.sh test`.
# It creates .venv on first use, installs the CPU torch wheel *before* anything that depends on torch
# (letting pip resolve plain `torch` would pull gigabytes of CUDA wheels), then the package with extras.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import bilevel, rl_adapters, minari, pytest, xdist" >/dev/null 2>&1 || [ "${REINSTALL:-0}" = 1 ]; then
  python -m pip install -q --upgrade pip
  python -c "import torch" >/dev/null 2>&1 || python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[rl,bench,dev]"
fi
case "${1:-quickstart}" in
  quickstart) shift || true; exec python examples/quickstart.py "$@" ;;
  test) shift || true; exec python -m pytest "$@" ;;
  *) echo "usage: bash run.sh [quickstart|test] [args...]" >&2; exit 2 ;;
esac
