"""The Slurm profile, for real: the tiny config through `--profile workflow/profiles/slurm` on a Slurm cluster
(CI starts a one-node one: `bash .ci/run slurm-up`) gives the same metrics as a local run."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import BIN
from test_workflow import run, tiny_project

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

PROFILE = "workflow/profiles/slurm"
# the one-node test cluster has no GPU: what the profile asks GPUs for runs on CPUs there
GPU_RULES = ("train", "evaluate", "robustness", "extract_features", "distractor_features")


def cluster() -> tuple[str | None, str]:
    """(why the test cannot run or None, the cluster's default partition)."""
    if shutil.which("sinfo") is None:
        return "no Slurm here (`sinfo` not found); `bash .ci/run slurm-up` starts a one-node cluster as root", ""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 15 s: no Slurm controller is running", ""
    if out.returncode != 0:
        return f"no Slurm cluster answers: {out.stderr.strip()[:300]}", ""
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    usable = [(p, s) for p, s in rows if s.rstrip("*~#!%$@^-") in ("idle", "mixed", "allocated", "completing")]
    if not usable:
        return f"the Slurm cluster has no usable node ({out.stdout.strip()})", ""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install '.[test]')", ""
    default = next((p.rstrip("*") for p, _ in rows if p.endswith("*")), rows[0][0])
    return None, default


def results(project) -> dict[str, dict]:
    out = {}
    for name in ("metrics.json", "robustness.json"):
        for path in sorted(project.glob(f"results/**/{name}")):
            data = json.loads(path.read_text())
            # the saved matrix is tied to its checkpoint's bytes, which hold each epoch's wall time
            (data.get("matrix") or {}).pop("checkpoint", None)
            out[str(path.relative_to(project))] = data
    return out


def test_slurm_profile_runs_the_tiny_grid_like_a_local_run(tiny_completed, tmp_path):
    reason, partition = cluster()
    if reason:
        pytest.skip(reason)
    project = tiny_project(tmp_path)
    shutil.copy(tiny_completed / "params.yaml", project / "params.yaml")  # the same (tiny) params
    profile = yaml.safe_load((project / PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["set-resources"]["train"]["gpu"] == 1
    cmd = [str(BIN / "snakemake"), "--profile", PROFILE, "--jobs", "4",
           "--set-resources", *[f"{r}:gpu=0" for r in GPU_RULES]]
    if partition != profile["default-resources"]["slurm_partition"]:
        cmd += ["--default-resources", f"slurm_partition={partition}", "mem_mb=2000", "runtime=60"]
    out = run(cmd, project)
    log = out.stdout + out.stderr
    assert "Job " in log and "has been submitted with SLURM jobid" in log, log[-3000:]
    local, remote = results(tiny_completed), results(project)
    assert local and sorted(remote) == sorted(local)
    assert remote == local
    main = (project / "reports/tables/main.csv").read_text()
    assert main == (tiny_completed / "reports/tables/main.csv").read_text()
