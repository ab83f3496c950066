# picolm-server image, with PicoLM compiled inside for the architecture it is built on.
# At start it serves, unless PICOLM_CONFIG names a configuration of your own
# (deploy/docker/entrypoint.sh):
#   - a model at /models/model.gguf (built in with MODEL_URL, or mounted) on the image's
#     PicoLM (/usr/local/bin/picolm; deploy/docker/picolm.yaml);
#   - otherwise the embedded SmolLM2-135M-Instruct on llama.cpp (deploy/docker/embedded.yaml).
#
# Targets (docs/deploy.md):
#   full (the default)  PicoLM, llama.cpp and the embedded model
#   picolm              PicoLM only: no llama.cpp, numpy or embedded model, for small boards
#
# Ways to build it:
#   make docker [PICOLM_SRC=/path/to/picolm] [MODEL_URL=...]
#                       wheels built on the host first (make wheelhouse), then a build
#                       that needs no network (but for MODEL_URL, or a PicoLM fetched
#                       with git): works on a machine that cannot reach PyPI or Debian.
#   docker build -t picolm-server .
#                       without a wheelhouse: pip fetches everything from PyPI and compiles
#                       llama-cpp-python; PicoLM is fetched from PICOLM_GIT.
#
# Only the classic builder's features are used (Docker 20.10's default builder works).
#
# Build arguments:
#   BASE_IMAGE     any Debian-based image with python3 and its venv module (its Python
#                  version must match the wheelhouse's: cp311 by default)
#   BUILD_IMAGE    the image PicoLM is compiled in (default BASE_IMAGE; gcc and make are
#                  installed from Debian when it lacks them)
#   PICOLM_GIT, PICOLM_REF    where PicoLM comes from when the build context holds no
#                  checkout (build/picolm-src/, which make docker PICOLM_SRC=... fills)
#   PICOLM_TARGET  a target of PicoLM's Makefile; default by architecture: arm64 "pi",
#                  32-bit ARM "pi-arm32", x86-64 "picolm" (any x86-64 CPU; "native" would
#                  tune for the build machine's CPU: deploy/docker/picolm-build.sh)
#   MODEL_URL, MODEL_NAME, MODEL_SHA256    a model downloaded into /models at build time
#                  (picolm-server pull: a failed download or a checksum mismatch fails
#                  the build)
#   WHEELHOUSE     the wheelhouse folder in the build context (default build/wheelhouse)
#   VENV_OPTIONS   extra options of python3 -m venv (--system-site-packages lets the
#                  venv use Debian's python3-yaml where PyPI has no PyYAML wheel)
ARG BASE_IMAGE=python:3.11-slim
ARG BUILD_IMAGE=${BASE_IMAGE}

# ---- PicoLM, compiled from source --------------------------------------------------------
FROM ${BUILD_IMAGE} AS picolm-build
ARG PICOLM_GIT=https://github.com/RightNow-AI/picolm
ARG PICOLM_REF=
ARG PICOLM_TARGET=
# The build script, and the checkout when the context has one (the pattern matches
# nothing otherwise, and the script then fetches PICOLM_GIT).
COPY deploy/docker/picolm-build.sh build/picolm-sr[c] /picolm-src/
RUN sh /picolm-src/picolm-build.sh /picolm-src

# ---- the server without llama.cpp: its venv ----------------------------------------------
FROM ${BASE_IMAGE} AS venv-picolm
ARG WHEELHOUSE=build/wheelhouse
ARG VENV_OPTIONS=
COPY . /src
RUN sh /src/deploy/docker/venv.sh "$WHEELHOUSE"

# ---- a model, when MODEL_URL names one ---------------------------------------------------
FROM venv-picolm AS model
ARG MODEL_URL=
ARG MODEL_NAME=model.gguf
ARG MODEL_SHA256=
RUN set -eu; \
    mkdir -p /models; \
    if [ -n "$MODEL_URL" ]; then \
        /opt/picolm-server/bin/picolm-server pull "$MODEL_URL" --models-dir /models \
            --name "$MODEL_NAME" ${MODEL_SHA256:+--sha256 "$MODEL_SHA256"}; \
    fi

# ---- what both images share --------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG MODEL_NAME=model.gguf
RUN set -eu; \
    useradd --uid 10001 --user-group --home-dir /var/lib/picolm-server \
        --create-home --shell /usr/sbin/nologin picolm; \
    install -d -o picolm -g picolm /var/cache/picolm-server
COPY --from=picolm-build /usr/local/bin/picolm /usr/local/bin/picolm
COPY --from=model /models /models
COPY deploy/docker/picolm.yaml deploy/docker/embedded.yaml /etc/picolm-server/
COPY deploy/docker/entrypoint.sh /usr/local/bin/picolm-server-entrypoint
ENV PATH=/opt/picolm-server/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_NAME=${MODEL_NAME}
WORKDIR /var/lib/picolm-server
EXPOSE 8080
# Asks the server on the port PICOLM_SERVER__PORT names (8080 by default): set the port
# that way, not with a flag, or override this check. /health answers 503 when the engine
# cannot run, and the check fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PICOLM_SERVER__PORT', '8080'), timeout=4)"]
ENTRYPOINT ["picolm-server-entrypoint"]

# ---- the PicoLM-only image: make docker-picolm, or --target picolm -----------------------
FROM runtime AS picolm
# The embedded model's configuration is of no use without llama.cpp.
RUN rm /etc/picolm-server/embedded.yaml
COPY --from=venv-picolm /opt/picolm-server /opt/picolm-server
USER picolm

# ---- the server with llama.cpp and the embedded model: its venv --------------------------
FROM ${BASE_IMAGE} AS venv-full
ARG WHEELHOUSE=build/wheelhouse
ARG VENV_OPTIONS=
COPY . /src
RUN sh /src/deploy/docker/venv.sh "$WHEELHOUSE" llama

# ---- the full image (the default target) -------------------------------------------------
FROM runtime AS full
# llama.cpp's OpenMP runtime: from the wheelhouse's .deb files when there are some (no
# network needed), otherwise from Debian.
COPY --from=venv-full /opt/debs /tmp/debs
RUN set -eu; \
    if ls /tmp/debs/*.deb >/dev/null 2>&1; then \
        dpkg -i /tmp/debs/*.deb; \
    elif ! ldconfig -p | grep -q libgomp.so.1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends libgomp1; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    rm -rf /tmp/debs
COPY --from=venv-full /opt/picolm-server /opt/picolm-server
USER picolm
