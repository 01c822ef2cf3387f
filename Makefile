# Courier: local development tasks. `make` lists them.

CARGO ?= cargo
# where the tests find courier-gateway and courier-worker to run them as child processes
COURIER_BIN_DIR ?= $(CURDIR)/target/debug
export COURIER_BIN_DIR

.DEFAULT_GOAL := help
.PHONY: help services build run test lint fmt clean

help:
	@echo "Courier make targets:"
	@echo "  make run       start RabbitMQ and Redis (installing them if absent), build, run gateway + worker (dev profile)"
	@echo "  make test      start RabbitMQ and Redis, build, run the whole test suite"
	@echo "  make services  only make RabbitMQ and Redis reachable (COURIER_AMQP_URL, COURIER_REDIS_URL)"
	@echo "  make build     cargo build --bins"
	@echo "  make lint      rustfmt check and clippy with warnings as errors"
	@echo "  make fmt       format the code"
	@echo "  make clean     cargo clean"

services:
	bash deploy/services.sh

build:
	$(CARGO) build --bins

run: services build
	bash deploy/run-dev.sh

test: services
	$(CARGO) build --bins
	bash deploy/check-openapi.sh
	COURIER_BIN_DIR="$(COURIER_BIN_DIR)" CARGO="$(CARGO)" bash deploy/run-tests.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
