#!/bin/sh
# The image's install recipe: the Dockerfile's build stage runs it, and tests/test_deploy.py runs
# the same lines in a fresh venv so that the recipe cannot rot.
#
#   deploy/install.sh VENV SRC
#
# installs into the virtual environment VENV: a pinned pip, torch (CPU build), then a wheel built
# from the project at SRC together with its dependencies (llama-cpp-python compiles from source:
# it needs a C/C++ compiler and cmake; CMAKE_ARGS reaches its build).
#
# TORCH_INDEX_URL: where torch comes from. The Dockerfile sets PyTorch's CPU wheel index (the
# default torch on PyPI pulls in ~3 GB of CUDA libraries); empty means pip's configured indexes.
set -eu

venv=$1
src=$2
pip="$venv/bin/python -m pip"

# keep in step with pyproject.toml (tests/test_deploy.py checks)
PIP_VERSION=26.3
TORCH_VERSION=2.13.0

$pip install --upgrade "pip==$PIP_VERSION"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    $pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
else
    $pip install "torch==$TORCH_VERSION"
fi

wheels=$(mktemp -d)
$pip wheel --no-deps --wheel-dir "$wheels" "$src"
$pip install "$wheels"/cascade_gateway-*.whl
rm -rf "$wheels"

# the installed command starts, and the wheel carries its default configuration (-I: import the
# installed package, not a source tree in the current directory)
"$venv/bin/cascade-gateway" --help >/dev/null
"$venv/bin/python" -I -c "import cascade.config as c
assert c.DEFAULT_CONFIG.name == 'default_config.yaml', c.DEFAULT_CONFIG
c.load_config()"
