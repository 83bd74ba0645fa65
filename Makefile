# One command per job; each sets itself up on a fresh machine.
#   make serve   install, build the demo repository if missing, serve it on 127.0.0.1:8000
#   make test    install, run the test suite
#   make models  install, build the demo repository (train + export + parity)
#   make bench   install, build the demo repository, run the benchmark (~10 min): docs/bench/

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REPOSITORY ?= repository
CHECKPOINTS ?= build/checkpoints
DEMOS := vowels names sunspots
EXTRAS ?= export,demo,cpu,test

.PHONY: install models serve test clean-models

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

test: install
	$(PY) -m pytest -q

clean-models:
	rm -rf $(REPOSITORY) $(CHECKPOINTS)

# The benchmark: seqserve vs the in-process ceiling and the unbatched floor, same run.
# Writes docs/bench/{results.json,table.md,*.png}; README.md's bench section when it has the markers.
.PHONY: bench
bench: models
	$(PY) -c "import matplotlib" 2>/dev/null || deploy/install.sh $(PY) $(EXTRAS),bench --editable
	$(PY) -m seqserve bench --demo-repository $(REPOSITORY) --readme README.md
