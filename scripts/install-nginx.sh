#!/bin/sh
# Install nginx (Debian's `nginx` package) for the reverse-proxy tests (tests/test_nginx.py).
# Idempotent: does nothing when nginx is already on PATH. Run as root on Debian; needs no systemd
# (the tests start their own nginx on 127.0.0.1 with a configuration in a temporary directory).
set -eu

. "$(dirname "$0")/apt.sh"
install_programs install-nginx.sh "nginx" 'nginx -v 2>&1' nginx
