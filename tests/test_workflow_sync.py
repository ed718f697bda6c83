"""The Snakefile and dvc.yaml declare the same stages; Snakemake reruns exactly what a params change touches.

The sync check compares concrete jobs, not patterns: `snakemake -n -p` over the real params.yaml gives
every job's rule, outputs and shell command; DVC's own parser expands dvc.yaml's foreach/matrix stages
into theirs. Every Snakemake job must have the DVC stage with the same `python -m fga ...` command (same
verb, same arguments), of the same name, with the same outputs, and the other way round.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, copy_project

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

# Deliberate differences, by rule: outputs only DVC tracks. `prepare_data` also writes data/<dataset>/images/,
# which Snakemake regenerates with the JSONs but DVC must carry through `dvc push` / `dvc pull`.
DVC_ONLY_OUTPUTS = {"prepare_data": {"data/{dataset}/images"}}
# A DVC output may be the directory that holds a rule's outputs (distractor_data: data/synthetic_distract<n>/
# holds dataset.json + instances.json + images/); that counts as the same outputs.
NOT_FGA_RULES = {"all"}
# DVC stage names must be unique, so the ablation variants' runs (Snakemake: the same train/evaluate rules)
# are stages of their own over grid.ablation's matrix, and the sweeps' (the grm_sweeps target) of
# sweeps/stages.yaml's over sweeps.dvc_runs.
STAGE_OF_RULE_ALIASES = {"train_ablation": "train", "evaluate_ablation": "evaluate", "train_sweep": "train",
                         "evaluate_sweep": "evaluate"}
# The grm_sweeps rule reruns `fga report` with no declared output (it rewrites the report's directories); DVC's
# counterpart is the report stage, whose `results` dependency holds the sweep runs' outputs.
RULE_OF_DVC_STAGE = {"grm_sweeps": "report"}
# sweeps/stages.yaml: not a dvc.yaml, so DVC reads it only where a workspace links it as sweeps/dvc.yaml
SWEEP_PIPELINE = Path("sweeps/stages.yaml")
SWEEP_LINK = Path("sweeps/dvc.yaml")


def canonical(cmd: str) -> tuple:
    """`[ENV=..] python -m fga VERB.. --opt val .. [--params P] [--quiet] [> log 2>&1]` -> (verb words, options)."""
    tokens = shlex.split(cmd)
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens.pop(0)
    assert tokens[:3] == ["python", "-m", "fga"], f"not an fga command: {cmd!r}"
    tokens = tokens[3:]
    if ">" in tokens:
        tokens = tokens[: tokens.index(">")]
    verb = []
    while tokens and not tokens[0].startswith("--"):
        verb.append(tokens.pop(0))
    opts = {}
    while tokens:
        flag = tokens.pop(0)
        value = tokens.pop(0) if tokens and not tokens[0].startswith("--") else True
        opts[flag] = value
    opts.pop("--params", None)  # Snakemake hands the CLI the config it resolved; DVC's CLI reads params.yaml
    opts.pop("--quiet", None)
    opts.pop("--defer-tracking", None)  # Snakemake's jobs leave MLflow to one sync at its end; DVC's log at once
    return tuple(verb), tuple(sorted(opts.items()))


def snakemake_jobs(project: Path, *targets: str) -> list[dict]:
    out = subprocess.run([str(BIN / "snakemake"), "-n", "-p", "--cores", "1", "--forceall", *targets], cwd=project,
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs, job = [], None
    for line in (out.stdout + out.stderr).splitlines():
        if m := re.match(r"^(local)?rule (\w+):$", line):
            job = {"rule": m[2], "outputs": set(), "cmd": None}
            jobs.append(job)
        elif job is not None and (m := re.match(r"^\s+output: (.*)$", line)):
            job["outputs"] = {p.strip() for p in m[1].split(", ")}
        elif job is not None and line.startswith("Shell command: "):
            job["cmd"] = line.removeprefix("Shell command: ")
    return [j for j in jobs if j["rule"] not in NOT_FGA_RULES]


def dvc_stages(project: Path) -> list[dict]:
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=project, check=True, timeout=120)
    from dvc.dependency import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        # outputs relative to the project root, also for a stage of sweeps/dvc.yaml (wdir: ..)
        return [{"name": s.name.split("@")[0], "cmd": s.cmd, "file": os.path.relpath(s.path, repo.root_dir),
                 "outputs": {os.path.relpath(o.fs_path, repo.root_dir) for o in s.outs},
                 "params": {k for d in s.deps if isinstance(d, ParamsDependency) for k in d.params}}
                for s in repo.index.stages]


def declarations(tmp_path: Path, sweeps: bool = False) -> Path:
    """The Snakefile, dvc.yaml and params.yaml in tmp_path; sweeps=True: with sweeps/stages.yaml linked, on."""
    for name in ("Snakefile", "dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    if sweeps:
        (tmp_path / SWEEP_PIPELINE).parent.mkdir()
        shutil.copy(ROOT / SWEEP_PIPELINE, tmp_path / SWEEP_PIPELINE)
        (tmp_path / SWEEP_LINK).symlink_to(SWEEP_PIPELINE.name)
    return tmp_path


def covered(sm_outputs: set[str], dvc_outputs: set[str]) -> tuple[set[str], set[str]]:
    """(Snakemake outputs no DVC output equals or contains, DVC outputs that neither equal nor contain one)."""
    def inside(path: str, d: str) -> bool:
        return path == d or path.startswith(d.rstrip("/") + "/")

    missing = {o for o in sm_outputs if not any(inside(o, d) for d in dvc_outputs)}
    extra = {d for d in dvc_outputs if not any(inside(o, d) for o in sm_outputs)}
    return missing, extra


def disagreements(jobs: list[dict], stages: list[dict]) -> tuple[list[str], list[dict]]:
    """(what differs between the Snakemake jobs and the DVC stages that run their commands, the stages no job runs)."""
    by_cmd = {}
    for s in stages:
        by_cmd.setdefault(canonical(s["cmd"]), []).append(s)
    problems = []
    matched = set()
    for job in jobs:
        assert job["cmd"], f"rule {job['rule']} has no shell command"
        key = canonical(job["cmd"])
        found = by_cmd.get(key, [])
        if len(found) != 1:
            problems.append(f"{job['rule']}: {len(found)} dvc.yaml stages run `{job['cmd'].split(' --params')[0]}`")
            continue
        stage = found[0]
        matched.add(id(stage))
        if STAGE_OF_RULE_ALIASES.get(stage["name"], stage["name"]) != RULE_OF_DVC_STAGE.get(job["rule"], job["rule"]):
            problems.append(f"{job['rule']}: the dvc.yaml stage with the same command is named {stage['name']!r}")
        if job["rule"] in RULE_OF_DVC_STAGE:
            continue
        missing, extra = covered(job["outputs"], stage["outputs"])
        allowed = {p.format(**dict(opt for opt in ((k.lstrip("-"), v) for k, v in key[1]))) for p in
                   DVC_ONLY_OUTPUTS.get(job["rule"], set())}
        if missing:
            problems.append(f"{job['rule']}: Snakemake outputs not in dvc.yaml: {sorted(missing)}")
        if extra - allowed:
            problems.append(f"{job['rule']}: dvc.yaml outputs the rule does not declare: {sorted(extra - allowed)}")
    return problems, [s for s in stages if id(s) not in matched]


def test_every_snakemake_job_has_its_dvc_stage(tmp_path):
    declarations(tmp_path)
    jobs = snakemake_jobs(tmp_path)
    stages = dvc_stages(tmp_path)
    assert jobs and stages
    problems, not_run = disagreements(jobs, stages)
    unmatched = [s["name"] + ": " + s["cmd"] for s in not_run]
    if unmatched:
        problems.append(f"dvc.yaml stages no Snakemake job runs: {unmatched}")
    assert not problems, "Snakefile and dvc.yaml disagree:\n  " + "\n  ".join(problems)


def test_a_second_text_encoder_adds_its_text_features_and_runs_to_both_declarations(tmp_path):
    """grid.text_encoders: [bigru, minilm] (frozen_features) adds minilm's word-piece stores (text_features, before
    the runs that read them) and a run of every cell under <backbone>/minilm/; dvc.yaml's matrix makes the same."""
    declarations(tmp_path)
    params = (tmp_path / "params.yaml").read_text()
    assert "  text_encoders: [bigru]\n" in params
    (tmp_path / "params.yaml").write_text(params.replace("  text_encoders: [bigru]\n", "  text_encoders: [bigru, minilm]\n"))
    jobs = snakemake_jobs(tmp_path)
    grid = yaml.safe_load(params)["grid"]
    text_jobs = sorted(o for j in jobs if j["rule"] == "text_features" for o in j["outputs"])
    assert text_jobs == sorted(f"features/{d}/text_{t}" for d in grid["datasets"] for t in ("bigru", "minilm"))
    trained = [o for j in jobs if j["rule"] == "train" for o in j["outputs"]]
    ablation = grid["ablation"]
    n_cells = len(grid["datasets"]) * len(grid["seeds"]) * (len(grid["backbones"]) * len(grid["methods"])
                                                             + len(ablation["backbones"]) * len(ablation["methods"]))
    for text in ("bigru", "minilm"):
        assert sum(f"/{text}/" in o for o in trained) == n_cells
    minilm_train = next(j for j in jobs if j["rule"] == "train" and "/minilm/" in next(iter(j["outputs"])))
    assert "--text-encoder minilm" in minilm_train["cmd"]
    problems, not_run = disagreements(jobs, dvc_stages(tmp_path))
    problems += [f"dvc.yaml stage no Snakemake job runs: {s['name']}" for s in not_run]
    assert not problems, "Snakefile and dvc.yaml disagree:\n  " + "\n  ".join(problems)


def test_every_grm_sweeps_job_has_its_dvc_stage(tmp_path):
    """`snakemake grm_sweeps` and the linked sweeps/dvc.yaml (with dvc.yaml's stages for the runs they share)
    make the same runs with the same commands and outputs; every sweep stage is one of its jobs."""
    declarations(tmp_path, sweeps=True)
    jobs = snakemake_jobs(tmp_path, "grm_sweeps")
    stages = dvc_stages(tmp_path)
    sweep_stages = [s for s in stages if s["file"] == str(SWEEP_LINK)]
    assert {j["rule"] for j in jobs} >= {"train", "evaluate", "grm_sweeps"} and sweep_stages
    problems, not_run = disagreements(jobs, stages)
    problems += [f"{s['file']}: stage {s['name']} is no grm_sweeps job: {s['cmd']}" for s in not_run
                 if s["file"] == str(SWEEP_LINK)]
    assert not problems, "Snakefile and sweeps/stages.yaml disagree:\n  " + "\n  ".join(problems)


def test_the_sweep_stages_declare_what_dvc_yamls_train_and_evaluate_do():
    """train_sweep / evaluate_sweep are train_ablation / evaluate_ablation over another matrix: the same command,
    deps, params and outputs, item.run.<key> for item.<key>; only the matrix and wdir (the project root) differ."""
    ours = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    sweeps = yaml.safe_load((ROOT / SWEEP_PIPELINE).read_text())["stages"]
    assert set(sweeps) == {"train_sweep", "evaluate_sweep"}
    for name, stage in sweeps.items():
        assert stage.pop("wdir") == ".." and stage.pop("matrix") == {
            "dataset": "${grid.datasets}", "run": "${sweeps.dvc_runs}", "seed": "${sweeps.seeds}"}
        twin = {k: v for k, v in ours[name.replace("_sweep", "_ablation")].items() if k != "matrix"}
        assert yaml.safe_load(yaml.safe_dump(stage).replace("${item.run.", "${item.")) == twin, name


def test_a_variants_training_stage_depends_on_the_method_it_inherits(tmp_path):
    """A variant (`grm_no_sa: {arch: grm, ...}`) is resolved over methods.grm when fga loads the params, so its
    DVC stage must list methods.grm (or all of `methods`) among its params, or a change there leaves it current."""
    stages = dvc_stages(declarations(tmp_path, sweeps=True))
    methods = yaml.safe_load((tmp_path / "params.yaml").read_text())["methods"]
    checked = 0
    for stage in stages:
        if stage["name"] not in ("train", "train_ablation", "train_sweep"):
            continue
        method = canonical_options(stage["cmd"])["--method"]
        base = methods[method].get("arch")
        if base in methods and base != method:
            checked += 1
            assert {f"methods.{base}", "methods"} & stage["params"], (stage["name"], method, stage["params"])
    assert checked, "params.yaml's grid has no variant run to check"


def canonical_options(cmd: str) -> dict:
    return dict(canonical(cmd)[1])


def test_canonical_command_normalises_what_may_differ():
    sm = ("OMP_NUM_THREADS=2 python -m fga features extract --dataset synthetic --backbone b "
          "--params .snakemake/fga/params-0123456789abcdef.yaml --quiet > logs/x.log 2>&1")
    assert canonical(sm) == canonical("python -m fga features extract --backbone b --dataset synthetic --quiet")
    assert canonical(sm) != canonical("python -m fga features text --dataset synthetic --quiet")


@pytest.mark.e2e
def test_a_method_param_change_reruns_only_that_methods_branch(tiny_completed, tmp_path):
    project = copy_project(tiny_completed, tmp_path / "project")
    cfg = yaml.safe_load((project / "params.yaml").read_text())
    assert "grm" in cfg["grid"]["methods"] and len(cfg["grid"]["methods"]) > 1
    cfg["methods"]["grm"]["margin"] = cfg["methods"]["grm"]["margin"] + 0.05
    (project / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = subprocess.run([str(BIN / "snakemake"), "-n", "--profile", "workflow/profiles/default"], cwd=project,
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        if m := re.match(r"(?:local)?rule (\w+):", block):
            w = re.search(r"wildcards: (.*)", block)
            jobs.append((m[1], dict(kv.split("=", 1) for kv in w[1].split(", ")) if w else {}))
    seeds = [str(s) for s in cfg["grid"]["seeds"]]
    # grm's ablation variants (`arch: grm`) inherit its margin, so they retrain too; robustness scores main runs only
    variants = [m for m in (cfg["grid"].get("ablation") or {}).get("methods", [])
                if (cfg["methods"].get(m) or {}).get("arch") == "grm"]
    assert variants, "the tiny grid has a grm variant"
    rules = {r for r, _ in jobs}
    assert rules <= {"train", "evaluate", "robustness", "report", "all"}, sorted(rules)
    for rule in ("train", "evaluate") + (("robustness",) if "robustness" in rules else ()):
        got = sorted((w["method"], w["seed"]) for r, w in jobs if r == rule)
        methods = ["grm"] if rule == "robustness" else ["grm", *variants]
        assert got == sorted((m, s) for m in methods for s in seeds), (rule, got)
    assert "report" in rules
    assert "reason: Params have changed since last execution" in text
