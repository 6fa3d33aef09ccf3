#!/bin/sh
# Install nft (Debian's `nftables` package) for the network tests (tests/test_network.py, tests/netns.py):
# they black-hole a client's network namespace with an nftables drop rule, so its peer vanishes without
# FIN or RST. `ip` (iproute2) and `ss` are needed too and are installed when missing.
# Idempotent: does nothing when nft, ip and ss are on PATH. Run as root on Debian.
set -eu

if command -v nft >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1; then
    echo "netns tools already installed: $(nft --version)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-netns-tools.sh: run as root (apt-get install nftables iproute2)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show nftables >/dev/null 2>&1; then
    apt-get update
fi
# A stale package list can name a version the mirror no longer has: update once and try again.
apt-get install -y --no-install-recommends nftables iproute2 ||
    { apt-get update && apt-get install -y --no-install-recommends nftables iproute2; }

command -v nft >/dev/null 2>&1
echo "installed: $(nft --version)"
