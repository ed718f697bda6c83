"""DVC remotes: `dvc repro` + `dvc push` in one clone, `git clone` + `dvc pull` in another gives the same bytes and
a pipeline with nothing to do. The repository itself ships without a remote (users add theirs)."""
from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import BIN, tiny_params

ROOT = Path(__file__).resolve().parent.parent


def test_repository_dvc_config_has_no_remote():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".dvc" / "config")
    assert not [s for s in cfg.sections() if s.startswith("'remote") or s.startswith("remote")]
    assert not cfg.has_option("core", "remote")


def lock_outputs(project: Path) -> list[Path]:
    """Every file DVC caches (outs of dvc.lock with a hash, directories expanded)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    files: list[Path] = []
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = project / out["path"]
            files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return files


@pytest.mark.e2e
def test_push_clone_pull_gives_identical_artifacts_and_nothing_to_repro(tmp_path):
    from test_workflow import run, tiny_project

    a = tmp_path / "a"
    a.mkdir()
    project = tiny_params(tiny_project(a), {"grid.methods": ["vse_mean"], "grid.seeds": [0]})
    for name in (".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, project / name)
    remote = tmp_path / "remote"
    dvc, git = str(BIN / "dvc"), "git"
    run([git, "init", "-q"], project)
    run([dvc, "init", "-q"], project)
    run([dvc, "remote", "add", "-d", "local", str(remote)], project)  # the README's command
    run([dvc, "repro", "--quiet"], project)
    run([git, "add", "-A"], project)
    run([git, "commit", "-q", "-m", "pipeline + dvc.lock"], project)
    run([dvc, "push", "--quiet"], project)
    assert any(remote.rglob("*")), "dvc push stored nothing"

    clone = tmp_path / "b"
    run([git, "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "features").exists()  # artifacts are not in git...
    run([dvc, "pull", "--quiet"], clone)  # ...but in the remote
    ours = lock_outputs(project)
    lost = [str(p.relative_to(project)) for p in ours if not (clone / p.relative_to(project)).exists()]
    assert not lost, ("outputs neither git nor the DVC remote carried to the clone (an out with `cache: false` "
                      f"that .gitignore ignores): {lost[:6]}{' ...' if len(lost) > 6 else ''}")
    assert ours and [p.relative_to(project) for p in ours] == [p.relative_to(clone) for p in lock_outputs(clone)]
    for p in ours:
        assert p.read_bytes() == (clone / p.relative_to(project)).read_bytes(), p.relative_to(project)
    for rel in ("reports/tables/main.csv", "results/synthetic/lite0_roi/vse_mean/seed0/metrics.json"):
        assert (clone / rel).read_bytes() == (project / rel).read_bytes(), rel
    status = run([dvc, "status"], clone)
    assert "up to date" in status.stdout.lower(), status.stdout[-3000:]
    again = run([dvc, "repro"], clone)
    assert "Running stage" not in again.stdout, again.stdout[-3000:]
