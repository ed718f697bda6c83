"""The module-ablation table (cf. GRM Table 2): each full model beside its variants (methods with `arch:`), ΔrSum."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from fga.models.registry import arch_name, declared_arch
from fga.report.notes import say
from fga.report.runs import COLUMNS, COMPARED as CELL, KEYS, PROVENANCE
from fga.report.tables import DASH, HEADERS, mean_std_table, write_table

# the module an ablation switch removes (docs/grm.md §6, Table 2)
SWITCH_NAMES = {"use_saliency": "SA/GA", "use_visual_adapter": "SA", "use_text_adapter": "GA", "use_region_prompt": "RP",
                "use_uncertainty": "UM", "use_reg": "L_reg"}
LABELS = CELL + ["model", "method"]


def variants(cfg: dict[str, Any]) -> dict[str, str]:
    """Ablation variants: method -> the arch it is a variant of (methods sections with an `arch:` key)."""
    return {m: arch_name(cfg, m) for m in (cfg.get("methods") or {}) if declared_arch(cfg, m)}


def variant_label(cfg: dict[str, Any], method: str, arch: str) -> str:
    """"w/o <modules>" for the switches the variant turns off, else its options that differ from the full model."""
    section = cfg["methods"][method]
    base = (cfg["methods"].get(arch) or {})
    removed = [SWITCH_NAMES.get(k, k.removeprefix("use_")) for k, v in section.items()
               if k.startswith("use_") and v is False]
    if removed:
        return "w/o " + " + ".join(removed)
    changed = [f"{k}={v}" for k, v in section.items() if k != "arch" and base.get(k) != v]
    return ", ".join(changed) or method


def _rows(cfg: dict[str, Any], summary: pd.DataFrame, of: dict[str, str]) -> list[dict[str, Any]]:
    """Per dataset/protocol/backbone/text encoder and arch: the full model (when it ran), then its variants that
    ran."""
    rows = []
    for keys, cell in summary.groupby(CELL, sort=True):
        by_method = {r["method"]: r for _, r in cell.iterrows()}
        for arch in sorted(set(of.values())):
            members = [m for m, a in of.items() if a == arch and m in by_method]
            if not members:
                continue
            full = by_method.get(arch)
            for method in ([arch] if full is not None else []) + sorted(members):
                r = by_method[method]
                label = f"{arch.upper()} (full)" if method == arch else variant_label(cfg, method, arch)
                delta = r["rsum_mean"] - full["rsum_mean"] if full is not None else math.nan
                rows.append({**dict(zip(CELL, keys)), "arch": arch,
                             "model": label, "method": method, "seeds": r["seeds"],
                             **{f"{c}_{s}": r[f"{c}_{s}"] for c in COLUMNS for s in ("mean", "std")},
                             "delta_rsum": delta})
    return rows


def ablation_table(cfg: dict[str, Any], runs: pd.DataFrame, summary: pd.DataFrame, out: Path, quiet: bool) -> bool:
    """Table 2 style: the full model and each variant of it, with ΔrSum against the full model."""
    of = {m: a for m, a in variants(cfg).items() if m in set(summary["method"])}
    if not of:
        say("report: no ablation variants (methods with `arch:`) among the evaluate runs; ablation table skipped", quiet)
        return False
    rows = _rows(cfg, summary, of)
    if not rows:
        say("report: ablation variants have no runs on the same backbone and text encoder as their full model; "
            "table skipped", quiet)
        return False
    data = pd.DataFrame(rows)
    shown = mean_std_table(data, LABELS, {c: HEADERS[c] for c in COLUMNS})
    shown["ΔrSum"] = [DASH if pd.isna(d) else ("0.0" if m.endswith("(full)") else f"{d:+.1f}")
                      for d, m in zip(data["delta_rsum"], data["model"])]
    prov = runs[runs["method"].isin(set(data["method"]))][KEYS + PROVENANCE + COLUMNS]
    note = ("Module ablation (cf. GRM Table 2): the full model and each variant with one module switched off "
            "(`methods.<variant>: {arch: ..., use_<module>: false}`), mean ± std over seeds; ΔrSum = variant − full, "
            "on the same dataset, protocol, backbone and text encoder. Runs in ablation_provenance.csv.")
    write_table(out, "ablation", "Module ablation", note, shown, data, prov)
    return True
