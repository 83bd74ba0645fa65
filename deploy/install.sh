#!/bin/sh
# Install seqserve with the given extras into the Python that runs this script's
# first argument, at the exact versions in constraints.txt. The Makefile (and so
# CI) and the container images install through this one script.
#   deploy/install.sh PYTHON EXTRAS [--editable]
#   e.g. deploy/install.sh .venv/bin/python export,demo,cpu,test --editable
#        deploy/install.sh /opt/seqserve/bin/python cpu             (the CPU image's server)
#        deploy/install.sh /opt/seqserve/bin/python gpu,export      (the GPU image's server)
# TORCH_INDEX_URL, when set, is an extra package index for torch (e.g. PyTorch's
# CPU wheel index, so a build stage does not pull the CUDA build).
set -eu
usage="usage: deploy/install.sh PYTHON EXTRAS [--editable]"
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "$usage" >&2
    exit 2
fi
python=$1
extras=$2
if [ $# -eq 3 ] && [ "$3" != "--editable" ]; then
    echo "$usage" >&2
    exit 2
fi
case ",$extras," in
    *,cpu,*)
        case ",$extras," in
            *,gpu,*)
                # NOTE: onnxruntime and onnxruntime-gpu install the same import package;
                # together, whichever pip writes last wins and the other is broken.
                echo "deploy/install.sh: extras 'cpu' and 'gpu' exclude each other (one ONNX Runtime per environment)" >&2
                exit 2
                ;;
        esac
        ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
target="$root[$extras]"
if [ "${3:-}" = "--editable" ]; then
    set -- -e "$target"
else
    set -- "$target"
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    set -- --extra-index-url "$TORCH_INDEX_URL" "$@"
fi
"$python" -m pip install --quiet --no-cache-dir --upgrade pip
"$python" -m pip install --quiet --no-cache-dir -c "$root/constraints.txt" "$@"
