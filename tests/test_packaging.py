"""One set of pins: pyproject.toml's dependencies = environment.yml's = workflow/envs/fga.yaml's (the --use-conda env)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!-]+$")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def canonical(req: str) -> str:
    name, _, version = req.replace(" ", "").partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


def conda_env(path: Path) -> tuple[list[str], str]:
    """(the env's pip requirements, its conda `python=` spec)."""
    env = yaml.safe_load(path.read_text())
    deps = env["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    python = next(d for d in deps if isinstance(d, str) and re.match(r"^python([=<>!~ ]|$)", d))
    assert "pip" in deps, f"{path.name}: the env must install pip to install its pip section"
    return pip, python


def test_every_dependency_is_pinned_exactly():
    project = pyproject()["project"]
    for req in project["dependencies"] + [r for reqs in project.get("optional-dependencies", {}).values() for r in reqs]:
        assert PIN.match(req.replace(" ", "")), f"pyproject.toml: {req!r} is not an exact pin (name==version)"


@pytest.mark.parametrize("env_file", ["environment.yml", "workflow/envs/fga.yaml"])
def test_conda_env_pins_equal_pyproject(env_file):
    deps = [canonical(r) for r in pyproject()["project"]["dependencies"]]
    pip, python = conda_env(ROOT / env_file)
    pins = [canonical(r) for r in pip]
    assert len(set(pins)) == len(pins), f"{env_file}: a package is listed twice"
    missing, extra = sorted(set(deps) - set(pins)), sorted(set(pins) - set(deps))
    assert not missing and not extra, f"{env_file} vs pyproject.toml: missing {missing}, extra or different {extra}"
    # the conda python satisfies requires-python (">=3.11" -> python=3.11 or later)
    required = pyproject()["project"]["requires-python"]
    lo = tuple(int(x) for x in re.search(r">=\s*(\d+\.\d+)", required).group(1).split("."))
    have = tuple(int(x) for x in re.search(r"(\d+\.\d+)", python).group(1).split("."))
    assert have >= lo, f"{env_file}: {python} does not satisfy requires-python {required}"


def test_rules_use_the_checked_env_file():
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve() == (ROOT / "workflow/envs/fga.yaml").resolve(), f"{smk.name}: {env}"
