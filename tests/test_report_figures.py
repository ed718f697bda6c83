"""fga.report.figures: reproducible figure bytes, what is drawn and what is skipped."""
from __future__ import annotations

import numpy as np
import pandas as pd

from fga.report.figures import attention_figures, clutter_figure, seed_spread_figure
from report_frames import evaluation_frame

ONE = {"words": ["a", "red", "circle"], "regions": ["p0", "p1"], "attention": [[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]],
       "caption": "a red circle", "image_id": 3, "temperature": 0.1}


def test_seed_spread_figure_is_the_same_bytes_on_every_draw(tmp_path):
    """The strip plot's jitter is seeded (it drew from numpy's global RNG), and that RNG is left as it was."""
    runs = evaluation_frame([(m, s, b + s) for m, b in (("grm", 30.0), ("vse", 20.0)) for s in range(4)])
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        assert seed_spread_figure(runs, tmp_path / name) == ["seed_spread.png", "seed_spread.pdf"]
    assert np.random.random() == expected_next
    for ext in ("png", "pdf"):
        assert (tmp_path / "a" / f"seed_spread.{ext}").read_bytes() == (tmp_path / "b" / f"seed_spread.{ext}").read_bytes()


def test_seed_spread_names_the_text_encoder_only_when_there_are_several(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr("fga.report.figures._save", lambda fig, figures, name: drawn.append(fig) or [name])
    one = evaluation_frame([(m, s, 30.0 + s) for m in ("grm", "vse") for s in range(2)])
    two = pd.concat([one, evaluation_frame([("grm", s, 40.0 + s) for s in range(2)], text="minilm")])
    seed_spread_figure(one, tmp_path)
    seed_spread_figure(two, tmp_path)
    labels = [[t.get_text() for t in fig.axes[0].get_xticklabels()] for fig in drawn]
    assert labels == [["grm", "vse"], ["grm + bigru", "grm + minilm", "vse + bigru"]]


def test_attention_figures_of_two_text_encoders_have_names_of_their_own(tmp_path, monkeypatch):
    cfg = {"methods": {"grm": {}}}
    runs = pd.concat([evaluation_frame([("grm", 0, 30.0)]), evaluation_frame([("grm", 0, 40.0)], text="minilm")])
    monkeypatch.setattr("fga.report.figures.attention_artifacts", lambda cfg, run_id: ["attention.json"])
    monkeypatch.setattr("fga.report.figures.attention_maps", lambda cfg, run_id, path, tmp_dir: [ONE])
    names = attention_figures(cfg, runs, tmp_path, quiet=True)
    assert [n for n in names if n.endswith(".png")] == ["attention_synthetic_b_bigru_grm_0.png",
                                                        "attention_synthetic_b_minilm_grm_0.png"]


def test_clutter_figure_needs_range_bins(tmp_path):
    only_subsets = pd.DataFrame({"bin": ["cluttered", "all"], "dataset": "d", "backbone": "b", "method": "grm",
                                 "rsum": [1.0, 2.0]})
    assert clutter_figure(only_subsets, tmp_path) == [] and not list(tmp_path.iterdir())


def test_attention_figures_limit_bad_maps_and_non_grm_runs(tmp_path, monkeypatch, capsys):
    cfg = {"methods": {"grm": {}, "grm_no_rp": {"arch": "grm", "use_region_prompt": False}, "vse": {}}}
    runs = evaluation_frame([("grm", 1, 30.0), ("grm", 0, 30.0), ("grm_no_rp", 0, 25.0), ("vse", 0, 20.0)])
    maps = {"grm-0-bigru": [ONE] * 3 + [{"words": []}] + [ONE] * 3, "grm_no_rp-0-bigru": [{"words": []}, ONE]}
    monkeypatch.setattr("fga.report.figures.attention_artifacts", lambda cfg, run_id: ["attention.json"])

    def read(cfg, run_id, path, tmp_dir):
        assert run_id != "vse-0-bigru" and run_id != "grm-1-bigru"  # GRM-arch methods only, their lowest seed
        tmp_dir.mkdir(parents=True, exist_ok=True)
        return maps[run_id]

    monkeypatch.setattr("fga.report.figures.attention_maps", read)
    figures = tmp_path / "figures"
    figures.mkdir()
    names = attention_figures(cfg, runs, figures, quiet=False, limit=4)
    pngs = [n for n in names if n.endswith(".png")]
    assert pngs == [f"attention_synthetic_b_grm_{k}.png" for k in range(4)] + ["attention_synthetic_b_grm_no_rp_0.png"]
    out = capsys.readouterr().out
    assert "grm-0-bigru:attention.json map 3 is not a region-word map" in out
    assert not list(tmp_path.glob(".*artifacts"))  # the downloads are removed
    assert attention_figures(cfg, runs[runs["method"] == "vse"], figures, quiet=False) == []
    assert "no GRM evaluate runs; region-word heat maps skipped" in capsys.readouterr().out
