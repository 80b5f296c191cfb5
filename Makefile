# Developer and CI entry points. README and .ci/run both call these targets, so the commands
# that build, lint and test the project live in one place.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: the venv is refreshed only when pyproject.toml is newer.
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test lint kafka-jars demo tools bench broker-start broker-stop broker-status image sandbox

venv: $(STAMP)

# The Klaviyo sandbox (sandbox/) is its own distribution: installed here, never in the wheel.
$(STAMP): pyproject.toml sandbox/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "venv: installing the relay, the Klaviyo sandbox and the dev tools into $(VENV) (pip; 1-3 min the first time, seconds with a warm pip cache)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]" -e ./sandbox
	touch $(STAMP)
	@echo "venv: ready ($(BIN)/python)"

# pytest exits 5 when it collected no test: report it rather than fail on it.
test: venv
	$(BIN)/pytest -q $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected"; [ $$rc -eq 5 ]; }

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict consumer dev bench tests
	$(BIN)/mypy --strict -p klaviyo_sandbox

# Resolve the Kafka broker's jars from Maven Central into the cache (done on first use anyway).
kafka-jars: venv
	$(BIN)/python -m dev.kafka_broker fetch

# The main job on its embedded default: local Kafka + Klaviyo sandbox + sample events.
demo: venv
	@echo "demo: starting Kafka (its jars come from Maven Central on first use, ~1 min) and the sandbox; about a minute in all"
	$(BIN)/python -m dev.demo $(DEMO_ARGS)

# The Klaviyo stand-in alone on 127.0.0.1:8089 (SANDBOX_ARGS: `python -m klaviyo_sandbox --help`).
sandbox: venv
	$(BIN)/python -m klaviyo_sandbox $(SANDBOX_ARGS)

# Benchmarks (bench/README.md): the full suite, or BENCH_ARGS=--quick for the CI-sized run.
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

# helm, promtool and prometheus built from the Go module proxy into ~/.cache/klaviyo-relay/bin (cached).
tools:
	@echo "tools: building helm, promtool and prometheus with Go (>= 1.24) from the module proxy into ~/.cache/klaviyo-relay/bin"
	@echo "tools: the first build takes about 5-15 min (promtool and prometheus are the long ones); later runs use the cache"
	bash dev/install-tools.sh

# A broker that outlives the command (state in the jar cache folder), for trying things by hand.
broker-start: venv
	$(BIN)/python -m dev.kafka_broker start

broker-stop: venv
	$(BIN)/python -m dev.kafka_broker stop

broker-status: venv
	$(BIN)/python -m dev.kafka_broker status

# The container image with podman (or docker): dev/image.sh makes the Dockerfile's base image
# locally where none can be pulled, and writes the podman configuration this machine needs.
IMAGE ?= klaviyo-relay:dev
image:
	bash dev/image.sh build $(IMAGE)
