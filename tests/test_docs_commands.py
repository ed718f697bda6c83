"""Every shell command in README.md and docs/*.md is checked: run for real, as a dry run, or parsed.

Commands come from fenced code blocks tagged bash/sh/shell/console, or untagged blocks whose every line
starts with a known program (YAML, formulas and the layout tree are skipped). CHECKS maps each command
(a full-match regex) to how it is checked. A docs command no entry matches fails
`test_every_docs_command_is_covered`, so a new command cannot go unchecked; an entry that matches no command
fails too, so the table stays the docs' own. Real runs use test_workflow.py's tiny project; the ones that need
a finished grid are marked e2e.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import BIN, copy_project, tiny_params

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
PROGRAMS = {"make", "fga", "snakemake", "dvc", "mlflow", "git", "cat", "source", "python", "pip", "sbatch",
            "srun", "squeue", "torchrun", "cp", "chmod", "bash"}
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", flags=re.S | re.M)
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "GIT_AUTHOR_NAME": "t",
       "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a # outside quotes, after whitespace)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _program(line: str) -> str:
    first = line.split()[0] if line.split() else ""
    return first.rsplit("/", 1)[-1] if first.startswith(".venv/bin/") else first


def block_commands(lang: str, body: str) -> list[str]:
    """The commands of one fenced block: continuations joined, prompts and comments dropped."""
    lines = [line[2:] if lang == "console" and line.startswith("$ ") else line for line in body.splitlines()]
    joined, pending = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    commands = [" ".join(strip_comment(line).split()) for line in joined]
    commands = [c for c in commands if c]
    if lang in SHELL_LANGS:
        return commands
    if lang == "" and commands and all(_program(c) in PROGRAMS for c in commands):
        return commands
    return []


def docs_commands() -> list[tuple[str, str]]:
    """(page, command) for every shell command in a fenced block of the README and docs/."""
    found = []
    for page in PAGES:
        for match in FENCE.finditer(page.read_text()):
            for command in block_commands(match.group(1).lower(), match.group(2)):
                found.append((str(page.relative_to(ROOT)), command))
    return found


def sh(command: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a docs command line with bash in `cwd`, the test's venv first on PATH; it must succeed."""
    out = subprocess.run(["bash", "-c", command], cwd=cwd, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{command!r} failed in {cwd}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def venv_bin(command: str) -> str:
    """`.venv/bin/x ...` -> the test environment's own x (the docs' venv is the one running the tests)."""
    return re.sub(r"^\.venv/bin/", f"{BIN}/", command)


# --- checks: each gets (command, ctx) -------------------------------------------------------------------------

class Context:
    """Lazily built projects the checks run in (a tiny fresh one; the finished tiny grid for e2e)."""

    def __init__(self, request: pytest.FixtureRequest):
        self.request = request

    @property
    def tiny(self) -> Path:
        return self.request.getfixturevalue("tiny_fresh")

    @property
    def finished(self) -> Path:
        return self.request.getfixturevalue("tiny_completed")

    @property
    def dvc_workspace(self) -> Path:
        return self.request.getfixturevalue("dvc_workspace")


def make_recipe(target: str, *expected: str) -> Callable[[str, Context], None]:
    """Dry: `make -n <target>` in the checkout prints the recipe the docs describe."""
    def check(command: str, ctx: Context) -> None:
        out = sh(f"make --no-print-directory -n -o .venv/.installed-stamp {target}", ROOT).stdout
        for text in expected:
            assert text in out, f"`make -n {target}` does not run {text!r}:\n{out}"
    return check


def make_dry_run(command: str, ctx: Context) -> None:
    """Real: the recipe of `make dry-run` (itself `snakemake -n`) in the tiny project."""
    recipe = sh("make --no-print-directory -n -o .venv/.installed-stamp dry-run", ROOT).stdout.strip().splitlines()[-1]
    assert recipe.startswith("snakemake -n"), recipe
    assert "train" in sh(recipe, ctx.tiny).stdout


def in_tiny(*expected: str) -> Callable[[str, Context], None]:
    """Real (a dry run by itself, or a command that writes nothing): run as written in the tiny project."""
    def check(command: str, ctx: Context) -> None:
        out = sh(venv_bin(command), ctx.tiny)
        for text in expected:
            assert text in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
    return check


def prepare_dry_run(command: str, ctx: Context) -> None:
    """Dry: the real-dataset prepare with `--dry-run` (prints the plan; no network, nothing written).
    A placeholder `/path/to/<file>` becomes an empty file of that name (the dry run checks it exists)."""
    for name in re.findall(r"/path/to/(\S+)", command):
        (ctx.tiny / name).touch()
    command = re.sub(r"/path/to/", f"{ctx.tiny}/", command)
    out = sh(f"{command} --dry-run", ctx.tiny)
    assert "dry-run" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    assert not (ctx.tiny / "downloads").exists() or not any((ctx.tiny / "downloads").rglob("*"))


def help_lists_flags(command: str, ctx: Context) -> None:
    """Parse: every `--flag` of the command appears in the program's `--help` (servers are not started)."""
    words = shlex.split(venv_bin(command))
    verb = [w for w in words[:3] if not w.startswith("-")]
    text = sh(" ".join([*verb, "--help"]), ROOT).stdout
    for flag in (w.split("=")[0] for w in words if w.startswith("--")):
        assert flag in text, f"{' '.join(verb)} has no {flag}"


def fga_help(command: str, ctx: Context) -> None:
    """Real: `fga --help` lists every verb the README's comment names."""
    out = sh(command, ROOT).stdout
    for verb in ("data", "features", "train", "evaluate", "robustness", "report"):
        assert verb in out


def activate(command: str, ctx: Context) -> None:
    """Real: sourcing the venv's activate puts the four tools on PATH."""
    script = BIN / "activate"
    if not script.exists():
        pytest.skip("the tests do not run in a venv with an activate script")
    sh(f"source {script} && command -v fga snakemake dvc mlflow", ROOT)


def git_clone(command: str, ctx: Context) -> None:
    """Real: clone this checkout (`<repo>`) and cd into it."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tmp = ctx.request.getfixturevalue("tmp_path")
    sh(command.replace("<repo>", str(ROOT)) + " && test -f Makefile -a -f Snakefile", tmp)


def in_finished(command: str, ctx: Context) -> None:
    """Real (e2e): a read-only command, run in the finished tiny grid."""
    sh(command, ctx.finished)


def in_dvc_workspace(*expected: str) -> Callable[[str, Context], None]:
    """Real (e2e): run in the finished tiny grid made a git + DVC repository with a local remote."""
    def check(command: str, ctx: Context) -> None:
        out = sh(command, ctx.dvc_workspace)
        for text in expected:
            assert text in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
    return check


@dataclass(frozen=True)
class Check:
    pattern: str  # full match on the command as extracted (whitespace collapsed, comments dropped)
    kind: str  # real | dry | parse | e2e
    run: Callable[[str, Context], None]


CHECKS = [
    Check(r"git clone <repo> fga && cd fga", "real", git_clone),
    Check(r"make run", "dry", make_recipe("run", "snakemake --profile workflow/profiles/default")),
    Check(r"make test", "dry", make_recipe("test", "python -m pytest")),
    Check(r"make pull", "dry", make_recipe("pull", "dvc pull", "snakemake --profile workflow/profiles/default "
                                                  "--touch --forceall")),  # real: tests/test_dvc_remote.py
    Check(r"make dry-run", "real", make_dry_run),
    Check(r"source \.venv/bin/activate", "real", activate),
    Check(r"fga --help", "parse", fga_help),
    Check(r"cat reports/tables/main\.md", "e2e", in_finished),
    Check(r"(\.venv/bin/)?mlflow (ui|server) .*", "parse", help_lists_flags),
    Check(r"fga data prepare --dataset (coco|flickr30k|f30k_precomp|coco_precomp)( --set \S+)*", "dry",
          prepare_dry_run),
    Check(r"fga data prepare --dataset synthetic --dry-run", "real",
          in_tiny("[dry-run] synthetic: would generate", "nothing was written")),
    Check(r"(\.venv/bin/)?snakemake -n( --cores all)?( --config .*)?", "real", in_tiny()),
    Check(r"fga dvc-record", "e2e", in_dvc_workspace("dvc: recorded")),
    Check(r'git add dvc\.lock && git commit -m "results"', "e2e", in_dvc_workspace()),
    Check(r"dvc push", "e2e", in_dvc_workspace()),
    Check(r"snakemake --touch", "e2e", in_dvc_workspace()),
]


def check_for(command: str) -> Check | None:
    return next((c for c in CHECKS if re.fullmatch(c.pattern, command)), None)


COMMANDS = docs_commands()


def test_extraction_finds_commands_and_skips_yaml_and_formulas():
    assert ("README.md", "make run") in COMMANDS
    assert block_commands("yaml", "# k8.yaml: snakemake --cores all\nmethods:\n") == []
    assert block_commands("", "S_t2i(X, Y) = mean\n") == []
    assert block_commands("console", "$ fga --help  # verbs\n") == ["fga --help"]
    assert block_commands("bash", "a \\\n    --b 'x # y'\n") == ["a --b 'x # y'"]
    assert check_for("make frobnicate") is None and check_for("snakemake --cores all --forceall") is None


def test_every_docs_command_is_covered():
    missing = [f"{page}: {cmd}" for page, cmd in COMMANDS if check_for(cmd) is None]
    assert not missing, f"add these docs commands to CHECKS in {Path(__file__).name}: {missing}"


def test_every_check_matches_a_docs_command():
    unused = [c.pattern for c in CHECKS if not any(re.fullmatch(c.pattern, cmd) for _, cmd in COMMANDS)]
    assert not unused, f"CHECKS entries no docs command matches (remove them): {unused}"


@pytest.fixture(scope="module")
def tiny_fresh(tmp_path_factory) -> Path:
    from test_workflow import tiny_project

    return tiny_params(tiny_project(tmp_path_factory.mktemp("docs_tiny")))


@pytest.fixture(scope="module")
def dvc_workspace(tiny_completed, tmp_path_factory) -> Path:
    """A copy of the finished tiny grid as a git + DVC repository (the committed cache.type, a local remote)."""
    project = copy_project(tiny_completed, tmp_path_factory.mktemp("docs_dvc") / "p")
    for name in (".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, project / name)
    sh("git init -q && dvc init -q", project)
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    sh(f"dvc remote add -d local {project.parent / 'remote'}", project)
    return project


def _params():
    for page, cmd in COMMANDS:
        check = check_for(cmd)
        marks = [pytest.mark.e2e] if check and check.kind == "e2e" else []
        yield pytest.param(page, cmd, id=f"{page}:{cmd[:60]}", marks=marks)


@pytest.mark.parametrize("page,command", list(_params()))
def test_docs_command(page, command, request):
    check = check_for(command)
    if check is None:
        pytest.fail(f"{page}: {command!r} is not in CHECKS")
    check.run(command, Context(request))


@pytest.mark.e2e
def test_after_recording_both_tools_find_nothing_to_do(dvc_workspace):
    """What the DVC section promises after `fga dvc-record` / `snakemake --touch`."""
    sh("fga dvc-record", dvc_workspace)
    assert "up to date" in sh("dvc status", dvc_workspace).stdout.lower()
    assert "Nothing to be done" in "".join(
        (o.stdout + o.stderr) for o in [sh("snakemake -n --cores 1", dvc_workspace)])
