#!/bin/sh
# Install valgrind (Debian's `valgrind` package) for bench/instructions.py, which counts the hub's
# instructions per delivered event under callgrind; its smoke test runs it. Idempotent: does nothing when
# valgrind is already on PATH. Run as root on Debian.
set -eu

. "$(dirname "$0")/apt.sh"
install_programs install-valgrind.sh "valgrind" 'valgrind --version' valgrind
