# Everything runs from a virtual environment in .venv, made on first use.
# llama-cpp-python compiles from source the first time (about 3-6 minutes on 2 cores);
# pip keeps the built wheel in its cache, so later installs take seconds.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install run test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[llama,dev]'
	touch $(STAMP)

run: install
	$(BIN)/picolm-server $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info

# ---- container image (docs/deploy.md) ----------------------------------------------------
# make docker: wheels are built here first (build/wheelhouse, with the llama.cpp wheel from
# pip's cache), then the image is built with no network at all. BASE_IMAGE's Python must
# be the one of $(PYTHON) (3.11 by default); the .deb files come from this machine's apt,
# so its Debian release should be the base's (else leave them out: the build then asks
# Debian for libgomp1). Where no registry can be reached: make docker-base first.
DOCKER ?= docker
IMAGE ?= picolm-server:latest
BASE_IMAGE ?= python:3.11-slim
WHEELHOUSE := build/wheelhouse

.PHONY: wheelhouse docker docker-base docker-test

wheelhouse: install
	rm -rf $(WHEELHOUSE)
	$(BIN)/python -m pip wheel --quiet --wheel-dir $(WHEELHOUSE) '.[llama]'
	mkdir -p $(WHEELHOUSE)/debs
	if command -v apt-get >/dev/null; then cd $(WHEELHOUSE)/debs && apt-get download libgomp1; fi

docker: wheelhouse
	$(DOCKER) build --network none --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) .

docker-base:
	deploy/docker/debian-base.sh picolm-base:bookworm

# Builds the image, runs it and sends it real requests (PICOLM_BINARY=/path/to/picolm to
# try your own PicoLM build in it too).
docker-test: docker
	PICOLM_DOCKER_IMAGE=$(IMAGE) $(BIN)/python -m pytest tests/deploy/test_docker.py $(ARGS)
