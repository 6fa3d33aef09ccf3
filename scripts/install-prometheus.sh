#!/bin/sh
# Install Prometheus and promtool (Debian's `prometheus` package) for the observability tests.
# Idempotent: does nothing when both are already on PATH. Run as root on Debian; needs no systemd
# (the tests start their own Prometheus on 127.0.0.1, see scripts/start-prometheus.sh).
set -eu

. "$(dirname "$0")/apt.sh"
install_programs install-prometheus.sh "prometheus promtool" 'prometheus --version 2>&1 | head -n 1' prometheus
