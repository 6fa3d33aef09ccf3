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

. "$(dirname "$0")/apt.sh"
apt_install install-netns-tools.sh nftables iproute2

command -v nft >/dev/null 2>&1
echo "installed: $(nft --version)"
