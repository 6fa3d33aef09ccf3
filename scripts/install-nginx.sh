#!/bin/sh
# Install nginx (Debian's `nginx` package) for the reverse-proxy tests (tests/test_nginx.py).
# Idempotent: does nothing when nginx is already on PATH. Run as root on Debian; needs no systemd
# (the tests start their own nginx on 127.0.0.1 with a configuration in a temporary directory).
set -eu

if command -v nginx >/dev/null 2>&1; then
    echo "nginx already installed: $(nginx -v 2>&1)"
    exit 0
fi

. "$(dirname "$0")/apt.sh"
apt_install install-nginx.sh nginx

command -v nginx >/dev/null 2>&1
echo "installed: $(nginx -v 2>&1)"
