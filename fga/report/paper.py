"""GRM's published numbers, in a table of their own labelled "paper (not measured here)"."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from fga.report.runs import RESULT_FILE
from fga.report.tables import write_table

# GRM (AAAI 2026) Table 1 as the paper reports it (rSum only; the per-recall values are not available).
PAPER_SOURCE = "GRM (AAAI 2026), Table 1 (rSum); see docs/methods.md#faithfulness"
# the paper's caption encoder, BERT-base word tokens (docs/methods.md, "encoders"), by its fga text-encoder name
PAPER_TEXT = "bert_base"
PAPER_GRM_RSUM = pd.DataFrame(
    [("ViT-B-224", 516.2, 532.5, 443.0), ("ViT-B-384", 531.8, 538.2, 451.2),
     ("Swin-B-224", 546.0, 547.5, 470.8), ("Swin-B-384", 550.7, 548.0, 478.3)],
    columns=["backbone", "flickr30k_1k", "coco_1k", "coco_5k"])
PAPER_GRM_RSUM.insert(1, "text", PAPER_TEXT)
PAPER_HEADERS = {"backbone": "Backbone", "text": "Text", "flickr30k_1k": "Flickr30K 1K rSum",
                 "coco_1k": "COCO 1K rSum", "coco_5k": "COCO 5K rSum"}
PAPER_KEYS = ["backbone", "text"]


def paper_table(out: Path) -> None:
    """paper_reference.*: the paper's rSum per backbone, its provenance the paper itself."""
    data = PAPER_GRM_RSUM.copy()
    data.insert(0, "source", "paper (not measured here)")
    shown = PAPER_GRM_RSUM.rename(columns=PAPER_HEADERS)
    for c in shown.columns[len(PAPER_KEYS):]:
        shown[c] = shown[c].map(lambda v: f"{v:.1f}")
    prov = PAPER_GRM_RSUM.melt(id_vars=PAPER_KEYS, var_name="dataset_protocol", value_name="rsum")
    prov["source"] = PAPER_SOURCE
    prov[RESULT_FILE] = ""  # measured by no stage of this pipeline
    note = ("**paper (not measured here)**: GRM's rSum as the paper reports it (ViT/Swin backbones and a BERT-base "
            "text encoder fine-tuned on Flickr30K/COCO), for reference only. These numbers were not produced by this "
            "pipeline and have no run or result file here; compare them with the measured tables only with that in "
            "mind.")
    write_table(out, "paper_reference", "GRM as published — paper (not measured here)", note, shown, data, prov)
