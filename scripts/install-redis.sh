#!/bin/sh
# Install redis-server (Debian's `redis-server` package) for the hub's Redis Streams tests.
# Idempotent: does nothing when redis-server is already on PATH. Run as root on Debian; needs no systemd
# (the tests start their own redis-server on 127.0.0.1 on a free port, see tests/test_hub_redis.py).
set -eu

if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server already installed: $(redis-server --version | head -n 1)"
    exit 0
fi

. "$(dirname "$0")/apt.sh"
apt_install install-redis.sh redis-server

command -v redis-server >/dev/null 2>&1
echo "installed: $(redis-server --version | head -n 1)"
