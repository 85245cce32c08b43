#!/usr/bin/env bash
# Install the services the tests start for themselves, only when missing; quiet when all is there.
#
#   * Debian's redis-server (tests/test_redis_sessions.py, tests/test_faults.py), with apt-get
#     (apt-get update only if the first install fails).
#
# The tests run their own `redis-server` on a free loopback port with a temporary directory, so a system
# daemon is not needed: when the package's post-install script starts one, it is stopped again here.
# (Chroma's server, `chroma run`, comes with the chromadb package in the virtual environment.)
#
# Usage: scripts/install_services.sh
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi

echo "install_services: installing Debian's redis-server" >&2
sudo=""
if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
install() {
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        redis-server >>"$log" 2>&1
}
if ! install; then
    $sudo apt-get update -q >>"$log" 2>&1 || true
    if ! install; then
        tail -n 20 "$log" >&2
        echo "install_services: could not install redis-server" >&2
        exit 1
    fi
fi

# Do not leave a system daemon behind (a container without systemd usually never started one).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    $sudo systemctl stop redis-server >/dev/null 2>&1 || true
    $sudo systemctl disable redis-server >/dev/null 2>&1 || true
elif command -v service >/dev/null 2>&1; then
    $sudo service redis-server stop >/dev/null 2>&1 || true
fi

command -v redis-server >/dev/null 2>&1
