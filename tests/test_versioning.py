"""`fga dvc-record`: what it records, what it refuses, and that the committed cache.type leaves outputs in place."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN
from fga.cli import main
from fga.versioning import differing_keys, reason_not_to_record, record_in_dvc

ROOT = Path(__file__).resolve().parent.parent
OLD = 1_600_000_000  # an mtime well before the record


def test_differing_keys_names_each_changed_leaf_once():
    base = {"train": {"epochs": 2, "lr": 0.1}, "grid": {"seeds": [0, 1]}}
    assert differing_keys(base, yaml.safe_load(yaml.safe_dump(base))) == []
    changed = {"train": {"epochs": 3, "lr": 0.1}, "grid": {"seeds": [0]}, "extra": {"x": 1}}
    assert differing_keys(changed, base) == ["extra", "grid.seeds", "train.epochs"]
    assert differing_keys(None, base) == ["(the whole file)"]


@pytest.fixture
def dvc_project(tmp_path) -> Path:
    """A git + DVC repository with the project's .dvc/config and one stage whose output already exists."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True, env=env)
    shutil.copy(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")
    (tmp_path / ".gitignore").write_text("/out/\n")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo\n    params: [train]\n"
                                       "    outs: [out/a.bin, out/dir]\n")
    write_outputs(tmp_path, OLD)
    return tmp_path


def write_outputs(project: Path, mtime: int) -> None:
    (project / "out" / "dir").mkdir(parents=True, exist_ok=True)
    for path, data in ((project / "out/a.bin", b"a" * 5000), (project / "out/dir/b.txt", b"b\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)  # as fga writes: a new file renamed over the old one


def identity(project: Path) -> list[tuple[int, int, bool, int]]:
    """(inode, mtime, symlink?, mode) of each output file: what Snakemake's mtime rule and its rerun depend on."""
    out = []
    for rel in ("out/a.bin", "out/dir/b.txt"):
        st = os.lstat(project / rel)
        out.append((st.st_ino, int(st.st_mtime), os.path.islink(project / rel), st.st_mode & 0o777))
    return out


@pytest.mark.parametrize("cache_type", [None, "reflink,copy", "hardlink"])
def test_record_commits_every_stage_and_leaves_the_outputs_in_place(dvc_project, cache_type):
    """None: the committed .dvc/config; reflink,copy (DVC's default, a relinking commit rewrites files in place
    on ext4) and hardlink (a relinking commit makes them read-only) as a user's .dvc/config.local may set."""
    if cache_type:
        subprocess.run([str(BIN / "dvc"), "config", "--local", "cache.type", cache_type], cwd=dvc_project, check=True)
    before = identity(dvc_project)
    assert record_in_dvc(Path("params.yaml"), dvc_project) == "dvc: recorded 1 stages in DVC's cache and dvc.lock"
    assert identity(dvc_project) == before  # same inode, same mtime, still writable: Snakemake sees no change
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=dvc_project, capture_output=True, text=True)
    assert "up to date" in status.stdout.lower(), status.stdout
    # a rerun writes the same bytes anew: the record keeps the new files, not the cached ones with the old mtimes
    write_outputs(dvc_project, OLD + 1000)
    rerun = identity(dvc_project)
    record_in_dvc(Path("params.yaml"), dvc_project)
    assert identity(dvc_project) == rerun


def test_record_drops_the_lock_entries_of_stages_dvc_yaml_no_longer_declares(dvc_project):
    """A stage renamed in dvc.yaml (or a matrix item gone): `dvc commit` adds the new entry and keeps the old one;
    the record leaves only dvc.yaml's stages, so `dvc status` and the lock agree with the pipeline."""
    record_in_dvc(Path("params.yaml"), dvc_project)
    dvc_yaml = dvc_project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("  make:", "  build:"))
    assert record_in_dvc(Path("params.yaml"), dvc_project) == "dvc: recorded 1 stages in DVC's cache and dvc.lock"
    pruned = (dvc_project / "dvc.lock").read_text()
    assert list(yaml.safe_load(pruned)["stages"]) == ["build"]
    # what is kept is written as DVC writes it: DVC's own commit of the same outputs gives the same bytes
    subprocess.run([str(BIN / "dvc"), "commit", "--force", "--no-relink", "-q", "dvc.yaml"], cwd=dvc_project, check=True)
    assert (dvc_project / "dvc.lock").read_text() == pruned
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=dvc_project, capture_output=True, text=True)
    assert "up to date" in status.stdout.lower(), status.stdout


def test_record_refuses_a_run_of_other_parameters_than_params_yaml(dvc_project):
    cfg = yaml.safe_load((dvc_project / "params.yaml").read_text())
    cfg["train"]["epochs"] += 1  # what `snakemake --configfile overlay.yaml` resolves
    (dvc_project / "resolved.yaml").write_text(yaml.safe_dump(cfg))
    message = record_in_dvc(Path("resolved.yaml"), dvc_project)
    assert message.startswith("dvc: not recorded:") and "train.epochs" in message, message
    assert not (dvc_project / "dvc.lock").exists()


def test_the_resolved_file_of_params_yaml_itself_is_recorded(dvc_project):
    from fga.config import load_params, write_resolved

    # what the Snakefile hands its jobs (and the record) on a plain run: params.yaml typed and resolved
    resolved = write_resolved(load_params(dvc_project / "params.yaml"), dvc_project / ".snakemake" / "fga")
    assert reason_not_to_record(resolved.relative_to(dvc_project), dvc_project) is None


def test_record_outside_a_dvc_repository_says_so(tmp_path):
    (tmp_path / "params.yaml").write_text("train: {epochs: 2}\n")
    assert "no DVC repository" in reason_not_to_record(Path("params.yaml"), tmp_path)


def test_dvc_record_verb_reports_a_failing_commit_in_one_line(dvc_project, monkeypatch, capsys):
    (dvc_project / "out" / "a.bin").unlink()  # a declared output is missing: dvc commit fails
    monkeypatch.chdir(dvc_project)
    assert main(["dvc-record", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fga: error: dvc commit failed") and "fga dvc-record" in err and "\n" not in err, err


def test_dvc_record_verb_refuses_overrides(dvc_project, monkeypatch, capsys):
    monkeypatch.chdir(dvc_project)
    assert main(["dvc-record", "--set", "train.epochs=9"]) == 2
    assert "takes no --set" in capsys.readouterr().err
    assert not (dvc_project / "dvc.lock").exists()
