# fga workflow: dataset -> region features -> training per backbone x method x seed -> recall -> report.
# Rules only declare; every step is an `fga` CLI verb (python -m fga), so dvc.yaml runs the same commands.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="[a-z0-9_]+",
    backbone="[A-Za-z0-9_]+",
    text="[A-Za-z0-9_]+",
    method="[a-z0-9_]+",
    seed=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/sweeps.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
        main_runs(f"{RESULTS}/{RUN}/robustness.json"),


# A successful run of the default target (incl. `--touch`) is complete and current: record it in DVC (cache +
# dvc.lock) so `dvc status` agrees and `dvc push` carries it (fga/versioning.py). The record copies into the
# cache and leaves the files as they are, so Snakemake's mtimes survive. A run of other targets records
# nothing (part of the grid may be stale), nor does a run with nothing to do. Snakemake also counts the
# wildcard-free rules of --forcerun and --prioritize as targets (`--forcerun report`: all and report), so the
# test is that `all` is among them; --until and --omit-from take it out.
#
# First, whatever the targets: the jobs keep their MLflow runs on disk (--defer-tracking in COMMON) and the end of
# every run logs them (`fga tracking sync`); onerror does the same, so the runs of the jobs that finished are in
# MLflow even when another job failed. Nothing kept costs a directory listing. A sync that fails (tracking server
# down) says so in one line and leaves the runs kept: the results are on disk, and the report syncs first.
onsuccess:
    sync_kept_runs()
    targets = sorted({job.rule.name for job in workflow.dag.targetjobs})
    if "all" in targets:
        shell(f"{FGA} dvc-record {COMMON}")
    else:
        print(f"dvc: not recorded: this run's targets ({', '.join(targets)}) are not the default target; "
              "a successful `snakemake` (all) records the grid")


onerror:
    sync_kept_runs()
