"""The significance table: a paired test "GRM > baseline" in rSum per seed, from the evaluate runs' ranks.npz
(fga.evaluate.stats.paired_test), and one verdict over the seeds (fga.evaluate.stats.paired_tests_over_seeds).
Both runs of a pair share dataset, protocol, backbone and text encoder: only the method differs."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from fga.evaluate.stats import bootstrap_options, paired_test, paired_tests_over_seeds
from fga.report.notes import say
from fga.report.runs import COMPARED as PAIRED, RESULT_FILE, run_ranks
from fga.report.tables import DASH, write_table

CELL = PAIRED + ["baseline"]


def _pairs(runs: pd.DataFrame, method: str,
           baselines: list[str]) -> Iterator[tuple[tuple, str, int, pd.Series, pd.Series]]:
    """((dataset, protocol, backbone, text), baseline, seed, run of `method`, run of the baseline) for every seed both
    ran; a run is its row (run_id, result_file)."""
    for cell_key, cell in runs.groupby(PAIRED, sort=True):
        ours = cell[cell["method"] == method].set_index("seed")
        for baseline in baselines:
            theirs = cell[cell["method"] == baseline].set_index("seed")
            for seed in sorted(set(ours.index) & set(theirs.index)):
                yield cell_key, baseline, seed, ours.loc[seed], theirs.loc[seed]


def _per_seed_tests(cfg: dict[str, Any], runs: pd.DataFrame, method: str, baselines: list[str],
                    opts: dict[str, Any], quiet: bool) -> list[dict[str, Any]]:
    """One paired_test row per (cell, baseline, seed) whose two runs logged ranks of the same test queries."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[str, Any] = {}

        def ranks(run_id: str) -> Any:
            if run_id not in cache:
                cache[run_id] = run_ranks(cfg, run_id, Path(tmp))
            return cache[run_id]

        for cell_key, baseline, seed, ours, theirs in _pairs(runs, method, baselines):
            cell = dict(zip(PAIRED, cell_key))
            a, b = ranks(ours["run_id"]), ranks(theirs["run_id"])
            where = f"{cell['dataset']}/{cell['backbone']}/{cell['text']}/{{}}/seed{seed}"
            if a is None or b is None:
                say(f"report: no ranks.npz artifact in the evaluate run of "
                    f"{where.format(method if a is None else baseline)}; its significance row skipped", quiet)
                continue
            if a.caps_per_image != b.caps_per_image or not np.array_equal(a.image_ids, b.image_ids):
                say(f"report: {where.format(method)} and {where.format(baseline)} ranked different test "
                    "queries; their significance row skipped", quiet)
                continue
            test = paired_test((a.i2t, a.t2i), (b.i2t, b.t2i), a.caps_per_image, **opts)
            rows.append({**cell, "baseline": baseline,
                         "seed": str(seed), "delta_rsum": test["delta_rsum"], "ci_lo": test["ci"][0],
                         "ci_hi": test["ci"][1], "p_value": test["p_value"], "n_images": len(a.image_ids),
                         "n_resamples": test["n_resamples"], RESULT_FILE: ours[RESULT_FILE],
                         f"baseline_{RESULT_FILE}": theirs[RESULT_FILE]})
    return rows


def _shown(data: pd.DataFrame, method: str, confidence: float) -> pd.DataFrame:
    shown = data[CELL + ["seed"]].rename(columns={k: k.capitalize() for k in CELL + ["seed"]})
    shown[f"ΔrSum ({method.upper()} - baseline)"] = [f"{d:+.1f}" for d in data["delta_rsum"]]
    shown[f"ΔrSum {confidence:.0%} CI"] = [DASH if pd.isna(lo) else f"[{lo:+.1f}, {hi:+.1f}]"
                                           for lo, hi in zip(data["ci_lo"], data["ci_hi"])]
    shown[f"p ({method.upper()} better)"] = [f"{p:.3g}" for p in data["p_value"]]
    return shown


def _note(method: str, opts: dict[str, Any]) -> str:
    return (f"Paired test of H1 \"{method.upper()} > baseline in rSum\" on the same test queries (primary protocol), "
            f"from the per-query ranks each evaluate run logged (ranks.npz): p = one-sided sign-flip permutation test "
            f"of the per-image rSum differences (an image with its captions is the unit), CI = paired percentile "
            f"bootstrap of ΔrSum; {opts['n_resamples']} resamples, seed {opts['seed']} (`evaluate.bootstrap`). "
            f"Seed `all`: ΔrSum = mean over the seeds, p = the LARGEST per-seed p (it is below α only if "
            f"{method.upper()} wins at every seed; conservative, no CI). Runs in significance_provenance.csv.")


def significance_table(cfg: dict[str, Any], runs: pd.DataFrame, out: Path, quiet: bool, method: str = "grm",
                       ties: str = "") -> bool:
    """Paired test "`method` > baseline" in rSum on the same test queries, per seed, for every other main-grid
    method, then over the seeds; False (and a note) when no pair of runs has ranks to compare."""
    baselines = sorted(set(runs["method"]) - {method})
    if method not in set(runs["method"]) or not baselines:
        say(f"report: the significance table needs {method} and a baseline among the evaluate runs; skipped", quiet)
        return False
    opts = bootstrap_options(cfg)
    rows = _per_seed_tests(cfg, runs, method, baselines, opts, quiet)
    if not rows:
        say(f"report: no {method}/baseline pair of runs with ranks.npz on the same seed; significance table skipped",
            quiet)
        return False
    per_seed = pd.DataFrame(rows)
    data = pd.concat([per_seed, paired_tests_over_seeds(per_seed, CELL)], ignore_index=True)
    data["_order"] = [math.inf if s == "all" else int(s) for s in data["seed"]]  # seeds numerically, `all` last
    data = data.sort_values(CELL + ["_order"]).drop(columns="_order").reset_index(drop=True)
    prov = per_seed[CELL + ["seed", RESULT_FILE, f"baseline_{RESULT_FILE}"]]
    write_table(out, "significance", f"Significance: {method.upper()} vs each baseline (paired, per seed)",
                _note(method, opts) + (f" {ties}" if ties else ""), _shown(data, method, opts["confidence"]), data,
                prov)
    return True
