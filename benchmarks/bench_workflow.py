"""Workflow overhead: how long Snakemake takes to plan the default grid and to find nothing to do, and which stage
dominates a completed run (from Snakemake's `benchmark:` files). Prints measured / target ratios (< 1 is good).

    python benchmarks/bench_workflow.py                    # dry run of the default grid (+ the repo itself if it ran)
    python benchmarks/bench_workflow.py --project DIR      # also the no-op rerun and the stage table of DIR

DIR is a project directory after a complete run (`make run` in the repo, or any copy of it that ran).
"""
from __future__ import annotations

import argparse
import csv
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGETS = {"dry_run_s": 3.0, "noop_rerun_s": 5.0, "grid_s": 600.0}
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


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
    root = project / "benchmarks" / "logs"
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
    for log in sorted((project / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True):
        text = log.read_text(errors="replace")
        done = text.count("Finished jobid")
        if "(100%) done" not in text or not done:
            continue
        stamps = [datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y") for line in text.splitlines()
                  if (m := STAMP.match(line))]
        if len(stamps) >= 2:
            return (stamps[-1] - stamps[0]).total_seconds(), done
    return None


def ratio_line(name: str, measured: float, target: float) -> str:
    return f"  {name:<28} {measured:7.2f} s   target {target:5.1f} s   ratio {measured / target:5.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, help="a project directory after a complete run")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    project = a.project or (ROOT if (ROOT / "benchmarks" / "logs").exists() else None)

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
    wall = grid_wall_clock(project.resolve())
    if wall is not None:
        print(ratio_line(f"the run itself ({wall[1]} jobs)", wall[0], TARGETS["grid_s"]))
    rows = stage_table(project)
    if not rows:
        print(f"  {project}/benchmarks/logs has no benchmark files: stage table skipped")
        return 0
    total = sum(r[2] for r in rows)
    print(f"\nStages of the run in {project} (Snakemake benchmark files; job seconds, summed over jobs)")
    print(f"  {'stage':<12} {'jobs':>5} {'total s':>9} {'share':>6} {'mean s':>8} {'max RSS MB':>11}")
    for stage, n, tot, mean, rss in rows:
        print(f"  {stage:<12} {n:>5} {tot:>9.1f} {tot / total:>6.0%} {mean:>8.1f} {rss:>11.0f}")
    print(f"  dominant stage: {rows[0][0]} ({rows[0][2] / total:.0%} of {total:.0f} job-seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
