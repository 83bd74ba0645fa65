#!/bin/sh
# Build the seqserve image with Docker, or podman where no Docker engine
# answers (deploy/image/engine.sh), and print the time it took and its size.
#   deploy/image/build.sh [more build flags, e.g. --no-cache]
# Settings, from the environment (`make image` passes its variables of the same names):
#   FLAVOR           cpu (default) or gpu
#   IMAGE            the tag (default seqserve:$FLAVOR)
#   PYTHON_IMAGE     base of the build stage and of the CPU image (default python:3.11-slim-bookworm).
#                    Offline: localhost/bookworm-python:3.11, made by deploy/image/base.sh when missing.
#   CUDA_IMAGE       base of the GPU image
#   DEMO_REPOSITORY  a model repository on the host to bake in instead of training the
#                    demo models in the build (podman: mounted read-only into the build)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, TORCH_INDEX_URL   passed on as build arguments when set
#   HOST_PYTHON       whose pip settings the podman build uses (default .venv/bin/python, else python3)
# With podman the build's pip gets the host's pip settings, CA bundle and local
# indexes as read-only mounts (deploy/image/pip_mounts.py): nothing of them is in the image.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
engine="$root/deploy/image/engine.sh"
which=$("$engine" --which)
flavor=${FLAVOR:-cpu}
image=${IMAGE:-seqserve:$flavor}
python_image=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
cuda_image=${CUDA_IMAGE:-nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04}
case "$flavor" in
    cpu) set -- --build-arg RUNTIME_IMAGE="$python_image" --build-arg SERVER_EXTRAS=cpu "$@" ;;
    gpu) set -- --build-arg RUNTIME_IMAGE="$cuda_image" --build-arg SERVER_EXTRAS=gpu,export "$@" ;;
    *) echo "deploy/image/build.sh: FLAVOR is cpu or gpu, not $flavor" >&2; exit 2 ;;
esac
set -- --build-arg PYTHON_IMAGE="$python_image" "$@"
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL TORCH_INDEX_URL; do
    value=$(printenv "$name" || true)
    if [ -n "$value" ]; then
        set -- --build-arg "$name=$value" "$@"
    fi
done
case "$python_image" in
    localhost/bookworm-python*) "$root/deploy/image/base.sh" "$python_image" ;;
    *)
        if ! "$engine" image inspect "$python_image" >/dev/null 2>&1; then
            echo "note: $python_image is pulled from its registry; offline, build with" \
                "PYTHON_IMAGE=localhost/bookworm-python:3.11 (deploy/image/base.sh makes it from Debian's packages)" >&2
        fi
        ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${DEMO_REPOSITORY:-}" ]; then
    if [ "$which" = docker ]; then
        echo "deploy/image/build.sh: DEMO_REPOSITORY needs podman (a read-only mount into the build); unset it to train in the build" >&2
        exit 2
    fi
    demo=$(cd "$DEMO_REPOSITORY" && pwd)
    ls "$demo"/*/*/model.json >/dev/null
    digest=$(tar -C "$demo" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -c . | sha256sum | cut -c1-16)
    set -- --volume="$demo:/mnt/demo-repository:ro" --build-arg DEMO_REPOSITORY=/mnt/demo-repository \
        --build-arg DEMO_REPOSITORY_DIGEST="$digest" "$@"
    echo "demo repository: $demo (content $digest), copied instead of trained"
fi
if [ "$which" = podman ]; then
    host_python=${HOST_PYTHON:-}
    if [ -z "$host_python" ]; then
        host_python=python3
        if [ -x .venv/bin/python ]; then host_python=.venv/bin/python; fi
    fi
    # One flag a line; the paths hold no newlines.
    mounts=$("$host_python" deploy/image/pip_mounts.py "$tmp/pip")
    old_ifs=$IFS
    IFS='
'
    # shellcheck disable=SC2086 # split on newlines only
    set -- $mounts "$@"
    IFS=$old_ifs
    # docker format keeps HEALTHCHECK (the OCI format has no field for it); the host's network.
    set -- --format docker --network=host "$@"
fi
echo "building $image with $which"
start=$(date +%s)
"$engine" build --tag "$image" "$@" .
seconds=$(( $(date +%s) - start ))
size=$("$engine" image inspect --format '{{.Size}}' "$image")
echo "built $image with $which in ${seconds} s; size $(( size / 1000000 )) MB"
