# Two entry points: `make run` (the whole pipeline on the embedded default) and `make test`.
# The venv is built once; the stamp makes a second `make` skip the install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test install dry-run run-slurm slurm-up lint bench clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# local run: workflow/profiles/default (all cores, rerun on changed params/code/inputs); add flags via SNAKEMAKE_ARGS
run: $(STAMP)
	snakemake --profile workflow/profiles/default $(SNAKEMAKE_ARGS)

dry-run: $(STAMP)
	snakemake -n --cores all

# the same grid on a Slurm cluster (edit workflow/profiles/slurm/config.yaml for yours first)
run-slurm: $(STAMP)
	snakemake --profile workflow/profiles/slurm $(SNAKEMAKE_ARGS)

# a one-node Slurm cluster on this machine (root, Debian), e.g. to try run-slurm
slurm-up:
	bash .ci/run slurm-up

lint: $(STAMP)
	snakemake --lint

bench: $(STAMP)
	python benchmarks/bench_workflow.py $(BENCH_ARGS)

test: $(STAMP)
	python -m pytest -q $(PYTEST_ARGS)

clean-outputs:
	rm -rf data features runs results logs benchmarks/logs mlruns.db mlruns.db.lock mlartifacts reports/tables reports/figures .snakemake
