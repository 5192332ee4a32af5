#!/usr/bin/env bash
# Creates .venv and installs the project into it. `--dev` adds the test and lint tools.
# torch: 2.13.0 where pip can find it (a CPU wheel on CPU-only machines, CUDA builds from PyPI on Linux),
# else the newest torch for this platform. An existing torch in .venv is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extra=""
if [ "${1:-}" = "--dev" ]; then extra="[dev]"; fi
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip_install torch==2.13.0 || pip_install torch
fi
pip_install -e ".${extra}"
.venv/bin/python -c "import server, torch, mcp; print('ready: torch', torch.__version__)"
