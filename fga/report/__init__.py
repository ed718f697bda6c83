"""MLflow runs -> the paper's tables and figures (mean ± std over seeds), each beside its provenance.

Every measured number comes from an MLflow run (``fga.tracking``): the main table from the evaluate
runs, the robustness tables and figures from the robustness runs. Each table is written as Markdown,
LaTeX (booktabs, pandas ``Styler.to_latex``) and CSV, with ``<table>_provenance.csv`` beside it
naming the run behind every value by its key and result file (``.../seed<k>/metrics.json``); run ids are
random, so they stay out of the tables (reproducible bytes) and go to the report run's
``provenance_run_ids.csv``. The paper's own GRM numbers sit in a table of their own, labelled
"paper (not measured here)", and never in a table of measured rows. Every table has a Text column (the
caption encoder, ``grid.text_encoders``) right after the backbone: runs of different encoders are rows of their
own, never averaged together; a run logged before the encoder axis existed (no ``text`` tag) counts as the BiGRU's.
A table or figure whose runs do not exist yet (no robustness stage, no ablation variants, ...) is skipped with a
printed note.

Tables (``report.tables_dir``): main, ablation (when ablation variants ran), robustness_clutter,
robustness_distractors, qbnorm, significance (GRM vs each baseline, paired per seed, from the evaluate runs'
ranks.npz artifacts), paper_reference. Figures (``report.figures_dir``, PNG and PDF):
clutter_recall, distractor_recall, seed_spread, attention_<...> (GRM region-word maps, when the
evaluate runs saved them). Tables and figures are logged as artifacts of one ``report`` run per
dataset experiment, with the main table also as an MLflow table (``main_table.json``, sortable in the UI).

Modules: runs (what is read from MLflow), tables (summaries, formatting, writing), one module per table
family (retrieval: main and QB-Norm; ablation; significance; robustness; paper), figures, notes (the
printed skip notes) and build (`write_report`, which runs them in order). Every statistic comes from
fga.evaluate.stats.
"""
from __future__ import annotations

from fga.report.build import write_report

__all__ = ["write_report"]
