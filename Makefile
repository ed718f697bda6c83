# Two entry points: `make run` (the whole pipeline on the embedded default) and `make test`.
# The venv is built once; the stamp makes a second `make` skip the install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# pip installs without compiling bytecode (--no-compile: ~50 s of a ~120 s install on 2 cores goes to compiling
# every file of every package); Python compiles each module the first time a job imports it and keeps the .pyc.
# Keeping needs bytecode writing on, so make's recipes clear PYTHONDONTWRITEBYTECODE (without it every job would
# recompile torch & co., ~2 s a job; benchmarks: docs/benchmarks.md#make-run-from-a-fresh-clone).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test install dry-run run-slurm slurm-up lint bench clean-outputs pull screenshots

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q --no-compile -e '.[test]'
	touch $(STAMP)

# local run: workflow/profiles/default (all cores, rerun on changed params/code/inputs); add flags via SNAKEMAKE_ARGS.
# Its last step records the outputs in DVC (cache + dvc.lock: `fga dvc-record`, the Snakefile's onsuccess).
run: $(STAMP)
	@$(clear_stale_lock)
	snakemake --profile workflow/profiles/default $(SNAKEMAKE_ARGS)

# A killed Snakemake leaves .snakemake/locks behind and the next run stops with a LockException. Clear the lock
# when no Snakemake process of this checkout is alive; otherwise say in one line what is running and stop.
# ([b]in/snakemake matches the running Snakemake's command line but not this recipe's own shell.)
define clear_stale_lock
if [ -n "$$(ls -A .snakemake/locks 2>/dev/null)" ]; then \
  pids=$$(for p in $$(pgrep -f '[b]in/snakemake'); do [ "$$(readlink /proc/$$p/cwd 2>/dev/null)" = "$(CURDIR)" ] && echo $$p; done); \
  if [ -n "$$pids" ]; then echo "make: Snakemake is already running in this checkout (pid $$(echo $$pids)); wait for it or stop it first"; exit 1; fi; \
  echo "make: clearing the stale Snakemake lock of a run that was killed (no Snakemake of this checkout is alive)"; \
  snakemake --unlock --quiet >/dev/null; \
fi
endef

# a colleague's recorded run: `dvc pull` brings the outputs of the committed dvc.lock; `snakemake --touch
# --forceall` then stamps them in the DAG's order and writes Snakemake's metadata (no job runs), so a
# `snakemake -n` and a `dvc status` both find nothing to do
pull: $(STAMP)
	dvc pull --quiet $(DVC_ARGS)
	snakemake --profile workflow/profiles/default --touch --forceall --quiet rules

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

# refresh the docs' MLflow UI screenshots (reports/mlflow_ui.png: runs list with the seed means;
# reports/mlflow_ui_table.png: the report's main table); plain test runs leave them untouched
screenshots: $(STAMP)
	FGA_UPDATE_SCREENSHOTS=1 python -m pytest -q tests/test_mlflow_ui.py

clean-outputs:
	rm -rf data features runs results logs benchmarks/logs mlruns.db mlruns.db.lock mlartifacts reports/tables reports/figures .snakemake
