# Developer and CI entry points. README and .ci/run both call these targets, so the commands
# that build, lint and test the project live in one place.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: the venv is refreshed only when pyproject.toml is newer.
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test lint kafka-jars demo tools bench broker-start broker-stop broker-status image

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
	touch $(STAMP)

# pytest exits 5 when it collected no test: report it rather than fail on it.
test: venv
	$(BIN)/pytest -q $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected"; [ $$rc -eq 5 ]; }

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict consumer dev bench

# Resolve the Kafka broker's jars from Maven Central into the cache (done on first use anyway).
kafka-jars: venv
	$(BIN)/python -m dev.kafka_broker fetch

# The main job on its embedded default: local Kafka + Klaviyo sandbox + sample events.
demo: venv
	$(BIN)/python -m dev.demo $(DEMO_ARGS)

# Benchmarks (bench/README.md): the full suite, or BENCH_ARGS=--quick for the CI-sized run.
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

# helm and promtool built from the Go module proxy into ~/.cache/klaviyo-relay/bin (cached).
tools:
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
