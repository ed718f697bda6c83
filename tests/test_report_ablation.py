"""fga.report.ablation: variants of the methods sections, their labels, the ablation table."""
from __future__ import annotations

import pandas as pd
import pytest

from fga.report.ablation import ablation_table, variant_label, variants
from fga.report.tables import summarise
from report_frames import evaluation_frame

CFG = {"methods": {"grm": {"embed_dim": 8, "margin": 0.2}, "vse": {},
                   "grm_no_sa": {"arch": "grm", "use_saliency": False},
                   "grm_no_rp_um": {"arch": "grm", "use_region_prompt": False, "use_uncertainty": False},
                   "grm_m3": {"arch": "grm", "embed_dim": 8, "margin": 0.3}, "grm_same": {"arch": "grm"}}}


def test_variants_and_labels():
    assert variants(CFG) == {"grm_no_sa": "grm", "grm_no_rp_um": "grm", "grm_m3": "grm", "grm_same": "grm"}
    assert variant_label(CFG, "grm_no_sa", "grm") == "w/o SA/GA"
    assert variant_label(CFG, "grm_no_rp_um", "grm") == "w/o RP + UM"
    assert variant_label(CFG, "grm_m3", "grm") == "margin=0.3"  # only what differs from the full model
    assert variant_label(CFG, "grm_same", "grm") == "grm_same"


def test_ablation_table_deltas_against_the_full_model(tmp_path):
    runs = evaluation_frame([("grm", 0, 30.0), ("grm", 1, 32.0), ("grm_no_sa", 0, 25.0), ("grm_no_sa", 1, 27.0),
                             ("vse", 0, 20.0)])
    assert ablation_table(CFG, runs, summarise(runs), tmp_path, quiet=True)
    data = pd.read_csv(tmp_path / "ablation.csv")
    assert list(data["model"]) == ["GRM (full)", "w/o SA/GA"]
    assert data["delta_rsum"].tolist() == pytest.approx([0.0, -30.0])
    md = (tmp_path / "ablation.md").read_text()
    assert "| 0.0 |" in md and "| -30.0 |" in md and "vse" not in md
    assert set(pd.read_csv(tmp_path / "ablation_provenance.csv")["method"]) == {"grm", "grm_no_sa"}


def test_ablation_table_without_the_full_model_or_variants(tmp_path, capsys):
    runs = evaluation_frame([("grm_no_sa", 0, 25.0)])
    assert ablation_table(CFG, runs, summarise(runs), tmp_path, quiet=True)
    assert (tmp_path / "ablation.md").read_text().count("—") == 1  # no full model: no ΔrSum
    runs = evaluation_frame([("grm", 0, 30.0), ("vse", 0, 20.0)])
    assert not ablation_table(CFG, runs, summarise(runs), tmp_path / "none", quiet=False)
    assert "ablation table skipped" in capsys.readouterr().out


def test_ablation_table_compares_variants_with_the_full_model_of_their_text_encoder(tmp_path):
    runs = pd.concat([evaluation_frame([("grm", 0, 30.0), ("grm_no_sa", 0, 25.0)]),
                      evaluation_frame([("grm", 0, 40.0), ("grm_no_sa", 0, 38.0)], text="minilm")], ignore_index=True)
    assert ablation_table(CFG, runs, summarise(runs), tmp_path, quiet=True)
    data = pd.read_csv(tmp_path / "ablation.csv")
    assert list(zip(data["text"], data["method"])) == [("bigru", "grm"), ("bigru", "grm_no_sa"),
                                                        ("minilm", "grm"), ("minilm", "grm_no_sa")]
    assert data["delta_rsum"].tolist() == pytest.approx([0.0, -30.0, 0.0, -12.0])
    assert "| Dataset | Protocol | Backbone | Text | Model |" in (tmp_path / "ablation.md").read_text()
    assert sorted(pd.read_csv(tmp_path / "ablation_provenance.csv")["text"]) == ["bigru"] * 2 + ["minilm"] * 2
