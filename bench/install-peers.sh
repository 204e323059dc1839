#!/usr/bin/env bash
# Installs the system-level peers of the benchmark (wrk, nginx) and what uWSGI's pip
# build needs (a C toolchain, Python headers, PCRE/OpenSSL/zlib headers).
#
# Idempotent: a package is installed only when it is missing, and `apt-get update` runs
# only when something must be installed. Works as root on a fresh Debian 12; as another
# user it uses sudo when available.
#
# nginx: we need only the binary. bench/run.py runs its own nginx with its own config,
# prefix, pid and temp paths in a temporary directory, so the system service must not be
# started by the package's postinst: a policy-rc.d that answers 101 ("action forbidden")
# is put in place for the duration of the install when none exists, and the service is
# stopped and disabled afterwards in case it was started anyway.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-peers: must run as root (or with sudo available)" >&2
        exit 1
    fi
fi

have_pkg() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# Debian packages, each checked on its own. The binaries are checked as well so that a
# wrk or nginx installed some other way (built from source, nginx.org packages) counts.
want=()
command -v wrk >/dev/null 2>&1 || have_pkg wrk || want+=(wrk)
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    want+=(nginx)
fi
command -v taskset >/dev/null 2>&1 || want+=(util-linux)
# uWSGI's setup.py compiles its core with the C compiler and links libpython; it picks up
# PCRE2, OpenSSL and zlib when their headers are present (routing, https, gzip).
for p in gcc make libc6-dev pkg-config python3-dev libpcre2-dev libssl-dev zlib1g-dev; do
    have_pkg "$p" || want+=("$p")
done

if [ "${#want[@]}" -gt 0 ]; then
    echo "install-peers: installing ${want[*]}"
    export DEBIAN_FRONTEND=noninteractive
    policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    cleanup() {
        if [ "$policy_added" -eq 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
    }
    trap cleanup EXIT
    # Update the lists when they are empty (fresh image) or when the install fails on
    # stale lists.
    if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
        $SUDO apt-get update -q
    fi
    if ! $SUDO apt-get install -y -q --no-install-recommends "${want[@]}"; then
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends "${want[@]}"
    fi
    cleanup
    trap - EXIT
    # If the package started the system nginx anyway (policy-rc.d was already present
    # but permissive), stop it: it would hold port 80 and skew the measurements.
    if printf '%s\n' "${want[@]}" | grep -qx nginx; then
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
        elif [ -x /etc/init.d/nginx ]; then
            $SUDO /etc/init.d/nginx stop >/dev/null 2>&1 || true
        fi
    fi
else
    echo "install-peers: wrk, nginx and build dependencies already present"
fi

# Python headers of the interpreter that will build uWSGI (the project venv when it
# exists): pyenv/python.org builds ship their own, Debian's python3 needs python3-dev.
PYBIN="${PYTHON:-}"
if [ -z "$PYBIN" ]; then
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ -x "$here/.venv/bin/python" ]; then PYBIN="$here/.venv/bin/python"; else PYBIN="python3"; fi
fi
inc="$("$PYBIN" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if [ ! -f "$inc/Python.h" ]; then
    echo "install-peers: $PYBIN has no Python.h in $inc; uWSGI will not build." >&2
    echo "install-peers: install the development headers for that interpreter" \
         "(python3.X-dev for Debian's, or rebuild it with headers)." >&2
    exit 1
fi

for bin in wrk nginx taskset gcc; do
    path="$(command -v "$bin" 2>/dev/null || true)"
    [ -z "$path" ] && [ "$bin" = nginx ] && [ -x /usr/sbin/nginx ] && path=/usr/sbin/nginx
    if [ -z "$path" ]; then
        echo "install-peers: $bin still missing after install" >&2
        exit 1
    fi
done
echo "install-peers: ok (wrk, nginx, taskset, gcc; Python headers in $inc)"
