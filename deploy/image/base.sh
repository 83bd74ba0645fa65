#!/bin/sh
# The offline stand-in for python:3.11-slim-bookworm: Debian 12's own Python
# (3.11, the same release as the slim image) in a minimal Debian root made
# with debootstrap from Debian's packages, imported into the local image
# store. Built once; later calls reuse it (FORCE=1 rebuilds).
#   deploy/image/base.sh [IMAGE]          default localhost/bookworm-python:3.11
# Needs root, debootstrap and podman (apt-get install debootstrap podman runc).
# MIRROR (default: the host's first Debian URI, else deb.debian.org) and
# SECURITY_MIRROR choose where the packages come from.
set -eu
image=${1:-localhost/bookworm-python:3.11}
here=$(cd "$(dirname "$0")" && pwd)
engine="$here/engine.sh"
if [ "${FORCE:-0}" != 1 ] && "$engine" image exists "$image"; then
    echo "$image exists (FORCE=1 rebuilds it)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "deploy/image/base.sh: debootstrap needs root" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "deploy/image/base.sh: debootstrap missing (Debian: apt-get install debootstrap)" >&2
    exit 1
fi
# The host's apt sources, one-line or deb822: the first Debian URI, and the security one.
host_uris=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -n -e 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' -e 's/^URIs: *\([^ ]*\).*/\1/p')
mirror=${MIRROR:-$(printf '%s\n' "$host_uris" | grep -v -e security -e '^$' | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}
security=${SECURITY_MIRROR:-$(printf '%s\n' "$host_uris" | grep security | head -n 1)}
security=${security:-http://deb.debian.org/debian-security}
rootfs=$(mktemp -d /var/tmp/bookworm-python.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror"
cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
# Security and point-release updates, as the slim image would have them.
chroot "$rootfs" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq && apt-get clean'
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log "$rootfs"/tmp/*
ln -sf python3 "$rootfs/usr/bin/python"
tar --numeric-owner -C "$rootfs" -c . | "$engine" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$image"
echo "built $image: $(chroot "$rootfs" python3 --version)"
