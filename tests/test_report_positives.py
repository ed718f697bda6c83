"""positives.* and binding.* report tables from evaluate runs logged to MLflow, and the tie-rule note."""
from __future__ import annotations

import pandas as pd
import pytest

from fga.report.files import _row
from fga.report.notes import tie_rules, ties_note
from fga.report.positives import positives_table, scene_graph_runs, scene_graph_tables
from fga.report.runs import evaluation_runs, in_grid
from fga.tracking import log_run, runs_frame
from test_report import SEEDS, key, log_evaluate, make_cfg, recall


def _scene_metrics(method: str, seed: int) -> dict[str, float]:
    base = {"grm": 40.0, "vse_mean": 20.0}[method] + seed
    out = {f"positives/{d}_{k}": base + i for i, (d, k) in enumerate(
        (d, k) for d in ("i2t", "t2i") for k in ("R1", "R5", "R10", "mAPR"))}
    out["positives/rsum"] = 6 * base
    for kind, acc in (("attribute", 60.0), ("relation", 55.0), ("all", 57.5)):
        out.update({f"binding/{kind}/accuracy": acc + seed + (10 if method == "grm" else 0),
                    f"binding/{kind}/ties": 0.0 if method == "grm" else 40.0, f"binding/{kind}/n": 100.0})
    return out


def _log(cfg, method, seed, *, rule="pessimistic"):
    metrics = {**{f"full/{k}": v for k, v in recall(method, seed).items()}, **_scene_metrics(method, seed)}
    return log_run(cfg, key(method, seed, "evaluate"), params={"evaluate": {"tie_rule": rule}}, metrics=metrics,
                   tags={"protocol": "full", "split": "test", "weights_source": "packaged"})


def _main(cfg):
    return in_grid(cfg, evaluation_runs(cfg, runs_frame(cfg, cfg["grid"]["datasets"], "evaluate")), ablation=False)


def test_tables_from_the_runs(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm", "vse_mean"))
    for method in ("grm", "vse_mean"):
        for seed in SEEDS:
            _log(cfg, method, seed)
    out = tmp_path / "tables"
    out.mkdir()
    scene_graph_tables(cfg, _main(cfg), out, quiet=True)
    pos = pd.read_csv(out / "positives.csv")
    assert list(pos["method"]) == ["grm", "vse_mean"] and (pos["seeds"] == 3).all()
    grm = pos[pos["method"] == "grm"].iloc[0]
    assert grm["i2t_R1_mean"] == pytest.approx(41.0) and grm["t2i_mAPR_mean"] == pytest.approx(48.0)
    assert grm["rsum_mean"] == pytest.approx(246.0)
    assert grm["standard_rsum_mean"] > 0  # the same runs' one-ground-truth rSum, beside
    md = (out / "positives.md").read_text()
    assert "mAP@R" in md and "Ties: `pessimistic` rule" in md and "rSum (own GT)" in md
    prov = pd.read_csv(out / "positives_provenance.csv")
    assert "run_id" not in prov and len(prov) == 6
    assert list(prov.columns[:5]) == ["dataset", "backbone", "text", "method", "seed"]
    assert "| Dataset | Backbone | Text | Method | Seeds |" in md
    binding = pd.read_csv(out / "binding.csv")
    vse = binding[binding["method"] == "vse_mean"].iloc[0]
    assert vse["all_accuracy_mean"] == pytest.approx(58.5) and vse["attribute_ties_mean"] == pytest.approx(40.0)
    assert "| triples |" in (out / "binding.md").read_text().replace("Triples", "triples")
    assert "chance = 50" in (out / "binding.md").read_text()


def test_tables_skipped_with_a_note_without_the_metrics(tmp_path, mlflow_store, capsys):
    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm",))
    for seed in SEEDS:
        log_evaluate(cfg, "grm", seed)  # runs of a dataset without scene graphs
    out = tmp_path / "tables"
    out.mkdir()
    scene_graph_tables(cfg, _main(cfg), out, quiet=False)
    said = capsys.readouterr().out
    assert "positives table skipped" in said and "binding table skipped" in said
    assert not list(out.iterdir())


def test_tie_rule_note_reads_the_runs(tmp_path, mlflow_store):
    cfg = make_cfg(tmp_path, mlflow_store, methods=("grm",))
    for seed in SEEDS:
        _log(cfg, "grm", seed, rule="argsort" if seed == 2 else "pessimistic")
    main = _main(cfg)
    assert tie_rules(main[main["seed"] < 2]) == ["pessimistic"]
    assert tie_rules(main) == ["argsort", "pessimistic"]
    assert "mixed" in ties_note(tie_rules(main))
    assert "numpy's default argsort" in ties_note(["argsort"])
    runs = scene_graph_runs(cfg, main)
    out = tmp_path / "tables"
    out.mkdir()
    assert positives_table(runs, out, quiet=True)
    assert "**mixed**" in (out / "positives.md").read_text()


def test_tie_rules_from_result_files(tmp_path):
    """--from-files: metrics.json's `ties` is the rule, a file from before the option ranked pessimistically."""
    result = {"protocol": "full", "protocols": {}, "split": "test", "weights_source": "packaged"}
    rows = [_row(tmp_path / f"seed{seed}", "evaluate", ("d", "b", "bigru", "grm", seed),
                 result if rule is None else {**result, "ties": rule})
            for seed, rule in enumerate(("argsort", None))]
    runs = evaluation_runs({"report": {"source": "files"}}, pd.DataFrame(rows))
    assert runs["tie_rule"].tolist() == ["argsort", "pessimistic"] and set(runs["text"]) == {"bigru"}
    assert tie_rules(runs) == ["argsort", "pessimistic"]
