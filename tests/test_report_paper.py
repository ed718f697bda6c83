"""fga.report.paper: the paper's numbers in a table of their own, never as measured rows."""
from __future__ import annotations

import pandas as pd

from fga.report.paper import PAPER_GRM_RSUM, PAPER_SOURCE, PAPER_TEXT, paper_table


def test_paper_table_is_labelled_and_has_no_run(tmp_path):
    paper_table(tmp_path)
    assert "paper (not measured here)" in (tmp_path / "paper_reference.md").read_text()
    data = pd.read_csv(tmp_path / "paper_reference.csv")
    assert (data["source"] == "paper (not measured here)").all() and len(data) == len(PAPER_GRM_RSUM)
    prov = pd.read_csv(tmp_path / "paper_reference_provenance.csv", keep_default_na=False)
    assert (prov["source"] == PAPER_SOURCE).all() and (prov["result_file"] == "").all() and len(prov) == 12
    assert "AAAI 2026" in PAPER_SOURCE and "docs/methods.md#faithfulness" in PAPER_SOURCE
    md = (tmp_path / "paper_reference.md").read_text()
    assert "| Backbone | Text | Flickr30K 1K rSum |" in md and "| Swin-B-384 | bert_base | 550.7 | 548.0 | 478.3 |" in md
    assert PAPER_TEXT == "bert_base" and (prov["text"] == PAPER_TEXT).all()  # the paper's BERT-base caption encoder
