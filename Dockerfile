# seqserve images. `make image` builds the CPU one with Docker or podman and the
# host's pip settings (docs/deployment.md); by hand, from the repository root:
#   docker build -t seqserve:cpu .                                      CPU: ONNX Runtime, no torch
#   docker build --build-arg RUNTIME_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg SERVER_EXTRAS=gpu,export -t seqserve:gpu .  GPU: CUDA runtime, onnxruntime-gpu, CUDA torch
# The flavours differ only in those two build arguments: the same stages run
# for both, so the file builds with Docker BuildKit and with buildah/podman
# (which cannot resolve a stage chosen by an ARG, `FROM base-${FLAVOR}`).
#
# Build arguments:
#   PYTHON_IMAGE   base of the build stage (Python 3.11 with venv)
#   RUNTIME_IMAGE  base of the image that runs: the same Python image for the CPU,
#                  a CUDA image for the GPU (Python is installed on it when missing)
#   SERVER_EXTRAS  the server's extras: cpu, or gpu,export (onnxruntime-gpu and torch)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, TORCH_INDEX_URL   package indexes for pip
#                  (e.g. TORCH_INDEX_URL=<PyTorch's CPU wheel index> so that the build
#                  stage does not download the CUDA torch); they stay in the build stages
#   DEMO_REPOSITORY  empty (default): train and export the demo models from source;
#                  else a folder, inside the build, holding a model repository to copy
#                  instead (podman build -v "$PWD/repository:/mnt/repository:ro"), with
#                  DEMO_REPOSITORY_DIGEST naming its content so that the cache follows it
#
# Stages: `build` trains and exports the demo repository with the same install
# script and make target as CI (`deploy/install.sh`, `make models`); `base` is
# the runtime base with Python; `server-venv` installs the server with the
# flavour's extras through the same script; `runtime` (the last, the default
# target) is what runs: user 10001, settings, health check and entrypoint.
# hadolint, clean at warning level (tests/deploy), with one reasoned ignore:
# DL3008, apt versions are not pinned: the base image tag fixes the release, and
# pinned Debian/Ubuntu patch versions disappear with every security update.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=python:3.11-slim-bookworm
ARG SERVER_EXTRAS=cpu

# --- the demo repository (CPU torch is enough to train and export) -----------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG DEMO_REPOSITORY=""
ARG DEMO_REPOSITORY_DIGEST=""
WORKDIR /src
COPY pyproject.toml constraints.txt README.md Makefile ./
COPY deploy/install.sh deploy/install.sh
COPY seqserve seqserve
COPY models models
COPY service service
# hadolint ignore=DL3008
RUN if [ -n "$DEMO_REPOSITORY" ]; then \
        echo "demo repository copied from $DEMO_REPOSITORY ($DEMO_REPOSITORY_DIGEST)" \
        && mkdir repository && cp -R "$DEMO_REPOSITORY/." repository/ \
        && ls repository/*/*/model.json; \
    else \
        apt-get update \
        && apt-get install -y --no-install-recommends make \
        && rm -rf /var/lib/apt/lists/* \
        && python -m venv .venv \
        && TORCH_INDEX_URL="$TORCH_INDEX_URL" deploy/install.sh .venv/bin/python export,demo,cpu \
        && touch .venv/.installed \
        && make models; \
    fi

# --- the runtime base: Python with venv (a CUDA image gets its distribution's) -
FROM ${RUNTIME_IMAGE} AS base
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# --- the server's environment, installed by the shared script ----------------
FROM base AS server-venv
ARG SERVER_EXTRAS
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY deploy/install.sh deploy/install.sh
COPY seqserve seqserve
COPY models models
COPY service service
RUN python3 -m venv /opt/seqserve \
    && deploy/install.sh /opt/seqserve/bin/python "$SERVER_EXTRAS"

# --- what runs: identical for both flavours ---------------------------------
FROM base AS runtime
LABEL org.opencontainers.image.title="seqserve" \
      org.opencontainers.image.description="Serve trained PyTorch sequence models (LSTM, BiLSTM, GRU) over HTTP" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --user-group seqserve
COPY --from=server-venv /opt/seqserve /opt/seqserve
COPY --from=build --chown=10001:10001 /src/repository /models
# The demo repository is baked into /models; mount your own there (or point
# SEQSERVE_REPOSITORY elsewhere). Every other setting is a SEQSERVE_* variable.
ENV PATH=/opt/seqserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEQSERVE_REPOSITORY=/models \
    SEQSERVE_HOST=0.0.0.0 \
    SEQSERVE_PORT=8000 \
    SEQSERVE_GRPC_PORT=8001 \
    SEQSERVE_DEVICE=auto \
    SEQSERVE_GRACE_PERIOD_SECONDS=20
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000 8001
# Liveness only: /healthz answers as soon as the process listens; readiness
# (/readyz: models loaded and warmed, not draining) is the orchestrator's probe.
# It asks the port the server listens on (SEQSERVE_PORT), over loopback.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SEQSERVE_PORT', '8000') + '/healthz', timeout=2)"]
# Exec form: the server is PID 1 and gets SIGTERM itself, which starts its drain.
STOPSIGNAL SIGTERM
ENTRYPOINT ["seqserve", "serve"]
