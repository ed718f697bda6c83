"""Frames shaped like what fga.report.runs reads from MLflow, built by hand (no store): for the report's unit tests."""
from __future__ import annotations

import pandas as pd

from fga.grid import run_path
from fga.report.runs import COLUMNS


def recalls(base: float) -> dict[str, float]:
    """Six recalls base, base+1, ... and their rSum."""
    vals = {c: base + i for i, c in enumerate(COLUMNS[:-1])}
    return {**vals, "rsum": sum(vals.values())}


def evaluation_frame(rows: list[tuple[str, int, float]], dataset: str = "synthetic", backbone: str = "b",
                     ci: bool = True, qb: bool = False, text: str = "bigru") -> pd.DataFrame:
    """fga.report.runs.evaluation_runs' frame: one row per (method, seed, recall base), all of one text encoder."""
    out = []
    for method, seed, base in rows:
        vals = recalls(base)
        row = {"dataset": dataset, "backbone": backbone, "text": text, "method": method, "seed": seed,
               "protocol": "full", "run_id": f"{method}-{seed}-{text}", "weights": "random", "tie_rule": "pessimistic",
               **vals, "result_file": f"results/{run_path(dataset, backbone, text, method, seed)}/metrics.json"}
        if ci:
            row.update({f"{c}_ci_lo": v - 2 for c, v in vals.items()})
            row.update({f"{c}_ci_hi": v + 2 for c, v in vals.items()})
        if qb:
            row.update({f"qb_{c}": v + (6 if c == "rsum" else 1) for c, v in vals.items()})
        out.append(row)
    return pd.DataFrame(out)
