# seqserve, CPU image (ONNX Runtime). Build from the repository root:
#   docker build -t seqserve .
# Stage 1 trains and exports the demo repository with the same install script
# and make target as CI; stage 2 carries only the server and the repository.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml constraints.txt README.md Makefile ./
COPY deploy/install.sh deploy/install.sh
COPY seqserve seqserve
COPY models models
COPY service service
RUN python -m venv .venv \
    && deploy/install.sh .venv/bin/python export,demo,cpu \
    && touch .venv/.installed \
    && make models \
    && python -m venv /opt/seqserve \
    && deploy/install.sh /opt/seqserve/bin/python cpu

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 seqserve
COPY --from=build /opt/seqserve /opt/seqserve
COPY --from=build /src/repository /models
ENV PATH=/opt/seqserve/bin:$PATH \
    SEQSERVE_REPOSITORY=/models \
    SEQSERVE_HOST=0.0.0.0 \
    SEQSERVE_PORT=8000 \
    PYTHONUNBUFFERED=1
VOLUME ["/models"]
USER seqserve
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["seqserve", "serve"]
