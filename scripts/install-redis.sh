#!/bin/sh
# Install redis-server (Debian's `redis-server` package) for the hub's Redis Streams tests.
# Idempotent: does nothing when redis-server is already on PATH. Run as root on Debian; needs no systemd
# (the tests start their own redis-server on 127.0.0.1 on a free port, see tests/test_hub_redis.py).
set -eu

if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server already installed: $(redis-server --version | head -n 1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-redis.sh: run as root (apt-get install redis-server)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
# policy-rc.d keeps the package's maintainer scripts from starting a Redis service of their own.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get install -y --no-install-recommends redis-server

command -v redis-server >/dev/null 2>&1
echo "installed: $(redis-server --version | head -n 1)"
