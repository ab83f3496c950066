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
#
# PicoLM is compiled inside the image: from PICOLM_SRC (a checkout, copied into
# build/picolm-src/), else fetched from PICOLM_GIT at PICOLM_REF (this needs a network).
# MODEL_URL (MODEL_NAME, MODEL_SHA256) downloads a model into the image's /models.
DOCKER ?= docker
IMAGE ?= picolm-server:latest
BASE_IMAGE ?= python:3.11-slim
BUILD_IMAGE ?= $(BASE_IMAGE)
WHEELHOUSE := build/wheelhouse
PICOLM_SRC ?=
PICOLM_GIT ?=
PICOLM_REF ?=
PICOLM_TARGET ?=
MODEL_URL ?=
MODEL_NAME ?= model.gguf
MODEL_SHA256 ?=
# No network, unless something must be fetched: a model, or PicoLM without a checkout.
DOCKER_NETWORK ?= $(if $(MODEL_URL)$(if $(PICOLM_SRC),,git),host,none)
DOCKER_BUILD = $(DOCKER) build --network $(DOCKER_NETWORK) \
	--build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg BUILD_IMAGE=$(BUILD_IMAGE) \
	$(if $(PICOLM_GIT),--build-arg PICOLM_GIT=$(PICOLM_GIT)) \
	$(if $(PICOLM_REF),--build-arg PICOLM_REF=$(PICOLM_REF)) \
	$(if $(PICOLM_TARGET),--build-arg PICOLM_TARGET=$(PICOLM_TARGET)) \
	$(if $(MODEL_URL),--build-arg MODEL_URL=$(MODEL_URL)) \
	--build-arg MODEL_NAME=$(MODEL_NAME) \
	$(if $(MODEL_SHA256),--build-arg MODEL_SHA256=$(MODEL_SHA256))

.PHONY: wheelhouse picolm-src docker docker-picolm docker-base docker-test

wheelhouse: install
	rm -rf $(WHEELHOUSE)
	$(BIN)/python -m pip wheel --quiet --wheel-dir $(WHEELHOUSE) '.[llama]'
	mkdir -p $(WHEELHOUSE)/debs
	if command -v apt-get >/dev/null; then cd $(WHEELHOUSE)/debs && apt-get download libgomp1; fi

# The PicoLM checkout of PICOLM_SRC in the build context (its git history left out), or
# none.
picolm-src:
	rm -rf build/picolm-src
	if [ -n "$(PICOLM_SRC)" ]; then \
		mkdir -p build/picolm-src && tar -C "$(PICOLM_SRC)" --exclude=.git -c . | tar -C build/picolm-src -x; \
	fi

docker: wheelhouse picolm-src
	$(DOCKER_BUILD) --target full -t $(IMAGE) .

# PicoLM only: no llama.cpp, numpy or embedded model.
docker-picolm: wheelhouse picolm-src
	$(DOCKER_BUILD) --target picolm -t $(IMAGE) .

docker-base:
	BUILD_TAG=picolm-build:bookworm deploy/docker/debian-base.sh picolm-base:bookworm

# Builds the image (tests/support/image_build.py: the tiny test model built in through
# MODEL_URL from a local nginx; PicoLM from PICOLM_SRC, else the stand-in), runs it and
# sends it real requests (PICOLM_BINARY=/path/to/picolm to try your own build in it too).
docker-test: wheelhouse
	$(BIN)/python -m tests.support.image_build --tag $(IMAGE) --target full \
		--base $(BASE_IMAGE) --build-image $(BUILD_IMAGE) --docker $(DOCKER) \
		$(if $(PICOLM_SRC),--picolm-src $(PICOLM_SRC))
	PICOLM_DOCKER_IMAGE=$(IMAGE) $(BIN)/python -m pytest tests/deploy/test_docker.py $(ARGS)

# ---- ARM images, built and tested under emulation (docs/deploy.md) -----------------------
# For each of ARM_ARCHES (Debian's names): a base and a build image made with debootstrap
# (when missing; picolm-base:bookworm-ARCH, picolm-build:bookworm-ARCH), a wheelhouse of
# PyPI's wheels for that architecture (build/wheelhouse-ARCH; nothing is compiled but
# PicoLM), and the PicoLM-only image with PicoLM compiled inside, run under qemu in
# --memory 512m (tests/deploy/test_docker_picolm.py). Needs root, debootstrap,
# qemu-user-static and binfmt-support: .ci/docker-test-arm installs them. Without
# PICOLM_SRC the images carry the stand-in instead of PicoLM.
ARM_ARCHES ?= arm64 armhf

.PHONY: docker-test-arm

docker-test-arm: install
	set -e; for arch in $(ARM_ARCHES); do \
		case $$arch in armhf) platform=arm; venv=--system-site-packages ;; *) platform=$$arch; venv= ;; esac; \
		start=$$(date +%s); \
		$(DOCKER) image inspect picolm-base:bookworm-$$arch >/dev/null 2>&1 \
			&& $(DOCKER) image inspect picolm-build:bookworm-$$arch >/dev/null 2>&1 \
			|| BUILD_TAG=picolm-build:bookworm-$$arch deploy/docker/debian-base.sh picolm-base:bookworm-$$arch $$arch; \
		echo "$$arch: base images ready after $$(($$(date +%s) - start)) s"; \
		$(BIN)/python deploy/docker/foreign_wheelhouse.py $$arch build/wheelhouse-$$arch 2>/dev/null; \
		$(BIN)/python -m tests.support.image_build --tag picolm-server:picolm-$$arch --target picolm \
			--base picolm-base:bookworm-$$arch --build-image picolm-build:bookworm-$$arch \
			--wheelhouse build/wheelhouse-$$arch --venv-options="$$venv" --docker $(DOCKER) \
			$(if $(PICOLM_SRC),--picolm-src $(PICOLM_SRC)); \
		echo "$$arch: image size $$($(DOCKER) image inspect --format '{{.Size}}' picolm-server:picolm-$$arch) bytes"; \
		tests=$$(date +%s); \
		PICOLM_DOCKER_PICOLM_IMAGE=picolm-server:picolm-$$arch PICOLM_DOCKER_ARCH=$$platform \
			$(BIN)/python -m pytest -s --durations=0 tests/deploy/test_docker_picolm.py $(ARGS); \
		echo "$$arch: tests $$(($$(date +%s) - tests)) s; all $$(($$(date +%s) - start)) s"; \
	done
