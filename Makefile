# Courier: local development tasks. `make` lists them.

CARGO ?= cargo
# where the tests find courier-gateway and courier-worker to run them as child processes
COURIER_BIN_DIR ?= $(CURDIR)/target/debug
export COURIER_BIN_DIR
# Development builds (make build, run, test, schemathesis) leave out the
# services' default feature, jemalloc: building it is the longest step of a
# first build, and the allocator changes no behaviour. Release builds (make
# bench, deploy/Dockerfile) keep it. DEV_FEATURES= builds as release does.
DEV_FEATURES ?= --no-default-features

.DEFAULT_GOAL := help
.PHONY: help services build build-services run reset test lint fmt clean

help:
	@echo "Courier make targets:"
	@echo "  make run       start RabbitMQ and Redis (installing them if absent), build and run gateway + worker (dev profile)"
	@echo "  make reset     remove the queues, exchanges and Redis keys of make run's prefix (COURIER_PREFIX, default courier-dev.)"
	@echo "  make test      start RabbitMQ and Redis, build, run the whole test suite and Schemathesis"
	@echo "  make bench     start RabbitMQ and Redis, build release binaries, run the benchmark (BENCH_ARGS=--quick for a smoke run)"
	@echo "  make services  only make RabbitMQ and Redis reachable (COURIER_AMQP_URL, COURIER_REDIS_URL)"
	@echo "  make build     cargo build --bins (without jemalloc, as make run and make test build)"
	@echo "  make lint      rustfmt check and clippy with warnings as errors"
	@echo "  make lint-deploy  hadolint, compose schema, helm lint, Kubernetes schema checks of deploy/"
	@echo "  make fuzz      run each fuzz target for FUZZ_SECONDS (installs cargo-fuzz if absent)"
	@echo "  make schemathesis  property-based API tests against the gateway's OpenAPI document"
	@echo "  make fmt       format the code"
	@echo "  make clean     cargo clean"

services:
	bash deploy/services.sh

build:
	$(CARGO) build --bins $(DEV_FEATURES)

# Only what make run runs: the gateway and the worker.
build-services:
	$(CARGO) build --bins -p courier-gateway -p courier-worker $(DEV_FEATURES)

# Stops on Ctrl-C, or on SIGTERM to make's pid (from a script: a background job
# of a script ignores SIGINT); see deploy/run-dev.sh.
run: services build-services
	bash deploy/run-dev.sh

# The dev services' prefix, as deploy/run-dev.sh sets it; stop make run first.
COURIER_DEV_PREFIX ?= $(if $(filter undefined,$(origin COURIER_PREFIX)),courier-dev.,$(COURIER_PREFIX))
reset: services
	COURIER_PROFILE=dev COURIER_PREFIX="$(COURIER_DEV_PREFIX)" $(CARGO) run --quiet -p courier-gateway $(DEV_FEATURES) -- reset

# The suite, then Schemathesis against the gateway's OpenAPI document (about a
# minute and a half); both always run, and either failing fails the target.
test: services
	$(CARGO) build --bins $(DEV_FEATURES)
	bash deploy/check-openapi.sh
	@status=0; \
	COURIER_BIN_DIR="$(COURIER_BIN_DIR)" CARGO="$(CARGO)" bash deploy/run-tests.sh $(DEV_FEATURES) || status=$$?; \
	echo "== schemathesis"; \
	COURIER_BIN_DIR="$(COURIER_BIN_DIR)" bash deploy/schemathesis.sh || { [ $$status -ne 0 ] || status=1; }; \
	exit $$status

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

.PHONY: lint-deploy
lint-deploy:
	bash deploy/lint-deploy.sh

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

# Benchmark: courier-bench runs the release gateway and worker as child processes
# against the local RabbitMQ and Redis, prints a table and writes bench-results.json.
# Flags go in BENCH_ARGS, e.g. `make bench BENCH_ARGS="--quick"` or
# `make bench BENCH_ARGS="--only ceiling,e2e-t0"`.
COURIER_BENCH_BIN_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release
BENCH_ARGS ?=
.PHONY: bench
bench: services
	$(CARGO) build --release --bins -p courier-gateway -p courier-worker
	COURIER_BIN_DIR="$(COURIER_BENCH_BIN_DIR)" $(CARGO) run --release -p courier-bench -- $(BENCH_ARGS)

# Fuzzing (cargo-fuzz, libFuzzer) of the ingest parser, webhook validation, the
# target policy, sealed secrets and the batch store's encoding; fuzz/ is its own
# workspace. Runs on the stable toolchain without sanitizers, installing
# cargo-fuzz into target/tools when it is not on PATH. Prints each target's
# executions; a crash fails.
# FUZZ_SECONDS per target; FUZZ_TARGETS to pick some.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= ingest_event webhook_input target_policy sealed_secret batch_codec
.PHONY: fuzz
fuzz:
	CARGO="$(CARGO)" FUZZ_SECONDS="$(FUZZ_SECONDS)" FUZZ_TARGETS="$(FUZZ_TARGETS)" bash deploy/fuzz.sh

# Schemathesis against the running gateway's OpenAPI document (dev profile, a
# seeded tenant, local RabbitMQ and Redis): no 5xx, no undocumented answer.
.PHONY: schemathesis
schemathesis: services
	$(CARGO) build --bins -p courier-gateway $(DEV_FEATURES)
	bash deploy/schemathesis.sh
