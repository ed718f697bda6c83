# Two entry points: `make run` (the whole pipeline on the embedded default) and `make test`.
# The venv is built once; the stamp makes a second `make` skip the install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test install dry-run clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	snakemake --cores all $(SNAKEMAKE_ARGS)

dry-run: $(STAMP)
	snakemake -n --cores all

test: $(STAMP)
	python -m pytest -q $(PYTEST_ARGS)

clean-outputs:
	rm -rf data features runs results logs benchmarks/logs mlruns.db mlruns.db.lock mlartifacts reports/tables reports/figures .snakemake
