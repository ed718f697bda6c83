"""The runs a params grid asks for, as (dataset, backbone, text encoder, method, seed) cells (the report's and the
file source's view of `grid`; the Snakefile expands the same lists in workflow/rules/common.smk), and where a run's
files live: <runs or results>/<dataset>/<backbone>/<text encoder>/<method>/seed<k>/ (:func:`run_path`)."""
from __future__ import annotations

from typing import Any

Cell = tuple[str, str, str, str, int]  # dataset, visual backbone, text encoder, method, seed
DEFAULT_TEXT_ENCODER = "bigru"  # the BiGRU over vocabulary words (fga.models.text_encoder.BIGRU is this name)


def run_text_encoder(cfg: dict[str, Any]) -> str:
    """The caption encoder a run of this config trains (`train.text_encoder`, which a job's --text-encoder sets)."""
    return str((cfg.get("train") or {}).get("text_encoder") or DEFAULT_TEXT_ENCODER)


def text_encoders(cfg: dict[str, Any]) -> list[str]:
    """The grid's caption encoders (`grid.text_encoders`; without it, the one `train.text_encoder` names)."""
    listed = cfg["grid"].get("text_encoders")
    return [str(t) for t in listed] if listed else [run_text_encoder(cfg)]


def run_path(dataset: str, backbone: str, text: str, method: str, seed: int) -> str:
    """A run's directory under the runs/ or results/ root: <dataset>/<backbone>/<text>/<method>/seed<k>."""
    return f"{dataset}/{backbone}/{text}/{method}/seed{int(seed)}"


def grid_cells(cfg: dict[str, Any], ablation: bool = True) -> list[Cell]:
    """(dataset, backbone, text encoder, method, seed) of every run the grid asks for: the main grid, then
    (ablation=True) the ablation variants (on every text encoder of the grid)."""
    grid = cfg["grid"]
    texts = text_encoders(cfg)
    cells = [(d, b, t, m, int(s)) for d in grid["datasets"] for b in grid["backbones"] for t in texts
             for m in grid["methods"] for s in grid["seeds"]]
    no_variants = {"backbones": [], "methods": []}
    variants = (grid.get("ablation") or no_variants) if ablation else no_variants
    cells += [(d, b, t, m, int(s)) for d in grid["datasets"] for b in variants["backbones"] for t in texts
              for m in variants["methods"] for s in grid["seeds"] if (d, b, t, m, int(s)) not in cells]
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


def sweep_cells(cfg: dict[str, Any]) -> list[Cell]:
    """(dataset, backbone, text encoder, method, seed) of every run `snakemake grm_sweeps` makes: grm and each
    listed variant, with the grid's first text encoder."""
    sweeps = cfg.get("sweeps") or {}
    methods = list(dict.fromkeys([SWEEP_BASE] + sweep_methods(cfg)))
    text = text_encoders(cfg)[0]
    return [(d, b, text, m, int(s)) for d in cfg["grid"]["datasets"] for b in sweeps.get("backbones", [])
            for m in methods for s in sweeps.get("seeds", [])]


def dvc_sweep_runs(cfg: dict[str, Any]) -> list[dict[str, str]]:
    """{backbone, text, method} of each sweep run the default grid's DVC stages do not make, in sweep order: what
    params.yaml's `sweeps.dvc_runs` lists for sweeps/stages.yaml (DVC refuses two stages with one output)."""
    default, sweep = set(grid_cells(cfg)), sweep_cells(cfg)
    shared = {(b, t, m) for d, b, t, m, s in sweep if (d, b, t, m, s) in default}
    runs = dict.fromkeys((b, t, m) for _, b, t, m, _ in sweep)
    return [{"backbone": b, "text": t, "method": m} for b, t, m in runs if (b, t, m) not in shared]
