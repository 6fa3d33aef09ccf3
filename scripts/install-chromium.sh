#!/bin/sh
# Install Debian's Chromium for the browser tests (tests/test_browser.py drives it with Playwright's
# `executable_path`; no browser is ever downloaded). Idempotent: does nothing when /usr/bin/chromium
# exists. Run as root on Debian.
set -eu

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-chromium.sh: run as root (apt-get install chromium)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing on a fresh image (or too old to name the current package).
apt-get install -y --no-install-recommends chromium || { apt-get update && apt-get install -y --no-install-recommends chromium; }

test -x /usr/bin/chromium
echo "installed: $(/usr/bin/chromium --version 2>/dev/null)"
