#!/usr/bin/env bash
# Install this project into a Python environment: the one recipe behind `make install` (a local .venv, CPU
# torch) and cluster.yaml's setup_commands (a Ray node's Python, the CUDA build of torch).
#
#   PYTHON=.venv/bin/python scripts/install.sh                                # CPU torch from the default index
#   TORCH_INDEX=https://download.pytorch.org/whl/cu128 scripts/install.sh     # CUDA torch on a GPU node
#   DEV=1 ...                                                                  # also the test/lint tools
#
# Order matters: torch first (from TORCH_INDEX when given), then the requirements with torch pinned so
# nothing replaces it, then moshi with --no-deps (moshi 0.2.13 pins torch<2.10; what it needs at run time
# is in requirements.txt), then this project in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MOSHI_SPEC=${MOSHI_SPEC:-moshi==0.2.13}
TORCH_INDEX=${TORCH_INDEX:-}
pip=("$PYTHON" -m pip install --quiet)

if [[ -n "$TORCH_INDEX" ]]; then
  "${pip[@]}" "$TORCH_SPEC" --index-url "$TORCH_INDEX"
else
  "${pip[@]}" "$TORCH_SPEC"
fi
requirements=(-r requirements.txt)
[[ "${DEV:-0}" == 1 ]] && requirements+=(-r requirements-dev.txt)
"${pip[@]}" "${requirements[@]}" "$TORCH_SPEC"
"${pip[@]}" --no-deps "$MOSHI_SPEC"
"${pip[@]}" --no-deps -e .
"$PYTHON" - <<'CHECK'
import moshi, ray, torch, serve_app
cuda = torch.version.cuda or "none"
print(f"installed: torch {torch.__version__} (CUDA {cuda}), moshi {moshi.__version__}, ray {ray.__version__}")
CHECK
