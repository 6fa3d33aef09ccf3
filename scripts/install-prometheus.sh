#!/bin/sh
# Install Prometheus and promtool (Debian's `prometheus` package) for the observability tests.
# Idempotent: does nothing when both are already on PATH. Run as root on Debian; needs no systemd
# (the tests start their own Prometheus on 127.0.0.1, see scripts/start-prometheus.sh).
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus and promtool already installed: $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

. "$(dirname "$0")/apt.sh"
apt_install install-prometheus.sh prometheus

command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
echo "installed: $(prometheus --version 2>&1 | head -n 1)"
