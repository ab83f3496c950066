#!/bin/sh
# The container's start: which configuration serves, unless PICOLM_CONFIG names one.
#   - a model at /models/$MODEL_NAME (model.gguf unless the image was built or the
#     container started with another MODEL_NAME; built in with MODEL_URL, or mounted):
#     /etc/picolm-server/picolm.yaml, the image's PicoLM on that model;
#   - none: /etc/picolm-server/embedded.yaml, the embedded SmolLM2-135M on llama.cpp. The
#     PicoLM-only image has no embedded model: it starts with picolm.yaml all the same,
#     and the server's error names the model file that is missing.
# Arguments are the server's flags (docker run IMAGE --api-key ...).
set -eu
config=/etc/picolm-server
if [ -n "${PICOLM_CONFIG:-}" ]; then
    exec picolm-server "$@"
fi
model="${PICOLM_PICOLM__MODEL_PATH:-/models/${MODEL_NAME:-model.gguf}}"
if [ -f "$model" ] || [ ! -f "$config/embedded.yaml" ]; then
    echo "serving $model on PicoLM ($config/picolm.yaml)" >&2
    export PICOLM_CONFIG="$config/picolm.yaml"
    exec picolm-server --model-path "$model" "$@"
fi
echo "no model at $model: serving the embedded SmolLM2-135M-Instruct ($config/embedded.yaml)" >&2
export PICOLM_CONFIG="$config/embedded.yaml"
exec picolm-server "$@"
