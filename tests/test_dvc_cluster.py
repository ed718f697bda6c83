"""`dvc repro` on a cluster: every dvc.yaml stage runs its command through params.yaml's launcher for its kind
(empty here; e.g. `srun --gpus=1 ...` on a cluster), and with `srun` on a Slurm cluster (CI starts a one-node one:
`bash .ci/run slurm-up`) DVC records and caches the same metrics as a local `dvc repro`."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, tiny_params
from fga.config import load_params
from fga.errors import UserError
from test_workflow_sync import canonical, declarations, dvc_stages

ROOT = Path(__file__).resolve().parent.parent

# Which launcher (params.yaml's launcher.<kind>) runs each dvc.yaml stage. A new stage must be added here, and so
# must be given a launcher, or test_every_stage_runs_through_the_launcher_of_its_kind fails.
KIND_OF_STAGE = {
    "prepare_data": "prepare", "distractor_data": "prepare",
    "extract_features": "features", "distractor_features": "features", "text_features": "features",
    "train": "train", "train_ablation": "train",
    "evaluate": "evaluate", "evaluate_ablation": "evaluate",
    "robustness": "robustness",
    "report": "report",
}
KINDS = sorted(set(KIND_OF_STAGE.values()))


def set_launcher(project: Path, launcher: dict[str, str]) -> Path:
    """Write `launcher` into the project's params.yaml (the rest of it unchanged)."""
    path = project / "params.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["launcher"] = launcher
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return project


def test_params_yaml_launches_every_kind_of_stage_where_dvc_repro_runs():
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["launcher"] == {kind: "" for kind in KINDS}


def test_every_stage_runs_through_the_launcher_of_its_kind(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "cluster").mkdir()
    local = [s["cmd"] for s in dvc_stages(declarations(tmp_path / "local"))]
    launched = dvc_stages(set_launcher(declarations(tmp_path / "cluster"),
                                       {kind: f"srun --job-name=fga-{kind} --gpus=1" for kind in KINDS}))
    assert {s["name"] for s in launched} == set(KIND_OF_STAGE), "a dvc.yaml stage KIND_OF_STAGE does not know"
    for stage in launched:
        prefix = f"srun --job-name=fga-{KIND_OF_STAGE[stage['name']]} --gpus=1 python -m fga "
        assert stage["cmd"].startswith(prefix), (stage["name"], stage["cmd"])
    # locally the command is the one the Snakefile runs (test_workflow_sync.py), with nothing before it
    assert all(cmd.startswith(" python -m fga ") for cmd in local), local
    unlaunched = sorted(canonical(s["cmd"].split(" --gpus=1 ", 1)[1]) for s in launched)
    assert unlaunched == sorted(canonical(cmd) for cmd in local)


@pytest.mark.parametrize("override,match", [
    ("launcher.trian=srun", "trian"),                 # a misspelt kind would silently run locally
    ("launcher.train=3", "launcher.train"),
    ("launcher.train=srun --gpus=1; rm -rf data", "launcher.train"),  # a prefix, not a second command
])
def test_launcher_values_are_validated(override, match):
    with pytest.raises(UserError, match=match):
        load_params(ROOT / "params.yaml", [override])


def test_a_launcher_changes_no_stages_parameters(tmp_path):
    """The launcher says where a stage runs, not what it computes: no stage lists it among its params."""
    stages = dvc_stages(declarations(tmp_path))
    assert not [s["name"] for s in stages if any(p.split(".")[0] == "launcher" for p in s["params"])]


# ---------------------------------------------------------------------------------------- on a Slurm cluster

# test_workflow.py's tiny grid (+ conftest's TINIER) cut to one run and no ablation: every kind of stage, once
ONE_RUN = {"grid.methods": ["vse_mean"], "grid.seeds": [0],
           "grid.ablation": {"backbones": ["lite0_roi"], "methods": []}}
# A wrapper the test puts after srun: it notes the Slurm job the stage ran in, on the node, then runs the stage.
RECORD_JOB = '#!/bin/sh\necho "$SLURM_JOB_ID $SLURM_JOB_NAME $(hostname)" >> "{log}"\nexec "$@"\n'


def dvc_project(directory: Path) -> Path:
    from test_workflow import run, tiny_project

    directory.mkdir()
    project = tiny_params(tiny_project(directory), ONE_RUN)
    run(["git", "init", "-q"], project)
    run([str(BIN / "dvc"), "init", "-q"], project)
    return project


def cached(project: Path) -> list[str]:
    """The outputs dvc.lock records that are not in the project's DVC cache."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    cache = project / ".dvc" / "cache" / "files" / "md5"
    return [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])
            if not (cache / out["md5"][:2] / out["md5"][2:]).is_file()]


@pytest.mark.e2e
@pytest.mark.slurm
def test_dvc_repro_through_srun_records_the_metrics_of_a_local_dvc_repro(tmp_path):
    from test_slurm import cluster, results
    from test_workflow import run

    reason, partition = cluster()
    if reason:
        pytest.skip(reason)
    local = dvc_project(tmp_path / "local")
    remote = dvc_project(tmp_path / "cluster")
    jobs_log, wrapper = tmp_path / "jobs.log", tmp_path / "record-job.sh"
    wrapper.write_text(RECORD_JOB.format(log=jobs_log))
    wrapper.chmod(0o755)
    # the one-node test cluster has no GPU: the launchers ask CPUs and memory only
    set_launcher(remote, {kind: f"srun --partition={partition} --ntasks=1 --cpus-per-task=1 --mem=2G "
                                f"--job-name=fga-{kind} {wrapper}" for kind in KINDS})

    run([str(BIN / "dvc"), "repro", "--quiet"], local)
    run([str(BIN / "dvc"), "repro", "--quiet"], remote)

    lock = yaml.safe_load((remote / "dvc.lock").read_text())["stages"]
    jobs = [line.split() for line in jobs_log.read_text().splitlines()]
    assert len(jobs) == len(lock) and len({job_id for job_id, *_ in jobs}) == len(lock), jobs  # a job a stage
    assert sorted(name for _, name, _ in jobs) == sorted(f"fga-{KIND_OF_STAGE[s.split('@')[0]]}" for s in lock)
    shown = subprocess.run(["scontrol", "show", "job", jobs[-1][0]], capture_output=True, text=True, timeout=30)
    assert "JobName=fga-report" in shown.stdout and "JobState=COMPLETED" in shown.stdout, shown.stdout + shown.stderr
    assert all(shlex.split(stage["cmd"])[0] == "srun" for stage in lock.values())

    assert results(local) and results(remote) == results(local)
    main = "reports/tables/main.csv"
    assert (remote / main).read_text() == (local / main).read_text()
    # DVC recorded and cached everything it ran through srun
    assert not cached(remote)
    assert "up to date" in run([str(BIN / "dvc"), "status"], remote).stdout.lower()

    # back on a machine without the launcher: the recorded commands differ, and `dvc commit` accepts the outputs
    set_launcher(remote, {kind: "" for kind in KINDS})
    assert "changed command" in run([str(BIN / "dvc"), "status"], remote).stdout
    run([str(BIN / "dvc"), "commit", "--force", "--quiet"], remote)
    assert "up to date" in run([str(BIN / "dvc"), "status"], remote).stdout.lower()
