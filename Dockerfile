# syntax=docker/dockerfile:1
# cascade-gateway: one image for the gateway (`serve`), the learner (`learn`), the model fetcher
# (`models fetch`) and the llama.cpp large-LM server (`python -m llama_cpp.server`); see
# deploy/docker-compose.yml. Models are not baked in: they live in a volume at /models.
#
#   docker build -t cascade-gateway .
#   docker run --rm -v models:/models cascade-gateway models fetch
#   docker run --rm -p 8000:8000 -v models:/models -e LLM_BASE_URL=http://llm:8081/v1 cascade-gateway
#
# tests/test_deploy.py lints this file with hadolint and runs the build stage's install steps
# (deploy/install.sh) in a fresh venv; no Docker engine is needed for either.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: compilers live here only
FROM ${PYTHON_IMAGE} AS build

# torch from PyTorch's CPU wheel index (PyPI's torch brings ~3 GB of CUDA libraries); "" means
# pip's configured indexes (what the test does)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# llama.cpp kernels for any x86-64 CPU with AVX2, not just the build machine's
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF"

# apt packages are not version-pinned (DL3008): Debian's point releases replace the exact
# versions, so pins would break the build; the base image tag fixes the Debian release
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

ENV VENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app/ app/
COPY cascade/ cascade/
COPY policies/ policies/
COPY bench/ bench/
COPY deploy/config.yaml deploy/install.sh deploy/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VENV" && sh deploy/install.sh "$VENV" .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

# libgomp1: the OpenMP runtime llama.cpp's CPU backend links against (no curl: the health check
# uses Python). Not version-pinned (DL3008), as in the build stage. A non-root user owns the
# volumes; named volumes take this ownership when first mounted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cascade \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/cascade cascade \
    && mkdir -p /models /data \
    && chown cascade:cascade /models /data

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CASCADE_MODELS_DIR=/models \
    CASCADE_DATA_DIR=/data \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

USER 10001:10001
WORKDIR /data
VOLUME ["/models", "/data"]
EXPOSE 8000

# ready: the store and the large-LM endpoint both answer (a 503 makes urlopen raise)
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

ENTRYPOINT ["cascade-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--no-llm-server"]
