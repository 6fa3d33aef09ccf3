#!/bin/sh
# Install Prometheus and promtool (Debian's `prometheus` package) for the observability tests.
# Idempotent: does nothing when both are already on PATH. Run as root on Debian; needs no systemd
# (the tests start their own Prometheus on 127.0.0.1, see scripts/start-prometheus.sh).
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus and promtool already installed: $(prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-prometheus.sh: run as root (apt-get install prometheus)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
# --no-install-recommends: the exporters and the web UI's extras are not needed.
# policy-rc.d keeps the package's maintainer scripts from starting a Prometheus service of their own.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get install -y --no-install-recommends prometheus

command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
echo "installed: $(prometheus --version 2>&1 | head -n 1)"
