# One command per job; each sets itself up on a fresh machine.
#   make serve   install, build the demo repository if missing, serve it on 127.0.0.1:8000
#   make test    install, lint (ruff), type-check (mypy --strict) service/ and models/, run the test suite
#   make docs    regenerate docs/settings.md from service/settings.py
#   make models  install, build the demo repository (train + export + parity)
#   make cluster install, build the demo repository if missing, serve it from 3 replicas
#                behind Debian's nginx on 127.0.0.1:8080 (CLUSTER_ARGS="--measure FILE": run
#                the restart/kill/throughput scenario once and write its figures instead)
#   make bench   install, build the demo repository, run the benchmark (~10 min): docs/bench/
#   make image   build the CPU image seqserve:cpu with Docker, else podman (deploy/image/build.sh; docs/deployment.md).
#                Offline: PYTHON_IMAGE=localhost/bookworm-python:3.11 (made once by `make base-image`);
#                DEMO_REPOSITORY=repository bakes in that repository instead of training (podman)
#   make base-image  the offline base localhost/bookworm-python:3.11 from Debian's packages (debootstrap, root)
#   make image-test  make image, then run it and test it (tests/deploy/test_image.py; not part of make test)
#   make gpu-fallback-test  the GPU flavour (onnxruntime-gpu) on this machine: falls back to the CPU, same answers

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REPOSITORY ?= repository
CHECKPOINTS ?= build/checkpoints
DEMOS := vowels names sunspots
EXTRAS ?= export,demo,cpu,test,bench
CLUSTER_ARGS ?=

.PHONY: install models serve test lint docs prerequisites cluster clean-models

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt deploy/install.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	deploy/install.sh $(PY) $(EXTRAS) --editable
	touch $@

models: install
	@for m in $(DEMOS); do \
	  if [ -f $(REPOSITORY)/$$m/1/model.json ]; then echo "$(REPOSITORY)/$$m/1 exists"; continue; fi; \
	  test -f $(CHECKPOINTS)/$$m.pt || $(PY) -m seqserve train --demo $$m --out $(CHECKPOINTS) || exit 1; \
	  $(PY) -m seqserve export $(CHECKPOINTS)/$$m.pt --repository $(REPOSITORY) --version 1 || exit 1; \
	done

serve: models
	$(PY) -m seqserve serve --repository $(REPOSITORY)

test: install prerequisites lint
	$(PY) -m pytest -q

# ruff (lint and format) over the code, its tests and benchmarks; mypy --strict over the code that ships;
# configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check service models seqserve tests bench
	$(VENV)/bin/ruff format --check service models seqserve tests bench
	$(VENV)/bin/mypy

# docs/settings.md's table, from service/settings.py (tests/test_docs.py fails when it drifts).
docs: install
	$(PY) -m service.settings_doc --write docs/settings.md

# System packages the tests need (nginx for tests/deploy), installed only when missing.
prerequisites:
	@deploy/prerequisites.sh

cluster: models prerequisites
	$(PY) deploy/local_cluster.py --repository $(REPOSITORY) $(CLUSTER_ARGS)

clean-models:
	rm -rf $(REPOSITORY) $(CHECKPOINTS)

# The benchmark: seqserve vs the in-process ceiling and the unbatched floor, same run.
# Writes docs/bench/{results.json,table.md,*.png}; README.md's bench section when it has the markers.
.PHONY: bench
bench: models
	$(PY) -m seqserve bench --demo-repository $(REPOSITORY) --readme README.md

# The container image: deploy/image/build.sh reads FLAVOR, IMAGE, PYTHON_IMAGE, DEMO_REPOSITORY (make passes
# command-line variables on); IMAGE_BUILD_FLAGS go to the engine's build (e.g. --no-cache).
.PHONY: image base-image image-test gpu-fallback-test
image:
	deploy/image/build.sh $(IMAGE_BUILD_FLAGS)

base-image:
	deploy/image/base.sh

# The running image against the host's server, SIGTERM under load, a mounted repository, the health check.
image-test: install image
	SEQSERVE_IMAGE_TEST=1 SEQSERVE_IMAGE="$${IMAGE:-seqserve:$${FLAVOR:-cpu}}" $(PY) -m pytest -q -s -p no:cacheprovider tests/deploy/test_image.py

# The `gpu` extra in its own venv (build/gpu-fallback-*) serving the demo repository without a usable GPU.
gpu-fallback-test: models
	SEQSERVE_GPU_FALLBACK_TEST=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/deploy/test_gpu_fallback.py
