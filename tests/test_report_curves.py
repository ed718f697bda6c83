"""Learning curves (validation rSum per epoch) from MLflow train runs or from the runs' checkpoints."""
from __future__ import annotations

import torch

from fga.checkpoint import save_checkpoint
from fga.report.curves import learning_curve_figure, learning_curves
from fga.tracking import log_run
from fga.grid import run_path
from test_report import SEEDS, TEXT, make_cfg

METHODS = ("grm", "vse_mean")
BACKBONES = ("lite0_grid", "lite0_roi")


def _val_rsum(method: str, backbone: str, seed: int, epoch: int) -> float:
    return 100.0 * epoch + (50 if method == "grm" else 0) + (5 if backbone == "lite0_roi" else 0) + seed


def _cfg(tmp_path, uri):
    cfg = make_cfg(tmp_path, uri, methods=METHODS)
    cfg["grid"]["backbones"] = list(BACKBONES)
    return cfg


def test_curves_from_mlflow_train_runs(tmp_path, mlflow_store):
    cfg = _cfg(tmp_path, mlflow_store)
    for method in METHODS:
        for backbone in BACKBONES:
            for seed in SEEDS:
                steps = {"val_rsum": [(e, _val_rsum(method, backbone, seed, e)) for e in (1, 2, 3)],
                         "loss_total": [(e, 1.0 / e) for e in (1, 2, 3)]}
                log_run(cfg, {"dataset": "synthetic", "backbone": backbone, "text": TEXT, "method": method,
                              "seed": seed, "stage": "train"}, metrics={"best_val_rsum": 0.0}, step_metrics=steps)
    # an ablation variant's curve stays out of the main figure
    log_run(cfg, {"dataset": "synthetic", "backbone": "lite0_roi", "text": TEXT, "method": "grm_no_rp", "seed": 0,
                  "stage": "train"}, step_metrics={"val_rsum": [(1, 1.0)]})
    # as does another text encoder's, which this grid does not list
    log_run(cfg, {"dataset": "synthetic", "backbone": "lite0_roi", "text": "minilm", "method": "grm", "seed": 0,
                  "stage": "train"}, step_metrics={"val_rsum": [(1, 1.0)]})
    curves = learning_curves(cfg)
    assert len(curves) == len(METHODS) * len(BACKBONES) * len(SEEDS) * 3
    assert set(curves["method"]) == set(METHODS) and set(curves["text"]) == {TEXT}
    for r in curves.itertuples():
        assert r.val_rsum == _val_rsum(r.method, r.backbone, r.seed, r.epoch)
    figures = tmp_path / "figures"
    figures.mkdir()
    assert learning_curve_figure(cfg, figures, quiet=True) == ["learning_curves.png", "learning_curves.pdf"]
    assert (figures / "learning_curves.png").stat().st_size > 10_000


def test_no_train_runs_skips_the_figure_with_a_note(tmp_path, mlflow_store, capsys):
    figures = tmp_path / "figures"
    figures.mkdir()
    assert learning_curve_figure(_cfg(tmp_path, mlflow_store), figures, quiet=False) == []
    assert "learning-curve figure skipped" in capsys.readouterr().out
    assert not list(figures.iterdir())


def test_curves_from_checkpoints_in_files_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = {**_cfg(tmp_path, "sqlite:///unused.db"), "report": {"source": "files"}}
    cfg["grid"]["text_encoders"] = [TEXT, "minilm"]
    for text in (TEXT, "minilm"):
        for method in METHODS:
            for seed in SEEDS[:2]:  # seed 2 was never trained: its cells are left out
                run = tmp_path / "runs" / run_path("synthetic", "lite0_roi", text, method, seed)
                run.mkdir(parents=True)
                history = [{"epoch": e, "val_rsum": _val_rsum(method, "lite0_roi", seed, e) + (text == "minilm"),
                            "loss_total": 1.0} for e in (1, 2)]
                save_checkpoint(run / "checkpoint.safetensors", {"w": torch.zeros(2)}, {}, {"history": history})
    curves = learning_curves(cfg)
    assert len(curves) == 2 * len(METHODS) * 2 * 2 and set(curves["backbone"]) == {"lite0_roi"}
    assert all(r.val_rsum == _val_rsum(r.method, r.backbone, r.seed, r.epoch) + (r.text == "minilm")
               for r in curves.itertuples())
    figures = tmp_path / "figures"
    figures.mkdir()
    assert learning_curve_figure(cfg, figures, quiet=True)
