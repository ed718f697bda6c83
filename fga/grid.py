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
