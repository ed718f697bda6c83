"""DVC versions what Snakemake makes: after a run both tools find nothing to do; `dvc push` there, then `git clone`
+ `make pull` elsewhere gives the same bytes, a workspace both tools find up to date and the same tables from the
team's MLflow store. The repository itself ships without a remote (users add theirs)."""
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
    """Every file DVC caches (outs of dvc.lock with a hash, directories expanded, .dvcignore's stamp left out)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    files: list[Path] = []
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = project / out["path"]
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp"
                            ) if path.is_dir() else [path]
    return files


def snakemake_nothing_to_do(run, project: Path) -> None:
    dry = run([str(BIN / "snakemake"), "-n", "--profile", "workflow/profiles/default"], project)
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]


def dvc_up_to_date(run, project: Path) -> None:
    status = run([str(BIN / "dvc"), "status"], project)
    assert "up to date" in status.stdout.lower(), status.stdout[-3000:]


@pytest.mark.e2e
def test_recorded_run_is_up_to_date_for_both_tools_and_a_pulled_clone_too(tmp_path):
    from test_workflow import run, tiny_project

    team = tmp_path / "team"  # what a team shares: the MLflow store (a server, in real life)
    a = tmp_path / "a"
    a.mkdir()
    project = tiny_params(tiny_project(a), {"grid.methods": ["vse_mean"], "grid.seeds": [0],
                                             "tracking.uri": f"sqlite:///{team / 'mlruns.db'}",
                                             "tracking.artifact_root": str(team / "mlartifacts")})
    for name in (".gitignore", ".dvcignore", "Makefile"):
        shutil.copy(ROOT / name, project / name)
    remote = tmp_path / "remote"
    dvc, git = str(BIN / "dvc"), "git"
    run([git, "init", "-q"], project)
    run([dvc, "init", "-q"], project)
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")  # the committed cache.type
    run([dvc, "remote", "add", "-d", "local", str(remote)], project)  # the README's command

    # `make run`'s command: the run ends by recording its outputs in DVC
    made = run([str(BIN / "snakemake"), "--profile", "workflow/profiles/default", "--cores", "2"], project)
    assert "dvc: recorded" in made.stdout + made.stderr, (made.stdout + made.stderr)[-3000:]
    dvc_up_to_date(run, project)
    snakemake_nothing_to_do(run, project)
    again = run([dvc, "repro"], project)
    assert "Running stage" not in again.stdout, again.stdout[-3000:]
    snakemake_nothing_to_do(run, project)

    run([git, "add", "-A"], project)
    run([git, "commit", "-q", "-m", "pipeline + dvc.lock"], project)
    run([dvc, "push", "--quiet"], project)
    assert any(remote.rglob("*")), "dvc push stored nothing"

    clone = tmp_path / "b"
    run([git, "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "features").exists()  # artifacts are not in git...
    pulled = run(["make", "-o", ".venv/.installed-stamp", "pull"], clone)  # ...but in the remote
    assert "dvc: recorded" in pulled.stdout + pulled.stderr, (pulled.stdout + pulled.stderr)[-3000:]
    ours = lock_outputs(project)
    lost = [str(p.relative_to(project)) for p in ours if not (clone / p.relative_to(project)).exists()]
    assert not lost, ("outputs neither git nor the DVC remote carried to the clone (an out with `cache: false` "
                      f"that .gitignore ignores): {lost[:6]}{' ...' if len(lost) > 6 else ''}")
    assert ours and [p.relative_to(project) for p in ours] == [p.relative_to(clone) for p in lock_outputs(clone)]
    for p in ours:
        assert p.read_bytes() == (clone / p.relative_to(project)).read_bytes(), p.relative_to(project)
    snakemake_nothing_to_do(run, clone)
    dvc_up_to_date(run, clone)
    changed = run([git, "status", "--porcelain"], clone).stdout
    assert not changed.strip(), f"`make pull` changed committed files: {changed}"

    # the colleague regenerates the tables from the team's MLflow store: the same bytes
    run([str(BIN / "python"), "-m", "fga", "report", "--quiet"], clone)
    tables = sorted(p.relative_to(project) for p in (project / "reports/tables").iterdir()
                    if p.is_file() and p.name != ".snakemake_timestamp")
    assert Path("reports/tables/main.csv") in tables
    for rel in tables:
        assert (clone / rel).read_bytes() == (project / rel).read_bytes(), rel
