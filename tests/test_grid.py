"""fga/grid.py's sweep helpers: the flat list of sweep runs DVC's sweep stages make, and params.yaml's copy of it."""
from __future__ import annotations

from pathlib import Path

import yaml

from fga.grid import dvc_sweep_runs, grid_cells, sweep_cells

ROOT = Path(__file__).resolve().parent.parent


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def dvc_sweep_cells(cfg: dict, runs: list[dict]) -> list[tuple[str, str, str, int]]:
    """The cells of sweeps/stages.yaml's matrix: grid.datasets x runs x sweeps.seeds."""
    return [(d, r["backbone"], r["method"], int(s)) for d in cfg["grid"]["datasets"] for r in runs
            for s in cfg["sweeps"]["seeds"]]


def toy() -> dict:
    return {"grid": {"datasets": ["synthetic"], "backbones": ["b1", "b2"], "methods": ["grm", "scan"],
                     "seeds": [0, 1], "ablation": {"backbones": ["b2"], "methods": ["grm_no_sa"]}},
            "sweeps": {"backbones": ["b1", "b2"], "seeds": [0, 1], "modules": ["grm_no_sa", "grm_no_rp"],
                       "num_prompts": ["grm_k1", "grm", "grm_no_rp"]}}


def test_dvc_sweep_runs_leave_out_the_runs_the_default_stages_make():
    # grm: the main grid, both backbones; grm_no_sa: grid.ablation on b2 only; the repeated grm_no_rp once
    assert dvc_sweep_runs(toy()) == [
        {"backbone": "b1", "method": "grm_no_sa"}, {"backbone": "b1", "method": "grm_no_rp"},
        {"backbone": "b1", "method": "grm_k1"}, {"backbone": "b2", "method": "grm_no_rp"},
        {"backbone": "b2", "method": "grm_k1"}]


def test_without_sweeps_there_is_nothing_for_dvc():
    cfg = toy()
    del cfg["sweeps"]
    assert dvc_sweep_runs(cfg) == []


def test_params_yaml_dvc_runs_is_the_derived_list():
    cfg = params()
    want = dvc_sweep_runs(cfg)
    listed = "\n".join(f"    - {{backbone: {r['backbone']}, method: {r['method']}}}" for r in want)
    assert cfg["sweeps"].get("dvc_runs") == want, (
        f"params.yaml: sweeps.dvc_runs is out of step with the sweep lists and the grid; set it to\n"
        f"  dvc_runs:\n{listed}")


def test_dvc_makes_every_sweep_run_exactly_once():
    """dvc.yaml's train/evaluate stages (the grid) and sweeps/stages.yaml's (sweeps.dvc_runs) together make every
    run `snakemake grm_sweeps` makes, and no run twice (DVC refuses two stages with one output)."""
    cfg = params()
    default, sweeps = grid_cells(cfg), dvc_sweep_cells(cfg, cfg["sweeps"]["dvc_runs"])
    assert len(set(sweeps)) == len(sweeps) and not set(default) & set(sweeps)
    assert set(sweep_cells(cfg)) <= set(default) | set(sweeps)
