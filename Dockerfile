# seqserve images. Build from the repository root:
#   docker build -t seqserve:cpu .                              CPU: ONNX Runtime, no torch
#   docker build --build-arg FLAVOR=gpu -t seqserve:gpu .       GPU: CUDA runtime, onnxruntime-gpu, CUDA torch
# Faster CPU builds: --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index>, so
# the build stage that trains the demo models does not download the CUDA torch.
#
# Stages: `build` trains and exports the demo repository with the same install
# script and make target as CI (`deploy/install.sh`, `make models`);
# `server-venv` installs the server with the flavour's extras through the same
# script; `runtime` is one stage for both flavours (same user, settings,
# health check and entrypoint): only `base-cpu` / `base-gpu` differ.
# hadolint, clean at warning level (tests/deploy), with two reasoned ignores:
# DL3008, apt versions are not pinned: the base image tag fixes the release, and
# pinned Debian/Ubuntu patch versions disappear with every security update;
# DL3006, `base-${FLAVOR}` names a stage of this file, not an image to tag.
ARG FLAVOR=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04

# --- the demo repository (CPU torch is enough to train and export) -----------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
WORKDIR /src
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml constraints.txt README.md Makefile ./
COPY deploy/install.sh deploy/install.sh
COPY seqserve seqserve
COPY models models
COPY service service
RUN python -m venv .venv \
    && TORCH_INDEX_URL="$TORCH_INDEX_URL" deploy/install.sh .venv/bin/python export,demo,cpu \
    && touch .venv/.installed \
    && make models

# --- the two bases: the only place the flavours differ ---------------------
FROM ${PYTHON_IMAGE} AS base-cpu
ENV SERVER_EXTRAS=cpu

FROM ${CUDA_IMAGE} AS base-gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# PyPI's torch for Linux x86_64 is the CUDA build; onnxruntime-gpu replaces onnxruntime.
ENV SERVER_EXTRAS=gpu,export

# --- the server's environment, installed by the shared script ----------------
# hadolint ignore=DL3006
FROM base-${FLAVOR} AS server-venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY deploy/install.sh deploy/install.sh
COPY seqserve seqserve
COPY models models
COPY service service
RUN python3 -m venv /opt/seqserve \
    && deploy/install.sh /opt/seqserve/bin/python "$SERVER_EXTRAS"

# --- what runs: identical for both flavours ---------------------------------
# hadolint ignore=DL3006
FROM base-${FLAVOR} AS runtime
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
    SEQSERVE_DEVICE=auto \
    SEQSERVE_GRACE_PERIOD_SECONDS=20
VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000
# Liveness only: /healthz answers as soon as the process listens; readiness
# (/readyz: models loaded and warmed, not draining) is the orchestrator's probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Exec form: the server is PID 1 and gets SIGTERM itself, which starts its drain.
STOPSIGNAL SIGTERM
ENTRYPOINT ["seqserve", "serve"]
