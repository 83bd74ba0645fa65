#!/bin/sh
# System packages the tests and `make cluster` need, on Debian: nginx (tests/deploy,
# the local cluster), strace (tests/service/test_wire.py counts the server's writes) and
# redis-server (stream state shared by replicas: tests/service/streams, the local cluster).
# Installed only when missing, quietly, and without starting Debian's default
# site (no daemon is left listening on port 80).
set -eu
missing=""
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    missing="$missing nginx"
fi
if ! command -v strace >/dev/null 2>&1; then
    missing="$missing strace"
fi
if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    missing="$missing redis-server"
fi
if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "deploy/prerequisites.sh: missing:$missing; install them (Debian: apt-get install$missing)" >&2
    exit 1
fi
if [ ! -e /usr/sbin/policy-rc.d ]; then
    # invoke-rc.d(8): exit status 101 forbids starting services during the install.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
log=$(mktemp)
# shellcheck disable=SC2086 # $missing is a list of package names
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
echo "installed:$missing"
