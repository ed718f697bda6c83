"""The Snakefile's onsuccess handler (`fga dvc-record` after a run of the default target), run by Snakemake itself on
a three-rule workflow shaped like ours (all <- report <- an upstream job), so each case takes seconds."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def common_function(name: str) -> str:
    """A function of workflow/rules/common.smk that the handlers call, as written there."""
    found = re.search(rf"^def {name}\(.*\n(?:(?:[ \t]+.*)?\n)*", (ROOT / "workflow/rules/common.smk").read_text(), re.M)
    assert found, f"common.smk has no {name}()"
    return found.group(0)


TOY_RULES = common_function("sync_kept_runs") + '''
FGA = "echo fga"
COMMON = ">> recorded.log"
LOGS = "logs"


rule all:
    default_target: True
    input:
        "report.txt",


rule report:
    input:
        "metrics.txt",
    output:
        "report.txt",
    shell:
        "cat {input} > {output}"


rule evaluate:
    output:
        "metrics.txt",
    shell:
        "echo 1 > {output}"


'''


def onsuccess_handler() -> str:
    """The Snakefile's `onsuccess:` block, as written there."""
    found = re.search(r"^onsuccess:\n(?:(?:[ \t]+.*)?\n)*", (ROOT / "Snakefile").read_text(), re.M)
    assert found, "the Snakefile has no onsuccess handler"
    return found.group(0)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    (tmp_path / "Snakefile").write_text(TOY_RULES + onsuccess_handler())
    return tmp_path


def snakemake(workdir: Path, *args: str) -> str:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(bin_dir / "snakemake"), "--cores", "1", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def records(workdir: Path) -> int:
    log = workdir / "recorded.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_forced_report_of_the_default_target_is_recorded(toy):
    """`snakemake --forcerun report`: Snakemake lists `report` as a target beside `all`; the run is still one of
    the default target, so it ends with dvc-record (it did not while the handler asked for `all` alone)."""
    snakemake(toy, "--forcerun", "report")
    assert (toy / "report.txt").exists() and records(toy) == 1


def test_a_run_of_another_target_records_nothing_and_says_so(toy):
    said = snakemake(toy, "report")
    assert (toy / "report.txt").exists() and records(toy) == 0
    assert "dvc: not recorded: this run's targets (report) are not the default target" in said
    snakemake(toy, "--forcerun", "evaluate", "--until", "report")  # all never runs: nothing recorded
    assert records(toy) == 0
