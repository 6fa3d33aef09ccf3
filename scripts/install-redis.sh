#!/bin/sh
# Install redis-server (Debian's `redis-server` package) for the hub's Redis Streams tests.
# Idempotent: does nothing when redis-server is already on PATH. Run as root on Debian; needs no systemd
# (the tests start their own redis-server on 127.0.0.1 on a free port, see tests/test_hub_redis.py).
set -eu

. "$(dirname "$0")/apt.sh"
install_programs install-redis.sh "redis-server" 'redis-server --version | head -n 1' redis-server
