#!/usr/bin/env bash
# Install what the browser test (tests/test_ui.py) needs, only when missing; quiet when all is there.
#
#   * Debian's Chromium (/usr/bin/chromium), with apt-get (apt-get update only if the first install fails);
#   * Playwright's Python package in the project's Python: it drives that Chromium through its bundled
#     node driver (no `playwright install`: the browser is Debian's).
#
# Usage: scripts/install_browser.sh            (uses $PYTHON, else .venv/bin/python, else python3)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PLAYWRIGHT_SPEC="${PLAYWRIGHT_SPEC:-playwright>=1.45,<2}"

if [[ ! -x /usr/bin/chromium ]]; then
    echo "install_browser: installing Debian's chromium" >&2
    sudo=""
    if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
    log="$(mktemp)"
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >"$log" 2>&1; then
        $sudo apt-get update -q >>"$log" 2>&1 || true
        if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            echo "install_browser: could not install chromium" >&2
            rm -f "$log"
            exit 1
        fi
    fi
    rm -f "$log"
fi

if ! "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "install_browser: installing $PLAYWRIGHT_SPEC into $PYTHON" >&2
    "$PYTHON" -m pip install -q --disable-pip-version-check "$PLAYWRIGHT_SPEC"
fi
