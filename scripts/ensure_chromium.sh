#!/usr/bin/env bash
# Headless Chromium for the HTML-report test (tests/test_report.py). Idempotent: does nothing
# when /usr/bin/chromium exists. Installs Debian's `chromium` package with apt (CI runs as root;
# elsewhere sudo is used when available). Never fails the caller: without a browser the
# report's browser test is skipped with a message, the rest of the suite still runs.
set -u
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: apt-get not found; install Chromium yourself to run the report browser test" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure_chromium: not root and no passwordless sudo; skipping Chromium install" >&2
        exit 0
    fi
fi
echo "ensure_chromium: installing chromium with apt-get (once)" >&2
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; }; then
    echo "ensure_chromium: apt-get install chromium failed; the report browser test will be skipped" >&2
fi
exit 0
