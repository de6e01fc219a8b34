# scene-kd: `make demo` and `make test` each work as the first command on a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
DEPS_HASH := $(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow test-all bench lint clean

setup: $(STAMP).$(DEPS_HASH)

$(STAMP).$(DEPS_HASH):
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  need=""; \
	  dpkg -s libusb-1.0-0 >/dev/null 2>&1 || need="$$need libusb-1.0-0"; \
	  command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	  if [ -n "$$need" ]; then echo "apt-get install$$need"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null) \
	    || echo "warning: could not apt-get install$$need (viewer browser tests / open3d may be skipped)"; fi; \
	fi
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[all,dev]'
	@rm -f $(STAMP).*; touch $@

demo: setup
	$(BIN)/python -m scene_kd.demo

test: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" -q $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -m "slow" -q $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check scene_kd tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
