#!/bin/sh
# System packages the deployment tests and `make cluster` need, on Debian: nginx.
# Installed only when missing, quietly, and without starting Debian's default
# site (no daemon is left listening on port 80).
set -eu
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "deploy/prerequisites.sh: nginx is missing; install it (Debian: apt-get install nginx)" >&2
    exit 1
fi
if [ ! -e /usr/sbin/policy-rc.d ]; then
    # invoke-rc.d(8): exit status 101 forbids starting services during the install.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
log=$(mktemp)
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
echo "installed nginx $(/usr/sbin/nginx -v 2>&1 | sed 's/.*nginx\///')"
