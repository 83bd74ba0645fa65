#!/bin/sh
# The container engine, with the flags this kind of host needs: Docker when a
# Docker engine answers, else podman. Use it like either:
#   deploy/image/engine.sh build ...   deploy/image/engine.sh run ...
# SEQSERVE_ENGINE=docker|podman picks one; `deploy/image/engine.sh --which` prints the choice.
# podman runs with runc and cgroupfs (Debian 12's default crun refuses hybrid
# cgroups), explicit ulimits on build/run/create (without them the runtime's
# setrlimit is refused) and the host's network for builds (no bridge setup needed).
set -eu
engine=${SEQSERVE_ENGINE:-}
if [ -z "$engine" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null 2>&1; then
        engine=podman
    else
        echo "deploy/image/engine.sh: neither a Docker engine nor podman (Debian: apt-get install podman runc)" >&2
        exit 1
    fi
fi
if [ "${1:-}" = --which ]; then
    echo "$engine"
    exit 0
fi
if [ "$engine" = docker ]; then
    exec docker "$@"
fi
runc=$(command -v runc || echo /usr/sbin/runc)
subcommand=${1:-}
case "$subcommand" in
    build | run | create)
        shift
        exec podman --runtime "$runc" --cgroup-manager=cgroupfs "$subcommand" \
            --ulimit nofile=1024:20000 --ulimit nproc=4096:4096 "$@"
        ;;
    *)
        exec podman --runtime "$runc" --cgroup-manager=cgroupfs "$@"
        ;;
esac
