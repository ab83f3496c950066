# Sourced by the image tests' scripts: Docker from Debian's packages (with what else the
# caller lists in EXTRA_PACKAGES), and a dockerd started when none runs, stopped again
# by stop_dockerd (call it from the caller's EXIT trap).
# shellcheck shell=bash

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
for package in ${EXTRA_PACKAGES:-}; do
    dpkg -s "$package" >/dev/null 2>&1 || need+=("$package")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

dockerd_pid=""
if ! docker info >/dev/null 2>&1; then
    # No bridge network: the tests run containers on the host network, on loopback.
    dockerd --bridge=none --iptables=false --ip-masq=false >/tmp/ci-dockerd.log 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null
fi

stop_dockerd() {
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
    fi
}
