#!/bin/sh
# Install valgrind (Debian's `valgrind` package) for bench/instructions.py, which counts the hub's
# instructions per delivered event under callgrind; its smoke test runs it. Idempotent: does nothing when
# valgrind is already on PATH. Run as root on Debian.
set -eu

if command -v valgrind >/dev/null 2>&1; then
    echo "valgrind already installed: $(valgrind --version)"
    exit 0
fi

. "$(dirname "$0")/apt.sh"
apt_install install-valgrind.sh valgrind

command -v valgrind >/dev/null 2>&1
echo "installed: $(valgrind --version)"
