"""Convergence: how close is each method to its plateau at the default epoch budget?

Trains every method of the default grid (params.yaml `grid.methods` on every `grid.backbones` backbone, and
the GRM ablations of `grid.ablation.methods` on `grid.ablation.backbones`, as the grid pairs them) for every
`grid.seeds` seed, for
`--max-epochs` epochs each, with the project's own training loop (fga.train.train: the project's
schedule, batch and method sections; only `train.epochs` is raised). Every epoch's validation rSum
comes from the run's history. Because an epoch's batches, warm-up and LR milestones do not depend on
`train.epochs`, the first `train.epochs` epochs of a long run are the default run's epochs, so one
run gives both the default budget's rSum and the plateau.

The curve of a run is its best-so-far validation rSum after each epoch (what a run of that many
epochs keeps as its checkpoint); a (backbone, method) curve is the mean +- sample std of its seeds'.

Plateau rule (`plateau_epoch`): the plateau is reached after e epochs when the seed-mean curve
gains at most `tol` over the next `--plateau-window` (3) epochs, with
tol = max(`--plateau-margin` rSum (3.0), `--plateau-std-factor` (0) x the seed std after e epochs).
The fixed margin is the default because a method with a large seed spread (SCAN on grid tokens,
std ~35 rSum) would otherwise count as flat while its mean still climbs. A curve that gains more
at every epoch with `window` epochs after it is "not reached" within `--max-epochs`.

Tracking: every run is logged to MLflow (experiment `--experiment`, default `convergence`: fga-<dataset>-convergence
in the project's tracking store) by the same logger `fga train` uses, and the tables and the learning-curve figure are
built from those MLflow runs (`--no-tracking`: from the runs' result.json files instead).

Outputs (under `--out`, default reports/convergence/): learning_curves.png/.pdf (the report's learning-curve figure:
validation rSum per epoch, mean +- std band over seeds), convergence.md and convergence.csv (per
backbone x method: plateau, best val rSum, val rSum at the budget and its share of the plateau's,
GRM's lead over each baseline at the budget and at the plateau, each ablation's delta vs GRM at the
plateau, test rSum of the best-val checkpoint, seconds per epoch), curves.csv (the seed-mean curves)
and runs/<dataset>/<backbone>/<method>/seed<k>/ (checkpoint, train.log and result.json of every run). A run
whose result.json matches its params is skipped, so an interrupted bench resumes where it stopped
(a run killed mid-way also resumes from its last finished epoch, fga.train's last.pt).

    python benchmarks/bench_convergence.py [--project .] [--max-epochs 20] [--jobs 8] [--threads 1]
        [--methods grm scan ...] [--backbones lite0_roi] [--seeds 0 1 2] [--set KEY=VALUE ...]
        [--ablation-methods ...] [--ablation-backbones ...] [--no-ablations] [--experiment NAME] [--no-tracking]
        [--out reports/convergence] [--no-test]

The project needs data/<dataset>/dataset.json, features/<dataset>/text_bigru/vocab.json and the backbones'
feature stores of its params.yaml; the bench names the Snakemake targets that make missing ones.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fga.checkpoint import CHECKPOINT_FILE, RESUME_FILE
from fga.config import load_params
from fga.errors import UserError
from fga.io import atomic_path, read_json, write_json
from fga.models.registry import arch_name
from fga.report.tables import pm
from fga.runs import run_hash
from fga.train import train, validation_rsum

ROOT = Path(__file__).resolve().parent.parent
RESULT_FILE = "result.json"
LOG_FILE = "train.log"
REFERENCE = "grm"  # the full model the leads and ablation deltas are taken against
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Job:
    """One training run of the bench."""

    dataset: str
    backbone: str
    method: str
    seed: int

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.dataset / self.backbone / self.method / f"seed{self.seed}"


@dataclass(frozen=True)
class PlateauRule:
    """The plateau rule's settings (see the module docstring)."""

    window: int = 3
    margin: float = 3.0
    std_factor: float = 0.0


# ---------------------------------------------------------------------------------------- the rule


def plateau_epoch(mean: Sequence[float], std: Sequence[float], rule: PlateauRule = PlateauRule()) -> int | None:
    """Index e of the first epoch after which the mean gains at most max(margin, std_factor x std[e]) over the
    next `window` epochs; None when no epoch with `window` epochs after it does (not reached)."""
    for e in range(len(mean) - rule.window):
        gain = max(mean[e + 1:e + 1 + rule.window]) - mean[e]
        if gain <= max(rule.margin, rule.std_factor * std[e]):
            return e
    return None


def seed_curves(histories: Sequence[Sequence[dict[str, Any]]]) -> np.ndarray:
    """[seeds, epochs] best-so-far validation rSum of each run, cut to the shortest history."""
    n = min(len(h) for h in histories)
    raw = np.array([[row["val_rsum"] for row in h[:n]] for h in histories], dtype=float)
    return np.maximum.accumulate(raw, axis=1)


def _mean_std(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (n-1; 0 for one seed) along `axis`."""
    return values.mean(axis=axis), values.std(axis=axis, ddof=1 if values.shape[axis] > 1 else 0)


# --------------------------------------------------------------------------------------- the table


def summarize(results: Sequence[dict[str, Any]], budget: int, rule: PlateauRule) -> dict[str, Any]:
    """One (backbone, method): plateau, best, budget and plateau rSum over its seeds' results."""
    curves = seed_curves([r["history"] for r in results])
    mean, std = _mean_std(curves)
    n = curves.shape[1]
    plateau = plateau_epoch(list(mean), list(std), rule)
    at = n - 1 if plateau is None else plateau  # not reached: the last epoch, a lower bound of the plateau
    tests = np.array([r["test_rsum"] for r in results if r.get("test_rsum") is not None], dtype=float)
    seconds = [h["seconds"] for r in results for h in r["history"] if "seconds" in h]
    row = {"seeds": len(results), "epochs_run": n, "plateau_epochs": None if plateau is None else plateau + 1,
           "plateau_reached": plateau is not None, "best_mean": mean[-1], "best_std": std[-1],
           "budget_epochs": budget, "budget_mean": None, "budget_std": None,
           "plateau_mean": mean[at], "plateau_std": std[at], "share_pct": None,
           "test_mean": None, "test_std": None, "sec_per_epoch": float(np.mean(seconds)) if seconds else None}
    if budget <= n:
        row.update(budget_mean=mean[budget - 1], budget_std=std[budget - 1],
                   share_pct=100.0 * mean[budget - 1] / mean[at] if mean[at] else None)
    if len(tests):
        row["test_mean"], row["test_std"] = (float(v) for v in _mean_std(tests))
    return {k: float(v) if isinstance(v, np.floating) else v for k, v in row.items()}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def build_rows(results: dict[Job, dict[str, Any]], cfg: dict[str, Any], backbones: Sequence[str],
               methods: Sequence[str], budget: int, rule: PlateauRule) -> list[dict[str, Any]]:
    """Per backbone x method (in the order given): `summarize`, plus GRM's lead over each baseline (GRM - method) at
    the budget and at the plateaus, and each GRM variant's delta vs GRM (variant - GRM) at the plateaus."""
    rows = []
    for backbone in backbones:
        groups = {m: [r for j, r in results.items() if (j.backbone, j.method) == (backbone, m)] for m in methods}
        summaries = {m: summarize(rs, budget, rule) for m, rs in groups.items() if rs}
        ref = summaries.get(REFERENCE)
        for method, row in summaries.items():
            lead_budget = lead_plateau = delta = None
            if ref is not None and method != REFERENCE:
                if arch_name(cfg, method) == REFERENCE:
                    delta = _difference(row["plateau_mean"], ref["plateau_mean"])
                else:
                    lead_budget = _difference(ref["budget_mean"], row["budget_mean"])
                    lead_plateau = _difference(ref["plateau_mean"], row["plateau_mean"])
            both_reached = ref is not None and ref["plateau_reached"] and row["plateau_reached"]
            rows.append({"backbone": backbone, "method": method, **row, "grm_lead_budget": lead_budget,
                         "grm_lead_plateau": lead_plateau, "delta_vs_grm_plateau": delta,
                         "plateaus_both_reached": both_reached})
    return rows


def _num(value: float | None, sign: bool = False) -> str:
    return "-" if value is None else f"{value:+.1f}" if sign else f"{value:.1f}"


MD_HEAD = ["Backbone", "Method", "Seeds", "Plateau (epochs)", "Best val rSum", "Val rSum @ budget",
           "% of plateau", "Val rSum @ plateau", "GRM − method @ budget", "GRM − method @ plateau",
           "Δ vs GRM @ plateau", "Test rSum (best-val ckpt)", "s / epoch"]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table; `*` marks a value that involves a plateau not reached (a lower bound of that plateau)."""
    lines = ["| " + " | ".join(MD_HEAD) + " |", "|" + "---|" * len(MD_HEAD)]
    for r in rows:
        star = "" if r["plateau_reached"] else "*"
        pair_star = "" if r["plateaus_both_reached"] else "*"
        share = "-" if r["share_pct"] is None else f"{'≤ ' if star else ''}{r['share_pct']:.1f}"
        plateau = f"{r['plateau_epochs']}" if r["plateau_reached"] else f"not reached (> {r['epochs_run']})"
        leads = [_num(r[k], True) for k in ("grm_lead_budget", "grm_lead_plateau", "delta_vs_grm_plateau")]
        leads[1:] = [v + pair_star if v != "-" else v for v in leads[1:]]
        cells = [r["backbone"], r["method"], str(r["seeds"]), plateau, pm(r["best_mean"], r["best_std"]),
                 pm(r["budget_mean"], r["budget_std"]), share, pm(r["plateau_mean"], r["plateau_std"]) + star,
                 *leads, pm(r["test_mean"], r["test_std"]), _num(r["sec_per_epoch"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_COLUMNS = ["backbone", "method", "seeds", "epochs_run", "plateau_epochs", "plateau_reached", "best_mean",
               "best_std", "budget_epochs", "budget_mean", "budget_std", "share_pct", "plateau_mean", "plateau_std",
               "grm_lead_budget", "grm_lead_plateau", "delta_vs_grm_plateau", "plateaus_both_reached", "test_mean",
               "test_std", "sec_per_epoch"]


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS) -> str:
    """Rows as CSV (empty cell = not applicable / not reached; floats to 4 decimals)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r[c], float) else r[c]
                         for c in columns])
    return out.getvalue()


def curve_rows(results: dict[Job, dict[str, Any]], backbones: Sequence[str], methods: Sequence[str]) -> list[dict]:
    """The seed-mean best-so-far validation curve of every backbone x method, one row an epoch."""
    rows = []
    for backbone in backbones:
        for method in methods:
            runs = [r for j, r in results.items() if (j.backbone, j.method) == (backbone, method)]
            if runs:
                mean, std = _mean_std(seed_curves([r["history"] for r in runs]))
                rows += [{"backbone": backbone, "method": method, "epochs": e + 1, "seeds": len(runs),
                          "val_rsum_mean": float(m), "val_rsum_std": float(s)}
                         for e, (m, s) in enumerate(zip(mean, std))]
    return rows


# ---------------------------------------------------------------------------------------- the runs


def bench_cfg(cfg: dict[str, Any], max_epochs: int, threads: int | None, device: str | None) -> dict[str, Any]:
    """The project's params with `max_epochs` epochs (and the bench's threads / device)."""
    out = copy.deepcopy(cfg)
    out["train"]["epochs"] = max_epochs
    if threads is not None:
        out["train"]["threads"] = threads
    if device is not None:
        out["train"]["device"] = device
    return out


def missing_inputs(dataset: str, backbones: Sequence[str]) -> list[str]:
    """The input files (relative to the project) that are not there yet."""
    needed = [f"data/{dataset}/dataset.json", f"features/{dataset}/text_bigru/vocab.json"]
    needed += [f"features/{dataset}/{b}/{split}.h5" for b in backbones for split in SPLITS]
    return [p for p in needed if not Path(p).exists()]


def finished(job: Job, cfg: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """The job's recorded result when it was produced with these params, else None."""
    path = job.run_dir(out) / RESULT_FILE
    if not path.exists():
        return None
    result = read_json(path, "bench result")
    return result if result.get("run_hash") == run_hash(cfg, job.dataset, job.backbone, job.method, job.seed) else None


def test_rsum(cfg: dict[str, Any], job: Job, run_dir: Path) -> float:
    """Test rSum (full split) of the run's best-validation checkpoint, as validation computes it."""
    from fga.evaluate.run import load_run

    run = load_run(cfg, job.dataset, job.backbone, job.method, job.seed, run_dir / CHECKPOINT_FILE, "test")
    return float(validation_rsum(run.model, run.data, run.device, cfg)["rsum"])


def run_job(cfg: dict[str, Any], job: Job, out: Path, with_test: bool) -> dict[str, Any]:
    """Train one run (resuming its last.pt), record its history (+ test rSum) in result.json; returns the result."""
    run_dir = job.run_dir(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(run_dir / LOG_FILE, "a") as log, contextlib.redirect_stdout(log):  # the per-epoch lines of fga.train
        meta = train(cfg, job.dataset, job.backbone, job.method, job.seed, run_dir, quiet=True)
    result = {"run_hash": meta["run_hash"], "job": job.__dict__, "history": meta["history"], "best": meta["best"],
              "test_rsum": test_rsum(cfg, job, run_dir) if with_test else None,
              "seconds": time.time() - started}
    write_json(run_dir / RESULT_FILE, result)
    (run_dir / RESUME_FILE).unlink(missing_ok=True)  # finished: result.json is what a rerun reads
    return result


def _report(job: Job, result: dict[str, Any], done: int, total: int) -> None:
    best = result["best"]
    print(f"[{done}/{total}] {job.backbone} {job.method} seed{job.seed}: best val rSum {best['rsum']:.1f} after "
          f"{best['epoch'] + 1} epochs ({result['seconds']:.0f} s)", flush=True)


def die_with_parent() -> None:
    """Make this worker get SIGTERM when the bench process dies (Linux's PR_SET_PDEATHSIG): a killed bench
    otherwise leaves its workers training for runs nobody collects (measured: orphans kept two cores busy)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def run_all(cfg: dict[str, Any], jobs: Sequence[Job], out: Path, n_jobs: int, with_test: bool) -> dict[Job, dict]:
    """Every job's result: recorded ones read back, the others trained (`n_jobs` processes at a time)."""
    results = {j: r for j in jobs if (r := finished(j, cfg, out)) is not None}
    todo = [j for j in jobs if j not in results]
    print(f"{len(results)} of {len(jobs)} runs already recorded in {out}; {len(todo)} to train", flush=True)
    if n_jobs <= 1 or len(todo) <= 1:
        for job in todo:
            results[job] = run_job(cfg, job, out, with_test)
            _report(job, results[job], len(results), len(jobs))
        return results
    # spawn: a forked child would inherit the parent's torch thread pools
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=get_context("spawn"), initializer=die_with_parent) as pool:
        futures = {pool.submit(run_job, cfg, job, out, with_test): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            results[job] = future.result()
            _report(job, results[job], len(results), len(jobs))
    return results


# ------------------------------------------------------------------------------------------ MLflow


def tracking_cfg(cfg: dict[str, Any], experiment: str, dataset: str, jobs: Sequence[Job]) -> dict[str, Any]:
    """The bench's params as an fga experiment of their own whose grid is the bench's jobs (so the report's learning
    curves, which keep the grid's runs, keep every one of them)."""
    out = copy.deepcopy(cfg)
    out["experiment"] = experiment
    out["grid"] = {**out["grid"], "datasets": [dataset], "backbones": list(dict.fromkeys(j.backbone for j in jobs)),
                   "methods": list(dict.fromkeys(j.method for j in jobs)),
                   "seeds": list(dict.fromkeys(j.seed for j in jobs)), "ablation": {"backbones": [], "methods": []}}
    return out


def _train_runs(cfg: dict[str, Any], dataset: str) -> dict[tuple[str, str, int], Any]:
    """(backbone, method, seed) -> the experiment's train run of cfg's text encoder (a row of
    fga.tracking.runs_frame; a run logged before the `text` tag existed is the BiGRU's)."""
    from fga.grid import DEFAULT_TEXT_ENCODER, run_text_encoder
    from fga.tracking import runs_frame

    runs = runs_frame(cfg, [dataset], "train")
    if runs.empty:
        return {}
    texts = runs["tags.text"].fillna(DEFAULT_TEXT_ENCODER) if "tags.text" in runs else DEFAULT_TEXT_ENCODER
    runs = runs[texts == run_text_encoder(cfg)]
    return {(r["tags.backbone"], r["tags.method"], int(r["tags.seed"])): r for _, r in runs.iterrows()}


def log_results(cfg: dict[str, Any], results: dict[Job, dict[str, Any]], out: Path) -> int:
    """Log every run not yet in MLflow with its params hash as an fga train run (step metrics = its history, plus
    test_rsum) in `cfg`'s experiment; returns how many were logged."""
    from fga.cli import file_hash
    from fga.grid import run_text_encoder
    from fga.tracking_sync import log_train_run

    logged = 0
    for dataset in dict.fromkeys(j.dataset for j in results):
        have = _train_runs(cfg, dataset)
        for job, result in results.items():
            run = have.get((job.backbone, job.method, job.seed))
            if job.dataset != dataset or (run is not None and run.get("tags.params_hash") == result["run_hash"]):
                continue
            tags = {"params_hash": result["run_hash"],
                    "data_hash": file_hash(Path("data") / job.dataset / "dataset.json")}
            metrics = {} if result.get("test_rsum") is None else {"test_rsum": float(result["test_rsum"])}
            key = {**job.__dict__, "text": run_text_encoder(cfg), "stage": "train"}
            log_train_run(cfg, key, result, job.run_dir(out) / CHECKPOINT_FILE,
                          tags=tags, metrics=metrics)
            logged += 1
    return logged


def mlflow_results(cfg: dict[str, Any], jobs: Sequence[Job]) -> dict[Job, dict[str, Any]]:
    """Every job's history (val_rsum and seconds per epoch) and test rSum as MLflow holds them."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg["tracking"]["uri"])
    results = {}
    for dataset in dict.fromkeys(j.dataset for j in jobs):
        runs = _train_runs(cfg, dataset)
        for job in (j for j in jobs if j.dataset == dataset):
            run = runs[(job.backbone, job.method, job.seed)]
            history: dict[int, dict[str, Any]] = {}
            for name in ("val_rsum", "seconds"):
                for m in client.get_metric_history(run["run_id"], name):
                    history.setdefault(int(m.step), {"epoch": int(m.step)})[name] = float(m.value)
            test = run.get("metrics.test_rsum")
            results[job] = {"history": [history[e] for e in sorted(history)],
                            "test_rsum": None if test is None or np.isnan(test) else float(test)}
    return results


def curve_figure(cfg: dict[str, Any], out: Path) -> list[str]:
    """learning_curves.png/.pdf under `out`: the report's learning-curve figure over the experiment's runs of the
    methods that are not GRM variants (the ablations would crowd it; their curves are in curves.csv)."""
    from fga.report.curves import learning_curve_figure

    methods = [m for m in cfg["grid"]["methods"] if m == REFERENCE or arch_name(cfg, m) != REFERENCE]
    return learning_curve_figure({**cfg, "grid": {**cfg["grid"], "methods": methods}}, out, quiet=True)


# ----------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU model name (lscpu, else /proc/cpuinfo, else platform)."""
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(threads: int, n_jobs: int) -> str:
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs; {n_jobs} job(s) x {threads} torch thread(s); "
            f"torch {torch.__version__}, Python {platform.python_version()}")


# -------------------------------------------------------------------------------------------- main


def job_list(cfg: dict[str, Any], dataset: str, args: argparse.Namespace) -> list[Job]:
    """The grid's methods on its backbones, then the GRM ablation variants on the ablation backbones (as the default
    grid pairs them; each list overridable on the command line), every seed."""
    ablation = cfg["grid"].get("ablation") or {}
    pairs = [(b, m) for b in args.backbones or cfg["grid"]["backbones"] for m in args.methods or cfg["grid"]["methods"]]
    pairs += [] if args.no_ablations else [(b, m) for b in args.ablation_backbones or ablation.get("backbones") or []
              for m in args.ablation_methods or ablation.get("methods") or []]
    seeds = args.seeds or cfg["grid"]["seeds"]
    return [Job(dataset, b, m, s) for b, m in dict.fromkeys(pairs) for s in seeds]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="project dir (data/, features/; default: the repo)")
    ap.add_argument("--params", type=Path, help="params file (default: <project>/params.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter as `fga --set` does (repeatable)")
    ap.add_argument("--dataset", help="default: the first of grid.datasets")
    ap.add_argument("--methods", nargs="+", help="default: grid.methods")
    ap.add_argument("--backbones", nargs="+", help="default: grid.backbones")
    ap.add_argument("--ablation-methods", nargs="+", help="default: grid.ablation.methods")
    ap.add_argument("--ablation-backbones", nargs="+", help="default: grid.ablation.backbones")
    ap.add_argument("--no-ablations", action="store_true", help="only --methods on --backbones")
    ap.add_argument("--seeds", nargs="+", type=int, help="default: grid.seeds")
    ap.add_argument("--max-epochs", type=int, default=20)
    ap.add_argument("--budget", type=int, help="the default budget compared with the plateau (default: train.epochs)")
    ap.add_argument("--threads", type=int, help="torch threads per run (default: train.threads)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: train.device")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "convergence")
    ap.add_argument("--experiment", default="convergence",
                    help="the fga experiment (MLflow: fga-<dataset>-<experiment>) the runs are logged to; the tables "
                         "and curves are built from what MLflow holds")
    ap.add_argument("--no-tracking", action="store_true", help="build the tables from the runs' result.json files")
    ap.add_argument("--no-test", action="store_true", help="skip the test rSum of each best-val checkpoint")
    ap.add_argument("--plateau-window", type=int, default=PlateauRule.window)
    ap.add_argument("--plateau-margin", type=float, default=PlateauRule.margin, help="rSum")
    ap.add_argument("--plateau-std-factor", type=float, default=PlateauRule.std_factor)
    return ap.parse_args(argv)


def write_outputs(out: Path, rows: list[dict], curves: list[dict], header: str) -> None:
    for name, text in [("convergence.md", header + "\n\n" + markdown_table(rows) + "\n"),
                       ("convergence.csv", csv_text(rows)),
                       ("curves.csv", csv_text(curves, list(curves[0]) if curves else []))]:
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)


def header_text(argv: Sequence[str], cfg: dict[str, Any], budget: int, rule: PlateauRule, machine: str,
                wall: float, train_s: float, source: str) -> str:
    tc = cfg["train"]
    return "\n".join([
        f"# Convergence: validation rSum vs epochs (up to {tc['epochs']}; default budget {budget})", "",
        f"Schedule: the project's (lr {tc['lr']}, x{tc['lr_gamma']} at {tc['lr_milestones']}, "
        f"batch {tc['batch_size']}). "
        "Values are best-so-far validation rSum (mean ± sample std over seeds), except the test rSum and s / epoch "
        "(training + validation, per run).",
        f"Plateau: the first epoch count after which the seed mean gains at most max({rule.margin:g} rSum, "
        f"{rule.std_factor:g} × seed std) over the next {rule.window} epochs. `*`: a plateau not reached, "
        "the value at the last epoch (a lower bound; `≤`: an upper bound of the share).",
        "GRM − method: GRM's lead over a baseline; Δ vs GRM: a GRM variant minus GRM; each at its own plateau.",
        f"Values read from {source}.",
        f"Machine: {machine}. The runs' own time {train_s / 3600:.2f} core-hours; this invocation's wall time "
        f"{wall / 60:.1f} min (recorded runs are read back, not retrained). "
        f"Command: `python benchmarks/bench_convergence.py {' '.join(argv)}`."])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = args.out.resolve()
    params = (args.params or args.project / "params.yaml").resolve()
    os.chdir(args.project)  # the stages read data/ and features/ relative to the project root
    started = time.time()
    try:
        cfg = load_params(params, args.overrides)
    except UserError as exc:
        raise SystemExit(f"bench_convergence: {exc}") from None
    budget = args.budget or cfg["train"]["epochs"]
    cfg = bench_cfg(cfg, args.max_epochs, args.threads, args.device)
    dataset = args.dataset or cfg["grid"]["datasets"][0]
    jobs = job_list(cfg, dataset, args)
    backbones, methods = (list(dict.fromkeys(getattr(j, k) for j in jobs)) for k in ("backbone", "method"))
    missing = missing_inputs(dataset, backbones)
    if missing:
        raise SystemExit(f"bench_convergence: {args.project}: missing {', '.join(missing)}; make them with "
                         f"`snakemake --cores all {' '.join(missing)}` in the project")
    machine = machine_line(cfg["train"].get("threads", 1), args.jobs)
    print(f"machine: {machine}\n{len(jobs)} runs x {args.max_epochs} epochs -> {out}", flush=True)
    results = run_all(cfg, jobs, out, args.jobs, not args.no_test)
    train_s = sum(r["seconds"] for r in results.values())
    source = "the runs' result.json files"
    if not args.no_tracking:
        tracked = tracking_cfg(cfg, args.experiment, dataset, jobs)
        logged = log_results(tracked, results, out)
        results = mlflow_results(tracked, jobs)
        figure = curve_figure(tracked, out)
        source = f"MLflow ({tracked['tracking']['uri']}, experiment `{args.experiment}`)"
        print(f"MLflow: {logged} run(s) logged, {len(results)} read back; figure {', '.join(figure) or 'skipped'}",
              flush=True)
    rule = PlateauRule(args.plateau_window, args.plateau_margin, args.plateau_std_factor)
    rows = build_rows(results, cfg, backbones, methods, budget, rule)
    wall = time.time() - started
    header = header_text(argv, cfg, budget, rule, machine, wall, train_s, source)
    write_outputs(out, rows, curve_rows(results, backbones, methods), header)
    print(markdown_table(rows))
    print(f"\nwall time {wall:.0f} s; the recorded runs' own time {train_s:.0f} s ({train_s / 3600:.2f} core-hours at "
          f"{cfg['train'].get('threads', 1)} thread(s) a run); tables in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
