"""The runs a params grid asks for, as (dataset, backbone, method, seed) cells (the report's and the file source's view
of `grid`; the Snakefile expands the same lists in workflow/rules/common.smk)."""
from __future__ import annotations

from typing import Any


def grid_cells(cfg: dict[str, Any], ablation: bool = True) -> list[tuple[str, str, str, int]]:
    """(dataset, backbone, method, seed) of every run the grid asks for: the main grid, then (ablation=True)
    the ablation variants."""
    grid = cfg["grid"]
    cells = [(d, b, m, int(s)) for d in grid["datasets"] for b in grid["backbones"] for m in grid["methods"]
             for s in grid["seeds"]]
    no_variants = {"backbones": [], "methods": []}
    variants = (grid.get("ablation") or no_variants) if ablation else no_variants
    cells += [(d, b, m, int(s)) for d in grid["datasets"] for b in variants["backbones"] for m in variants["methods"]
              for s in grid["seeds"] if (d, b, m, int(s)) not in cells]
    return cells


# params.yaml `sweeps`: GRM's ablation and sensitivity grid (the paper's Tables 2-3, Fig. 4a/b), run by
# `snakemake grm_sweeps` (workflow/rules/sweeps.smk) and tabled by fga/report/grm.py.
SWEEP_BASE = "grm"  # the full model every sweep is compared with
SWEEP_LISTS = ("modules", "losses", "num_prompts", "level_weights")


def sweep_methods(cfg: dict[str, Any], key: str | None = None) -> list[str]:
    """The variants of one `sweeps` list (None: of every list), in the order listed, without repeats."""
    sweeps = cfg.get("sweeps") or {}
    names = [m for k in ([key] if key else SWEEP_LISTS) for m in (sweeps.get(k) or [])]
    return list(dict.fromkeys(names))


def sweep_cells(cfg: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    """(dataset, backbone, method, seed) of every run `snakemake grm_sweeps` makes: grm and each listed variant."""
    sweeps = cfg.get("sweeps") or {}
    methods = list(dict.fromkeys([SWEEP_BASE] + sweep_methods(cfg)))
    return [(d, b, m, int(s)) for d in cfg["grid"]["datasets"] for b in sweeps.get("backbones", [])
            for m in methods for s in sweeps.get("seeds", [])]


def dvc_sweep_runs(cfg: dict[str, Any]) -> list[dict[str, str]]:
    """{backbone, method} of each sweep run the default grid's DVC stages do not make, in sweep order: what
    params.yaml's `sweeps.dvc_runs` lists for sweeps/stages.yaml (DVC refuses two stages with one output)."""
    default, sweep = set(grid_cells(cfg)), sweep_cells(cfg)
    shared = {(b, m) for d, b, m, s in sweep if (d, b, m, s) in default}
    runs = dict.fromkeys((b, m) for _, b, m, _ in sweep)
    return [{"backbone": b, "method": m} for b, m in runs if (b, m) not in shared]
