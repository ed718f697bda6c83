"""Kill trials: SIGKILL Snakemake's process group at random moments of the tiny grid, rerun, check nothing is lost.

    python benchmarks/bench_faults.py --trials 30 --seed 0             # 30 trials, one kill each
    python benchmarks/bench_faults.py --kills 3 --until 18:20          # up to 3 kills per trial; no trial after 18:20 UTC
    python benchmarks/bench_faults.py --workdir DIR                    # keep (and reuse) the reference run in DIR

One undisturbed run of the tiny grid (tests/test_workflow.py's TINY + tests/conftest.py's TINIER params, which
touches every stage kind: prepare, text features, features, distractors, train, evaluate, robustness, report) is the
reference (kept and reused when --workdir already holds a completed one). Each trial starts a fresh copy of the
declarations, kills Snakemake's process group with SIGKILL at a moment drawn uniformly over the first --span
(default 0.8) of the reference's wall time (seeded; a run faster than the reference would outlive later moments); with --kills K it restarts the grid and kills it again, up to K times (an attempt that finishes
before its moment ends the series); then it clears the stale lock (`snakemake --unlock`, as `make run` does),
reruns to completion and checks (`check_trial`):

- every metrics/robustness JSON and report table equals the reference byte for byte (MLflow run ids, random per
  run, masked in the tables' provenance columns);
- every artifact is complete: JSON parses, HDF5 stores open, checkpoints load, recorded integrity digests verify,
  no temp file of an atomic write is left;
- MLflow holds exactly one FINISHED run per run key and none RUNNING.

Prints trials, faults survived, outputs lost and the kill points by stage kind.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

# `python -m fga <verb> [<action>]` of each rule -> the stage kind a kill lands in
STAGE_KINDS = {("data", "prepare"): "prepare", ("features", "text-encode"): "text features",
               ("features", "extract"): "features",
               ("robustness", "distractors"): "distractors", ("train",): "train", ("evaluate",): "evaluate",
               ("robustness",): "robustness", ("report",): "report", ("dvc-record",): "dvc-record"}
# outputs whose bytes must equal the reference's (the results; stores/checkpoints are checked for readability)
COMPARED = ("results/**/*.json", "reports/tables/*.csv", "reports/tables/*.md")
RUN_ID = re.compile(rb"\b[0-9a-f]{32}\b")


def tiny_template(dst: Path) -> Path:
    """The tiny project's declarations (no outputs)."""
    from conftest import tiny_params
    from test_workflow import tiny_project

    dst.mkdir(parents=True)
    return tiny_params(tiny_project(dst))


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}


def snakemake_cmd(cores: int) -> list[str]:
    return [str(BIN / "snakemake"), "--profile", "workflow/profiles/default", "--cores", str(cores)]


def unlock(project: Path) -> None:
    subprocess.run([str(BIN / "snakemake"), "--unlock", "--quiet"], cwd=project, env=env(), capture_output=True)


def run_to_end(project: Path, cores: int) -> float:
    """Clear a stale lock, run the grid to completion; returns the wall seconds."""
    unlock(project)
    start = time.monotonic()
    out = subprocess.run(snakemake_cmd(cores), cwd=project, env=env(), capture_output=True, text=True)
    if out.returncode != 0:
        last = [line for line in out.stderr.splitlines() if "Exception" in line or "Error" in line][-1:]
        raise RuntimeError(f"rerun failed in {project}: {' '.join(last) or 'see its .snakemake/log'}")
    return time.monotonic() - start


def stage_kinds_running(session: int) -> list[str]:
    """Stage kinds of the `python -m fga` processes of the session (Snakemake's process group) right now."""
    kinds = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getsid(int(proc.name)) != session:
                continue
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ProcessLookupError):
            continue
        if "fga" in argv and argv[argv.index("fga") - 1] == "-m":
            words = argv[argv.index("fga") + 1:argv.index("fga") + 3]
            kinds.append(STAGE_KINDS.get(tuple(words)) or STAGE_KINDS.get(tuple(words[:1]), words[0]))
    return sorted(set(kinds))


def kill_at(project: Path, delay: float, cores: int) -> list[str]:
    """Start the grid, SIGKILL its process group after `delay` s; returns the stage kinds it hit ("snakemake" when
    only Snakemake itself ran, "done" when the run finished first)."""
    proc = subprocess.Popen(snakemake_cmd(cores), cwd=project, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    if proc.poll() is not None:
        return ["done"]
    kinds = stage_kinds_running(proc.pid) or ["snakemake"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return kinds


def compared_bytes(project: Path) -> dict[str, bytes]:
    """The compared outputs' bytes, MLflow run ids (random per run: the tables' provenance) masked."""
    return {str(p.relative_to(project)): RUN_ID.sub(b"<run_id>", p.read_bytes()) for pattern in COMPARED
            for p in sorted(project.glob(pattern))}


def unreadable_artifacts(project: Path) -> list[str]:
    """Artifacts of a finished run that do not open (or fail their recorded digest), and leftover temp files."""
    bad = []
    for path in sorted(p for p in project.rglob("*") if p.is_file() and ".snakemake" not in p.parts):
        rel = str(path.relative_to(project))
        try:
            check_artifact(path)
        except Exception as exc:  # noqa: BLE001 -- any failure to open is a lost output
            bad.append(f"{rel}: {exc.__class__.__name__}: {str(exc)[:200]}")
    return bad


def check_artifact(path: Path) -> None:
    """Open `path` by its kind and check its recorded content digest; raise when it is incomplete or altered."""
    name = path.name
    if name.endswith(".partial") or (name.startswith(".") and name.endswith((".tmp", ".old", ".npz", ".npy"))):
        raise RuntimeError("temp file of an interrupted write left behind")
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".h5":
        check_store(path)
    elif name == "checkpoint.safetensors":
        from fga.checkpoint import load_checkpoint

        load_checkpoint(path)
    elif name == "last.pt":
        check_resume_state(path)
    elif path.suffix == ".npz":
        import numpy as np

        with np.load(path) as z:  # reading every member checks its zip CRC-32
            [z[k] for k in z.files]
    elif path.suffix in (".png", ".jpg"):
        from PIL import Image

        with Image.open(path) as image:
            image.load()
    elif path.suffix == ".npy":
        from fga.evaluate.similarity import load_matrix

        load_matrix(path)


def check_store(path: Path) -> None:
    import h5py

    from fga.features.store import DIGEST_ATTR, content_digest

    with h5py.File(path, "r") as f:
        if DIGEST_ATTR not in f.attrs:
            raise RuntimeError("finished store without a content digest")
        if content_digest(f) != f.attrs[DIGEST_ATTR]:
            raise RuntimeError("content digest mismatch")


def check_resume_state(path: Path) -> None:
    import torch

    from fga.checkpoint import STATE_DIGEST_KEY
    from fga.integrity import tree_sha256

    state = torch.load(path, map_location="cpu", weights_only=True)
    if tree_sha256({k: v for k, v in state.items() if k != STATE_DIGEST_KEY}) != state[STATE_DIGEST_KEY]:
        raise RuntimeError("content digest mismatch")


def mlflow_problems(project: Path) -> list[str]:
    """Run keys without exactly one FINISHED active run, and active runs left RUNNING."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    from fga.tracking import KEY_TAGS, PARENT_STAGE

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    problems, per_key = [], Counter()
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=5000):
            if run.info.status == "RUNNING":
                problems.append(f"run {run.info.run_id} ({run.data.tags.get('mlflow.runName')}) left RUNNING")
            if run.data.tags.get("stage") == PARENT_STAGE or not all(k in run.data.tags for k in KEY_TAGS):
                continue
            per_key[(exp.name, *(run.data.tags[k] for k in KEY_TAGS))] += 1
            if run.info.status != "FINISHED":
                problems.append(f"run {run.info.run_id} status {run.info.status}")
    problems += [f"{key}: {n} active runs" for key, n in per_key.items() if n != 1]
    return problems


def check_trial(project: Path, reference: dict[str, bytes], n_keys: int) -> list[str]:
    """Everything a trial lost or broke (empty: the fault was survived)."""
    got = compared_bytes(project)
    lost = [f"{rel}: missing" for rel in reference if rel not in got]
    lost += [f"{rel}: differs from the reference" for rel in reference if rel in got and got[rel] != reference[rel]]
    lost += [f"{rel}: not in the reference" for rel in got if rel not in reference]
    lost += unreadable_artifacts(project)
    problems = mlflow_problems(project)
    lost += problems
    keys = len(mlflow_keys(project))
    if not problems and keys != n_keys:
        lost.append(f"MLflow holds {keys} run keys, the reference {n_keys}")
    return lost


def mlflow_keys(project: Path) -> set[tuple]:
    import mlflow

    from fga.tracking import KEY_TAGS

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    return {(exp.name, *(r.data.tags[k] for k in KEY_TAGS)) for exp in client.search_experiments()
            for r in client.search_runs([exp.experiment_id], max_results=5000)
            if all(k in r.data.tags for k in KEY_TAGS)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--kills", type=int, default=1, help="kills per trial before its final rerun (default 1)")
    ap.add_argument("--span", type=float, default=0.8, help="kill moments within this fraction of the reference time")
    ap.add_argument("--until", help="HH:MM (UTC): start no trial after this time")
    ap.add_argument("--workdir", type=Path, help="keep the projects here (default: a temp dir, removed)")
    a = ap.parse_args(argv)
    summary = run_trials(a.trials, a.seed, a.cores, a.until, a.workdir, a.kills, span=a.span)
    return 0 if summary["survived"] == summary["trials"] else 1


def _stop_time(until: str | None) -> float | None:
    if not until:
        return None
    now = datetime.now(timezone.utc)
    hh, mm = map(int, until.split(":"))
    return time.time() + (now.replace(hour=hh, minute=mm, second=0, microsecond=0) - now).total_seconds()


def reference_run(base: Path, cores: int, completed: Path | None = None) -> tuple[Path, float]:
    """The tiny grid's template and one undisturbed run of it: reused from `base` when already there, copied from
    `completed` (a tiny project after a complete run, e.g. the tests' `tiny_completed`), else run here."""
    template, reference_dir, record = base / "template", base / "reference", base / "reference.json"
    if record.exists():
        return template, json.loads(record.read_text())["seconds"]
    shutil.rmtree(template, ignore_errors=True)
    shutil.rmtree(reference_dir, ignore_errors=True)
    tiny_template(template)
    if completed is not None:
        from bench_workflow import grid_wall_clock

        shutil.copytree(completed, reference_dir, symlinks=True)
        seconds = grid_wall_clock(reference_dir.resolve())[0]
    else:
        shutil.copytree(template, reference_dir)
        seconds = run_to_end(reference_dir, cores)
    record.write_text(json.dumps({"seconds": seconds}) + "\n")
    return template, seconds


def one_trial(project: Path, rng: random.Random, window_s: float, cores: int,
              kills: int) -> tuple[list[tuple[float, list[str]]], float]:
    """Up to `kills` kills at random moments, then the rerun; returns [(delay, stage kinds hit)], rerun seconds."""
    hits = []
    for _ in range(kills):
        delay = rng.uniform(0.0, window_s)
        kinds = kill_at(project, delay, cores)
        hits.append((delay, kinds))
        if kinds == ["done"]:
            break
        unlock(project)
    try:
        return hits, run_to_end(project, cores)
    except RuntimeError as exc:
        exc.hits = hits  # type: ignore[attr-defined]
        raise


def run_trials(trials: int, seed: int, cores: int, until: str | None = None, workdir: Path | None = None,
               kills: int = 1, completed: Path | None = None, span: float = 0.8) -> dict:
    """The reference run and `trials` kill trials; prints and returns the summary."""
    stop_at = _stop_time(until)
    base = workdir or Path(tempfile.mkdtemp(prefix="bench_faults."))
    base.mkdir(parents=True, exist_ok=True)
    template, ref_seconds = reference_run(base, cores, completed)
    reference_dir = base / "reference"
    reference, n_keys = compared_bytes(reference_dir), len(mlflow_keys(reference_dir))
    print(f"reference: {ref_seconds:.0f} s, {len(reference)} compared outputs, {n_keys} MLflow run keys", flush=True)
    rng = random.Random(seed)
    kinds, done, survived, lost_total, faults = Counter(), 0, 0, 0, 0
    for trial in range(trials):
        if stop_at is not None and time.time() > stop_at:
            break
        project = base / f"trial{trial:02d}"
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(template, project)
        try:
            hits, rerun = one_trial(project, rng, span * ref_seconds, cores, kills)
            lost = check_trial(project, reference, n_keys)
        except RuntimeError as exc:  # the rerun itself failed: nothing of this trial is trusted
            hits, rerun, lost = getattr(exc, "hits", []), float("nan"), [str(exc).splitlines()[0]]
        for _, hit in hits:
            kinds.update(hit)
        faults += sum(hit != ["done"] for _, hit in hits)
        done += 1
        survived += not lost
        lost_total += len(lost)
        where = ", ".join(f"{delay:.0f} s {'+'.join(hit)}" for delay, hit in hits)
        print(f"trial {trial:2d}: kills at [{where}], rerun {rerun:.0f} s: "
              f"{'survived' if not lost else 'LOST: ' + '; '.join(lost[:5])}", flush=True)
        if not lost:
            shutil.rmtree(project)
    summary = {"trials": done, "faults": faults, "survived": survived, "outputs_lost": lost_total,
               "kill_points": dict(sorted(kinds.items())), "reference_s": round(ref_seconds, 1), "seed": seed,
               "kills_per_trial": kills, "span": span}
    print(f"\ntrials: {done}  faults injected: {faults}  trials survived: {survived}  outputs lost: {lost_total}")
    print("kill points by stage kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    if workdir is None and survived == done:
        shutil.rmtree(base, ignore_errors=True)
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
