#!/bin/sh
# Install nft (Debian's `nftables` package) for the network tests (tests/test_network.py, tests/netns.py):
# they black-hole a client's network namespace with an nftables drop rule, so its peer vanishes without
# FIN or RST. `ip` (iproute2) and `ss` are needed too and are installed when missing.
# Idempotent: does nothing when nft, ip and ss are on PATH. Run as root on Debian.
set -eu

. "$(dirname "$0")/apt.sh"
install_programs install-netns-tools.sh "nft ip ss" 'nft --version' nftables iproute2
