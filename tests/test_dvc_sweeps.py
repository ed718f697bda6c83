"""sweeps/stages.yaml, the GRM sweeps for DVC: off by default (plain `dvc status`, `dvc repro` and `fga dvc-record`
see dvc.yaml's stages only), on where sweeps/dvc.yaml links it. No stage runs here: DVC's index and graph are
what those commands act on."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN
from fga.versioning import record_in_dvc

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def dvc_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=path, check=True, env=ENV)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=path, check=True, env=ENV)
    shutil.copy(ROOT / ".dvc" / "config", path / ".dvc" / "config")
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    (path / "sweeps").mkdir()
    shutil.copy(ROOT / "sweeps" / "stages.yaml", path / "sweeps" / "stages.yaml")
    return path


def switch_sweeps_on(project: Path) -> None:
    (project / "sweeps" / "dvc.yaml").symlink_to("stages.yaml")  # as docs/pipeline.md says


@pytest.fixture
def project(tmp_path) -> Path:
    """The project's dvc.yaml, params.yaml and sweeps/stages.yaml in a git + DVC repository."""
    shutil.copy(ROOT / "dvc.yaml", dvc_repo(tmp_path) / "dvc.yaml")
    return tmp_path


def index(project: Path) -> tuple[set[tuple[str, str]], dict[str, set[tuple[str, str]]]]:
    """(file, stage) of every stage DVC reads (what plain `dvc status` checks), and each one's upstream stages."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        def key(stage) -> tuple[str, str]:
            return os.path.relpath(stage.path, repo.root_dir), stage.name

        graph = repo.index.graph
        return {key(s) for s in repo.index.stages}, {s.name: {key(u) for u in graph.successors(s)} for s in graph}


def test_plain_dvc_sees_only_dvc_yaml_until_the_sweeps_are_switched_on(project):
    stages, _ = index(project)
    assert stages and {f for f, _ in stages} == {"dvc.yaml"}  # so `dvc status`, `dvc repro` are as without sweeps/
    switch_sweeps_on(project)
    stages, upstream = index(project)
    sweep_stages = {(f, name) for f, name in stages if f == "sweeps/dvc.yaml"}
    assert {name.split("@")[0] for _, name in sweep_stages} == {"train_sweep", "evaluate_sweep"}
    # no output twice (DVC would refuse the index), and the report stage now has the sweep runs upstream:
    # `dvc repro report` rebuilds the report with them
    assert {s for s in sweep_stages if s[1].startswith("evaluate_sweep@")} <= upstream["report"]


def test_record_leaves_a_switched_on_sweep_pipeline_alone(tmp_path):
    """`fga dvc-record` vouches for dvc.yaml's stages (what the default target made), not for sweep runs it did not
    make: a sweep run still missing neither fails the record nor enters a lock file."""
    project = dvc_repo(tmp_path)
    (project / ".gitignore").write_text("/out.txt\n")
    (project / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo\n    params: [train]\n    outs: [out.txt]\n")
    (project / "out.txt").write_text("made\n")
    switch_sweeps_on(project)
    assert record_in_dvc(Path("params.yaml"), project) == "dvc: recorded 1 stages in DVC's cache and dvc.lock"
    assert not (project / "sweeps" / "dvc.lock").exists()
