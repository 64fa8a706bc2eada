#!/usr/bin/env bash
# Build llama.cpp's Python binding (llama-cpp-python, with its OpenAI-compatible server) once, cache the wheel
# outside the repository, and install it with the [server] extras into the venv.
#   bash scripts/build_llama_cpp.sh                 # uses ./.venv and ~/.cache/persona_axes/wheels
#   VENV=/path/to/venv PERSONA_AXES_WHEELS=/some/dir bash scripts/build_llama_cpp.sh
# The tests of persona_axes.engines.openai_http talk to this server (tests/test_engines_llama_server.py).
# PyPI has only a source package for CPU Linux; compiling it takes ~10 minutes on 2 cores, so the wheel is kept in
# the cache folder and reused by every later run (CI included). Native CPU features are off: llama.cpp's AMX code
# path crashes on some CPUs, and a wheel built for the build machine's CPU must also run on the next one.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
VERSION="0.3.36"
WHEELS="${PERSONA_AXES_WHEELS:-$HOME/.cache/persona_axes/wheels}"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
mkdir -p "$WHEELS"
if ! compgen -G "$WHEELS/llama_cpp_python-$VERSION-*.whl" >/dev/null; then
  echo "building llama-cpp-python $VERSION into $WHEELS (about 10 minutes on 2 cores)"
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  pip wheel --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -w "$tmp"
  mv "$tmp"/llama_cpp_python-"$VERSION"-*.whl "$WHEELS"/   # a wheel appears in the cache only when complete
fi
# the cached wheel wins over the source package (--only-binary); its dependencies come pinned from constraints.txt
pip install -c constraints.txt --find-links "$WHEELS" --only-binary llama-cpp-python "llama-cpp-python[server]==$VERSION"
"$VENV/bin/python" -c "import llama_cpp, uvicorn; print('llama_cpp', llama_cpp.__version__)"
