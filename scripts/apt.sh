# Sourced by the scripts/install-*.sh: `apt_install NAME PACKAGE...` installs Debian packages for the
# tests, as root, without starting any service they ship (the tests start their own on 127.0.0.1), and
# with one `apt-get update` when the package lists are missing or too old to name a package.
# NAME is the calling script's name, for its messages. `install_programs` (below) wraps it for the
# scripts that install programs on PATH: nothing to do when they are there, checked after installing.

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

# `install_programs NAME "PROGRAM..." "VERSION COMMAND" PACKAGE...`: nothing to do when every PROGRAM is
# on PATH; else apt_install the PACKAGEs, after which every PROGRAM must be on PATH. Says the version.
install_programs() {
    name=$1
    programs=$2
    version=$3
    shift 3
    if on_path $programs; then
        echo "$programs already installed: $(eval "$version")"
        return 0
    fi
    apt_install "$name" "$@"
    on_path $programs
    echo "installed: $(eval "$version")"
}

on_path() {
    for program in "$@"; do
        command -v "$program" >/dev/null 2>&1 || return 1
    done
}
