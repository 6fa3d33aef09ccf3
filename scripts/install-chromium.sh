#!/bin/sh
# Install Debian's Chromium for the browser tests (tests/test_browser.py drives it with Playwright's
# `executable_path`; no browser is ever downloaded), and fonts for the CJK and emoji the demo page shows
# (without them its screenshot shows empty boxes). Idempotent: does nothing when all are installed.
# Run as root on Debian.
set -eu

PACKAGES="chromium fonts-wqy-microhei fonts-noto-color-emoji"

installed() {
    [ -x /usr/bin/chromium ] || return 1
    for package in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || return 1
    done
}

if installed; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

. "$(dirname "$0")/apt.sh"
apt_install install-chromium.sh $PACKAGES

installed
echo "installed: $(/usr/bin/chromium --version 2>/dev/null)"
