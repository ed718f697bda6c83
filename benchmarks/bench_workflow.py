"""Workflow overhead: how long Snakemake takes to plan the default grid and to find nothing to do, and where the
job-seconds of a completed run go. Prints measured / target ratios (< 1 is good).

    python benchmarks/bench_workflow.py                    # dry run of the default grid (+ the repo itself if it ran)
    python benchmarks/bench_workflow.py --project DIR      # also the no-op rerun and the stage table of DIR
    python benchmarks/bench_workflow.py --project DIR --run [--cores 2] [-- SNAKEMAKE ARGS]
                                                           # first run the workflow in DIR, timed, start-up logged

DIR is a project directory after a complete run (`make run` in the repo, or any copy of it that ran). Per stage
(Snakemake rule family) the table gives the job-seconds and mean per job from Snakemake's `benchmark:` files and,
where the run's fga jobs wrote $FGA_STARTUP_LOG (``--run`` sets it to DIR/logs/fga-startup.jsonl; for `make run`
export it yourself), the share of each job spent before its first useful work (interpreter, imports, params) and
inside MLflow logging. Scheduling efficiency = job-seconds / (cores x wall): 100 % means no core ever idled.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGETS = {"dry_run_s": 3.0, "noop_rerun_s": 5.0, "grid_s": 600.0, "make_run_s": 720.0, "startup_beyond_torch_s": 0.5}
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
CORES = re.compile(r"^Provided cores: (\d+)", re.MULTILINE)
STARTUP_LOG = Path("logs") / "fga-startup.jsonl"  # under the project; what --run points $FGA_STARTUP_LOG at


def snakemake(args: list[str], cwd: Path) -> tuple[float, str]:
    exe = shutil.which("snakemake", path=str(BIN)) or "snakemake"
    t0 = time.perf_counter()
    out = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed in {cwd}:\n{out.stderr[-2000:]}")
    return elapsed, out.stdout + out.stderr


def time_dry_run(repeats: int) -> tuple[float, int]:
    """Median wall time of `snakemake -n` over the default grid, in a fresh copy of the declarations (no outputs)."""
    with tempfile.TemporaryDirectory(prefix="fga-bench-") as tmp:
        work = Path(tmp)
        for name in ("Snakefile", "params.yaml"):
            shutil.copy(ROOT / name, work / name)
        shutil.copytree(ROOT / "workflow", work / "workflow")
        times, text = [], ""
        for _ in range(repeats):
            elapsed, text = snakemake(["-n", "--cores", "1", "--quiet", "rules"], work)
            times.append(elapsed)
    jobs = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            jobs = int(parts[1])
    return statistics.median(times), jobs


def time_noop(project: Path, repeats: int) -> float | None:
    """Median wall time of a rerun that has nothing to do (None when the project is not complete)."""
    times = []
    for _ in range(repeats):
        elapsed, text = snakemake(["--cores", "1"], project)
        if "Nothing to be done" not in text:
            print(f"  {project}: the run is not complete (Snakemake had work to do); no-op timing skipped")
            return None
        times.append(elapsed)
    return statistics.median(times)


def stage_table(project: Path) -> list[tuple[str, int, float, float, float]]:
    """(stage, jobs, total s, mean s, max RSS MB) per stage from benchmarks/logs/<stage>/**/*.tsv."""
    return benchmark_stages(project / "benchmarks" / "logs")


def benchmark_stages(root: Path) -> list[tuple[str, int, float, float, float]]:
    """`stage_table` of a benchmark-file root (benchmarks/logs of a project)."""
    acc: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for path in root.rglob("*.tsv"):
        stage = path.relative_to(root).parts[0].removesuffix(".tsv")
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                try:
                    rss = float(row.get("max_rss") or 0)
                except ValueError:  # "-" where the job was too short to sample
                    rss = 0.0
                acc[stage].append((float(row["s"]), rss))
    rows = [(stage, len(v), sum(s for s, _ in v), sum(s for s, _ in v) / len(v), max(r for _, r in v))
            for stage, v in acc.items()]
    return sorted(rows, key=lambda r: -r[2])


def grid_wall_clock(project: Path) -> tuple[float, int] | None:
    """(seconds from the first to the last job event, jobs done) of the newest Snakemake log of a complete run
    that did work (a no-op rerun's log has no jobs); None when there is none."""
    run = last_complete_run(project)
    return None if run is None else (run.wall_s, run.jobs)


@dataclass(frozen=True)
class RunLog:
    wall_s: float  # first to last job event (1 s stamps)
    jobs: int
    cores: int | None  # "Provided cores: N" of the log


def parse_snakemake_log(text: str) -> RunLog | None:
    """The wall clock, jobs and cores of one Snakemake log of a complete run that did work, else None."""
    done = text.count("Finished jobid")
    if "(100%) done" not in text or not done:
        return None
    stamps = [datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y") for line in text.splitlines()
              if (m := STAMP.match(line))]
    if len(stamps) < 2:
        return None
    cores = CORES.search(text)
    return RunLog((stamps[-1] - stamps[0]).total_seconds(), done, int(cores[1]) if cores else None)


def last_complete_run(project: Path) -> RunLog | None:
    for log in sorted((project / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True):
        run = parse_snakemake_log(log.read_text(errors="replace"))
        if run is not None:
            return run
    return None


# --------------------------------------------------------------------------- start-up of the fga jobs


def read_startup_log(path: Path) -> list[dict]:
    """The JSON lines an fga CLI wrote to $FGA_STARTUP_LOG (fga/cli.py JobTimeline); torn lines are skipped."""
    entries = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and {"verb", "started", "ready", "ended"} <= entry.keys():
            entries.append(entry)
    return entries


def stage_of(entry: dict) -> str:
    """The benchmark-file stage (Snakefile rule family) of one fga job, from its verb and arguments."""
    verb, argv = entry["verb"], entry.get("argv", [])
    if verb == "data prepare":
        return "data"
    if verb.startswith("features"):
        return "features"
    if verb == "robustness distractors":  # the distractor rules: images (data/), then their features (features/)
        return "features" if "--backbone" in argv else "data"
    return verb


@dataclass(frozen=True)
class StartupRow:
    stage: str
    jobs: int
    job_s: float  # summed over the jobs, process start to the end of the verb
    startup_s: float  # summed: process start to the verb's first useful work
    tracking_s: float  # summed: inside MLflow logging (its import included)
    heavy: tuple[str, ...]  # heavy packages any job of the stage had loaded by its end

    @property
    def startup_share(self) -> float:
        return self.startup_s / self.job_s if self.job_s > 0 else 0.0

    @property
    def mean_startup_s(self) -> float:
        return self.startup_s / self.jobs


def startup_stages(entries: list[dict]) -> dict[str, StartupRow]:
    """Per stage: jobs, job-seconds, start-up and tracking seconds of the successful jobs of a start-up log."""
    acc: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        if e.get("status", 0) == 0:
            acc[stage_of(e)].append(e)
    rows = {}
    for stage, es in acc.items():
        heavy = sorted({p for e in es for p in e.get("packages_at_end", [])})
        rows[stage] = StartupRow(stage, len(es), sum(e["ended"] - e["started"] for e in es),
                                 sum(e["ready"] - e["started"] for e in es), sum(e.get("tracking_s", 0.0) for e in es),
                                 tuple(heavy))
    return rows


def python_start_s(code: str, repeats: int) -> float:
    """Median wall time of `python -c code` (the interpreter of this script)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def install_seconds(project: Path) -> float | None:
    """How long building the project's .venv took: from pyvenv.cfg (written first) to make's install stamp."""
    cfg, stamp = project / ".venv" / "pyvenv.cfg", project / ".venv" / ".installed-stamp"
    if not (cfg.exists() and stamp.exists()):
        return None
    return stamp.stat().st_mtime - cfg.stat().st_mtime


def scheduling_efficiency(job_s: float, cores: int, wall_s: float) -> float:
    """job-seconds / (cores x wall): the share of the cores' time that jobs ran."""
    return job_s / (cores * wall_s) if cores and wall_s > 0 else 0.0


def ratio_line(name: str, measured: float, target: float) -> str:
    return f"  {name:<28} {measured:7.2f} s   target {target:5.1f} s   ratio {measured / target:5.2f}"


def run_workflow(project: Path, cores: int, extra: list[str]) -> float:
    """Run the workflow in `project` with the fga jobs' start-up logged (a fresh log); its wall time in s."""
    log = project / STARTUP_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    exe = shutil.which("snakemake", path=str(BIN)) or "snakemake"
    env = {**os.environ, "FGA_STARTUP_LOG": str(log), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    out = subprocess.run([exe, "--profile", "workflow/profiles/default", "--cores", str(cores), *extra], cwd=project,
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"snakemake failed in {project}:\n{out.stderr[-3000:]}")
    return wall


def print_stages(project: Path, rows: list[tuple[str, int, float, float, float]], startup: dict[str, StartupRow],
                 torch_s: float) -> None:
    total = sum(r[2] for r in rows)
    src = f"; start-up from {STARTUP_LOG}" if startup else f" ({STARTUP_LOG} absent: no start-up columns)"
    print(f"\nStages of the run in {project} (job-seconds from Snakemake's benchmark files{src})")
    print(f"  {'stage':<11} {'jobs':>5} {'job-s':>8} {'share':>6} {'mean s':>7} {'max RSS MB':>10} "
          f"{'start-up s':>10} {'beyond torch':>12} {'start-up %':>10} {'MLflow %':>8}  heavy imports")
    for stage, n, tot, mean, rss in rows:
        line = f"  {stage:<11} {n:>5} {tot:>8.1f} {tot / total:>6.0%} {mean:>7.1f} {rss:>10.0f}"
        su = startup.get(stage)
        if su is not None:
            line += (f" {su.mean_startup_s:>10.2f} {su.mean_startup_s - torch_s:>12.2f} {su.startup_share:>10.0%} "
                     f"{su.tracking_s / su.job_s if su.job_s else 0:>8.0%}  {', '.join(su.heavy) or '-'}")
        print(line)
    print(f"  dominant stage: {rows[0][0]} ({rows[0][2] / total:.0%} of {total:.0f} job-seconds)")


def print_startup_target(startup: dict[str, StartupRow], torch_s: float) -> None:
    short = [r for s, r in startup.items() if s in ("train", "evaluate", "robustness")]
    if not short:
        return
    jobs = sum(r.jobs for r in short)
    beyond = sum(r.startup_s for r in short) / jobs - torch_s
    print(ratio_line(f"start-up beyond torch ({jobs} jobs)", beyond, TARGETS["startup_beyond_torch_s"]))
    print(f"  {'':<28} = mean start-up of the train/evaluate/robustness jobs minus `python -c 'import torch'` "
          f"({torch_s:.2f} s here, measured now)")


def print_run(project: Path, rows: list[tuple[str, int, float, float, float]], cores: int | None,
              wall: float | None) -> None:
    run = last_complete_run(project)
    if run is not None:
        print(ratio_line(f"the run itself ({run.jobs} jobs)", run.wall_s, TARGETS["grid_s"]))
    grid_s = run.wall_s if run is not None else wall
    cores = cores or (run.cores if run is not None else None)
    job_s = sum(r[2] for r in rows)
    if grid_s and cores and job_s:
        eff = scheduling_efficiency(job_s, cores, grid_s)
        print(f"  {'scheduling efficiency':<28} {eff:7.0%}     = {job_s:.0f} job-s / ({cores} cores x {grid_s:.0f} s wall)")
    install = install_seconds(project)
    if grid_s and install is not None:
        print(ratio_line("make run incl. install", install + grid_s, TARGETS["make_run_s"]) +
              f"   (install {install:.0f} s from {project}/.venv, grid {grid_s:.0f} s)")
    elif grid_s:
        print(f"  {'make run incl. install':<28} not measured: {project}/.venv has no install stamp "
              f"(target {TARGETS['make_run_s']:.0f} s = the install + the grid's {grid_s:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, help="a project directory after a complete run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run", action="store_true", help="first run the workflow in --project (timed, start-up logged)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores for --run (default: all)")
    ap.add_argument("snakemake_args", nargs="*", help="after --: extra arguments for --run's snakemake")
    a = ap.parse_args(argv)
    project = a.project or (ROOT if (ROOT / "benchmarks" / "logs").exists() else None)
    wall = None
    if a.run:
        if a.project is None:
            raise SystemExit("--run needs --project DIR (a copy of the repo to run the workflow in)")
        wall = run_workflow(a.project.resolve(), a.cores, a.snakemake_args)
        print(f"snakemake --cores {a.cores} {' '.join(a.snakemake_args)} in {a.project}: {wall:.1f} s wall")

    print("Workflow overhead (measured / target; ratio < 1 meets the target)")
    dry, jobs = time_dry_run(a.repeats)
    print(ratio_line(f"snakemake -n ({jobs} jobs)", dry, TARGETS["dry_run_s"]))
    startup = statistics.median(snakemake(["--version"], ROOT)[0] for _ in range(a.repeats))
    print(f"  {'(snakemake --version alone)':<28} {startup:7.2f} s   = the interpreter + Snakemake import, "
          f"{startup / dry:.0%} of the dry run")
    if project is None:
        print("  no completed project given (--project DIR): no-op rerun and stage table skipped")
        return 0
    noop = time_noop(project.resolve(), a.repeats)
    if noop is not None:
        print(ratio_line("no-op rerun", noop, TARGETS["noop_rerun_s"]))
    rows = stage_table(project)
    if not rows:
        print(f"  {project}/benchmarks/logs has no benchmark files: stage table skipped")
        return 0
    print_run(project.resolve(), rows, a.cores if a.run else None, wall)
    log = project / STARTUP_LOG
    per_stage = startup_stages(read_startup_log(log)) if log.exists() else {}
    torch_s = python_start_s("import torch", a.repeats) if per_stage else 0.0
    print_startup_target(per_stage, torch_s)
    print_stages(project, rows, per_stage, torch_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
