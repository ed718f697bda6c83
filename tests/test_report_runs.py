"""fga.report.runs: the frames the report reads from MLflow runs, grid filtering, run artifacts."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fga.errors import UserError
from fga.grid import grid_cells
from fga.report.runs import (attention_maps, bin_order, evaluation_runs, in_grid, missing_runs,
                             robustness_runs, run_ranks, series_label)

GRID = {"grid": {"datasets": ["d"], "backbones": ["b"], "text_encoders": ["bigru"], "methods": ["grm", "vse"],
                 "seeds": [0, 1], "ablation": {"backbones": ["b"], "methods": ["grm_no_rp"]}}}


def mlflow_row(method: str, seed: int, stage_metrics: dict[str, float], protocol: str = "full",
               text: str | None = "bigru") -> dict:
    """A search_runs row; text=None: a run logged before the `text` tag existed."""
    tags = {"tags.dataset": "d", "tags.backbone": "b", "tags.method": method, "tags.seed": str(seed),
            "tags.protocol": protocol, **({"tags.text": text} if text else {})}
    return {"run_id": f"{method}{seed}{text or ''}", **tags, **{f"metrics.{k}": v for k, v in stage_metrics.items()}}


def test_evaluation_runs_read_the_runs_protocol_ci_and_qbnorm():
    runs = pd.DataFrame([mlflow_row("vse", 1, {"full/rsum": 60.0, "full/ci/rsum_lo": 58.0, "coco1k/rsum": 1.0}),
                         mlflow_row("grm", 0, {"full/rsum": 70.0, "qbnorm/full/rsum": 75.0})])
    frame = evaluation_runs({}, runs)
    assert list(zip(frame["method"], frame["seed"])) == [("grm", 0), ("vse", 1)]  # sorted by key, seeds as ints
    grm, vse = frame.iloc[0], frame.iloc[1]
    assert grm["rsum"] == 70.0 and grm["qb_rsum"] == 75.0 and math.isnan(grm["rsum_ci_lo"])
    assert vse["rsum"] == 60.0 and vse["rsum_ci_lo"] == 58.0 and math.isnan(vse["qb_rsum"])
    with pytest.raises(UserError, match="no evaluate runs"):
        evaluation_runs({}, pd.DataFrame())


def test_evaluation_runs_read_the_tie_rule_from_the_params_columns():
    """search_runs' `params.evaluate.tie_rule` (None for a run from before the option: it ranked pessimistically)."""
    rows = [{**mlflow_row("grm", 0, {"full/rsum": 70.0}), "params.evaluate.tie_rule": "argsort"},
            {**mlflow_row("grm", 1, {"full/rsum": 71.0}), "params.evaluate.tie_rule": None}]
    assert evaluation_runs({}, pd.DataFrame(rows))["tie_rule"].tolist() == ["argsort", "pessimistic"]
    no_params = evaluation_runs({}, pd.DataFrame([mlflow_row("grm", 0, {"full/rsum": 70.0})]))
    assert no_params["tie_rule"].tolist() == ["pessimistic"]


def test_runs_name_their_result_files_under_the_experiments_results_root():
    row = mlflow_row("grm", 1, {"full/rsum": 70.0, "full/clutter/all/rsum": 9.0}, text="minilm")
    assert evaluation_runs({}, pd.DataFrame([row]))["result_file"].tolist() == [
        "results/d/b/minilm/grm/seed1/metrics.json"]
    frame = evaluation_runs({"experiment": "k8"}, pd.DataFrame([row]))
    assert frame["result_file"].tolist() == ["experiments/k8/results/d/b/minilm/grm/seed1/metrics.json"]
    bins, _ = robustness_runs({}, pd.DataFrame([row]))
    assert bins["result_file"].tolist() == ["results/d/b/minilm/grm/seed1/robustness.json"]


def test_runs_without_a_text_tag_are_the_bigrus():
    """Runs logged before the text-encoder axis carry no `text` tag (no column, or NaN beside tagged runs)."""
    old = mlflow_row("grm", 0, {"full/rsum": 70.0, "full/distractors/0/rsum": 5.0}, text=None)
    assert evaluation_runs({}, pd.DataFrame([old]))["text"].tolist() == ["bigru"]
    mixed = pd.DataFrame([old, mlflow_row("grm", 0, {"full/rsum": 60.0, "full/distractors/0/rsum": 4.0},
                                          text="minilm")])
    frame = evaluation_runs({}, mixed)
    assert list(zip(frame["text"], frame["rsum"])) == [("bigru", 70.0), ("minilm", 60.0)]
    assert frame["result_file"].tolist() == [f"results/d/b/{t}/grm/seed0/metrics.json" for t in ("bigru", "minilm")]
    _, levels = robustness_runs({}, mixed)
    assert list(zip(levels["text"], levels["rsum"])) == [("bigru", 5.0), ("minilm", 4.0)]


def test_grid_cells_in_grid_and_missing_runs():
    cells = grid_cells(GRID)
    assert cells[:4] == [("d", "b", "bigru", "grm", 0), ("d", "b", "bigru", "grm", 1), ("d", "b", "bigru", "vse", 0),
                         ("d", "b", "bigru", "vse", 1)]
    assert cells[4:] == [("d", "b", "bigru", "grm_no_rp", 0), ("d", "b", "bigru", "grm_no_rp", 1)]
    runs = pd.DataFrame({"dataset": "d", "backbone": "b", "text": ["bigru", "bigru", "bigru", "minilm", "bigru"],
                         "method": ["grm", "grm_no_rp", "old", "grm", "vse"], "seed": [0, 0, 0, 1, 1]})
    assert list(in_grid(GRID, runs)["method"]) == ["grm", "grm_no_rp", "vse"]  # minilm is not in this grid
    assert list(in_grid(GRID, runs, ablation=False)["method"]) == ["grm", "vse"]
    assert missing_runs(GRID, runs) == ["d/b/bigru/grm/seed1", "d/b/bigru/vse/seed0", "d/b/bigru/grm_no_rp/seed1"]
    two = {"grid": {**GRID["grid"], "text_encoders": ["bigru", "minilm"]}}
    assert list(zip(*(in_grid(two, runs, ablation=False)[k] for k in ("text", "method")))) == [
        ("bigru", "grm"), ("minilm", "grm"), ("bigru", "vse")]
    assert missing_runs(two, runs)[:4] == ["d/b/bigru/grm/seed1", "d/b/bigru/vse/seed0", "d/b/minilm/grm/seed0",
                                           "d/b/minilm/vse/seed0"]


def test_robustness_runs_long_frames_of_the_runs_protocol():
    clutter = {f"full/clutter/{b}/rsum": r for b, r in (("all", 9.0), ("7plus", 7.0), ("1-3", 1.0), ("cluttered", 8.0))}
    runs = pd.DataFrame([
        mlflow_row("grm", 0, {**clutter, "full/clutter/1-3/n_images": 4.0, "full/distractors/2/rsum": 5.0,
                              "coco1k/clutter/1-3/rsum": 100.0, "full/clutter/1-3/ci/rsum_lo": 0.5}),
        mlflow_row("grm", 1, {"clutter/1-3/rsum": 3.0, "distractors/0/rsum": 6.0}),  # logged before the prefix
    ])
    bins, levels = robustness_runs({}, runs)
    assert list(zip(bins["bin"], bins["seed"])) == [("1-3", 0), ("1-3", 1), ("7plus", 0), ("cluttered", 0), ("all", 0)]
    assert bins["rsum"].tolist() == [1.0, 3.0, 7.0, 8.0, 9.0]  # another protocol's 100 never mixes in
    assert bins["n_images"].iloc[0] == 4.0 and math.isnan(bins["i2t_R1"].iloc[0])  # every recall column, NaN if absent
    assert list(zip(levels["n_extra"], levels["rsum"])) == [(0, 6.0), (2, 5.0)]  # by level, then seed
    assert bin_order("4-6") < bin_order("16plus") < bin_order("cluttered") < bin_order("all")


def test_run_ranks_reads_ranks_npz_once(tmp_path, monkeypatch):
    from fga.evaluate.run import write_ranks

    src = tmp_path / "ranks.npz"
    write_ranks(src, {"i2t": np.array([1, 2]), "t2i": np.arange(1, 11)}, [7, 9], 5, "full")
    monkeypatch.setattr("fga.tracking.list_artifacts", lambda cfg, run_id: ["ranks.npz"])
    monkeypatch.setattr("fga.tracking.download_artifact", lambda cfg, run_id, path, dest: src)
    opened = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: opened.append(a[0]) or real_load(*a, **k))
    ranks = run_ranks({}, "r1", tmp_path)
    assert len(opened) == 1
    assert ranks.i2t.tolist() == [1, 2] and ranks.caps_per_image == 5 and ranks.image_ids.tolist() == [7, 9]
    monkeypatch.setattr("fga.tracking.list_artifacts", lambda cfg, run_id: [])
    assert run_ranks({}, "r2", tmp_path) is None


def test_attention_maps_of_both_file_layouts(tmp_path, monkeypatch):
    files = {"a.json": {"maps": [{"words": ["x"]}, {"words": ["y"]}]}, "b.json": {"words": ["z"]},
             "c.json": {"maps": {"words": ["x"]}}}
    for name, item in files.items():
        (tmp_path / name).write_text(json.dumps(item))
    monkeypatch.setattr("fga.tracking.download_artifact", lambda cfg, run_id, path, dest: tmp_path / path)
    assert [m["words"] for m in attention_maps({}, "r", "a.json", tmp_path)] == [["x"], ["y"]]
    assert attention_maps({}, "r", "b.json", tmp_path) == [{"words": ["z"]}]  # an older single-map file
    with pytest.raises(TypeError, match="'maps' is not a list"):
        attention_maps({}, "r", "c.json", tmp_path)


def test_series_label_adds_the_text_encoder_only_when_there_are_several():
    one = pd.DataFrame({"method": ["grm", "vse"], "backbone": "b", "text": "bigru"})
    assert series_label(one).tolist() == ["grm", "vse"]
    assert series_label(one.drop(columns="text")).tolist() == ["grm", "vse"]
    two = one.assign(text=["bigru", "minilm"])
    assert series_label(two).tolist() == ["grm + bigru", "vse + minilm"]
    assert series_label(two, "backbone").tolist() == ["b + bigru", "b + minilm"]
