"""fga/grid.py: the grid's cells (text-encoder axis included), run paths, and the sweep helpers: the flat list of
sweep runs DVC's sweep stages make, and params.yaml's copy of it."""
from __future__ import annotations

from pathlib import Path

import yaml

from fga.grid import dvc_sweep_runs, grid_cells, run_path, run_text_encoder, sweep_cells, text_encoders

ROOT = Path(__file__).resolve().parent.parent


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def dvc_sweep_cells(cfg: dict, runs: list[dict]) -> list[tuple[str, str, str, str, int]]:
    """The cells of sweeps/stages.yaml's matrix: grid.datasets x runs x sweeps.seeds."""
    return [(d, r["backbone"], r["text"], r["method"], int(s)) for d in cfg["grid"]["datasets"] for r in runs
            for s in cfg["sweeps"]["seeds"]]


def toy() -> dict:
    return {"grid": {"datasets": ["synthetic"], "backbones": ["b1", "b2"], "methods": ["grm", "scan"],
                     "seeds": [0, 1], "ablation": {"backbones": ["b2"], "methods": ["grm_no_sa"]}},
            "sweeps": {"backbones": ["b1", "b2"], "seeds": [0, 1], "modules": ["grm_no_sa", "grm_no_rp"],
                       "num_prompts": ["grm_k1", "grm", "grm_no_rp"]},
            "train": {"text_encoder": "bigru"}}


def test_dvc_sweep_runs_leave_out_the_runs_the_default_stages_make():
    # grm: the main grid, both backbones; grm_no_sa: grid.ablation on b2 only; the repeated grm_no_rp once
    runs = [("b1", "grm_no_sa"), ("b1", "grm_no_rp"), ("b1", "grm_k1"), ("b2", "grm_no_rp"), ("b2", "grm_k1")]
    assert dvc_sweep_runs(toy()) == [{"backbone": b, "text": "bigru", "method": m} for b, m in runs]


def test_without_sweeps_there_is_nothing_for_dvc():
    cfg = toy()
    del cfg["sweeps"]
    assert dvc_sweep_runs(cfg) == []


def test_params_yaml_dvc_runs_is_the_derived_list():
    cfg = params()
    want = dvc_sweep_runs(cfg)
    listed = "\n".join(f"    - {{backbone: {r['backbone']}, text: {r['text']}, method: {r['method']}}}" for r in want)
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


def test_the_text_encoder_axis_multiplies_every_cell_and_names_the_run_directory():
    cfg = toy()
    one = grid_cells(cfg)
    assert text_encoders(cfg) == ["bigru"] and {c[2] for c in one} == {"bigru"}
    assert len(one) == 1 * 2 * 2 * 2 + 1 * 2  # main grid + grm_no_sa on b2
    cfg["grid"]["text_encoders"] = ["bigru", "minilm"]
    two = grid_cells(cfg)
    assert len(two) == 2 * len(one) and len(set(two)) == len(two)
    assert {(d, b, m, s) for d, b, t, m, s in two if t == "minilm"} == {(d, b, m, s) for d, b, _, m, s in one}
    assert grid_cells(cfg, ablation=False)[-1] == ("synthetic", "b2", "minilm", "scan", 1)
    assert run_path("synthetic", "b2", "minilm", "grm", 1) == "synthetic/b2/minilm/grm/seed1"
    # the sweeps train with the grid's first encoder
    assert {c[2] for c in sweep_cells(cfg)} == {"bigru"}


def test_without_grid_text_encoders_the_grid_trains_train_text_encoder():
    cfg = toy()
    cfg["train"]["text_encoder"] = "minilm"
    assert text_encoders(cfg) == ["minilm"] == [run_text_encoder(cfg)]
    cfg["train"] = {}
    assert run_text_encoder(cfg) == "bigru"
