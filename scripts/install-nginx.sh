#!/bin/sh
# Install nginx (Debian's `nginx` package) for the reverse-proxy tests (tests/test_nginx.py).
# Idempotent: does nothing when nginx is already on PATH. Run as root on Debian; needs no systemd
# (the tests start their own nginx on 127.0.0.1 with a configuration in a temporary directory).
set -eu

if command -v nginx >/dev/null 2>&1; then
    echo "nginx already installed: $(nginx -v 2>&1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-nginx.sh: run as root (apt-get install nginx)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# apt-get update only when the package lists do not know nginx yet.
if ! apt-cache show nginx >/dev/null 2>&1; then
    apt-get update
fi
# policy-rc.d keeps the package's maintainer scripts from starting an nginx service of their own
# (it would listen on port 80).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi
# A stale package list can name a version the mirror no longer has: update once and try again.
apt-get install -y --no-install-recommends nginx || { apt-get update && apt-get install -y --no-install-recommends nginx; }

command -v nginx >/dev/null 2>&1
echo "installed: $(nginx -v 2>&1)"
