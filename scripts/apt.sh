# Sourced by the scripts/install-*.sh: `apt_install NAME PACKAGE...` installs Debian packages for the
# tests, as root, without starting any service they ship (the tests start their own on 127.0.0.1), and
# with one `apt-get update` when the package lists are missing or too old to name a package.
# NAME is the calling script's name, for its messages.

apt_install() {
    name=$1
    shift
    if [ "$(id -u)" -ne 0 ]; then
        echo "$name: run as root (apt-get install $*)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d keeps the packages' maintainer scripts from starting services of their own.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    if ! apt-cache show "$@" >/dev/null 2>&1; then
        apt-get update
    fi
    # A stale package list can name a version the mirror no longer has: update once and try again.
    apt-get install -y --no-install-recommends "$@" || { apt-get update && apt-get install -y --no-install-recommends "$@"; }
}
