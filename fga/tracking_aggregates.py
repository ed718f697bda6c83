"""Seed aggregates that a parent run carries: mean and sample std over its seeds' evaluate runs of the
headline metrics, and the number of seeds.

Metric names: ``<protocol>/<name>_mean`` and ``<protocol>/<name>_std`` for every ``<protocol>/<name>`` that
an evaluate run logs with name in :data:`HEADLINE` (e.g. ``full/rsum_mean``), and ``n_seeds``. The std is
the sample std (ddof 1), 0 for a single seed, as in the report's tables.
"""
from __future__ import annotations

import statistics
from typing import Any, Iterable

HEADLINE = ("rsum", "i2t_R1", "t2i_R1")
AGGREGATED_STAGE = "evaluate"
SEED_COUNT = "n_seeds"


def newest_finished_per_seed(runs: Iterable[Any]) -> list[Any]:
    """The run that holds each seed: the newest finished one by ``(start_time, run_id)``, the order that
    decides which duplicate of a run key survives (a run still logging is not counted yet)."""
    newest: dict[str, Any] = {}
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        seed = run.data.tags.get("seed", "")
        order = (run.info.start_time or 0, run.info.run_id)
        held = newest.get(seed)
        if held is None or order > (held.info.start_time or 0, held.info.run_id):
            newest[seed] = run
    return [newest[s] for s in sorted(newest)]


def _is_headline(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and parts[1] in HEADLINE  # `<protocol>/<name>`, not ci/ or qbnorm/ variants


def seed_aggregates(seed_runs: list[Any]) -> dict[str, float]:
    """Mean and sample std of each headline metric over the seed runs that logged it, plus the seed count."""
    values: dict[str, list[float]] = {}
    for run in seed_runs:
        for name, value in run.data.metrics.items():
            if _is_headline(name):
                values.setdefault(name, []).append(float(value))
    out: dict[str, float] = {SEED_COUNT: float(len(seed_runs))}
    for name, series in sorted(values.items()):
        out[f"{name}_mean"] = statistics.fmean(series)
        out[f"{name}_std"] = statistics.stdev(series) if len(series) > 1 else 0.0
    return out
