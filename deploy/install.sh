#!/bin/sh
# Install seqserve with the given extras into the Python that runs this script's
# first argument, at the exact versions in constraints.txt. The Makefile (and so
# CI) and the container images install through this one script.
#   deploy/install.sh PYTHON EXTRAS [--editable]
#   e.g. deploy/install.sh .venv/bin/python export,demo,cpu,test --editable
set -eu
python=$1
extras=$2
root=$(cd "$(dirname "$0")/.." && pwd)
target="$root[$extras]"
if [ "${3:-}" = "--editable" ]; then
    set -- -e "$target"
else
    set -- "$target"
fi
"$python" -m pip install --quiet --no-cache-dir --upgrade pip
"$python" -m pip install --quiet --no-cache-dir -c "$root/constraints.txt" "$@"
