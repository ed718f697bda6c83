"""How every report table is summarised, formatted and written: seed means (fga.evaluate.stats.over_seeds),
"mean ± std" cells, and each table as Markdown, LaTeX (booktabs) and CSV with its provenance CSV beside it.

The shown tables (md, tex) stay narrow enough for the MLflow artifact viewer: long provenance text (a backbone's
weights source) is a legend line under the table, and stays in full in the CSV and the provenance CSV."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from fga.evaluate.stats import over_seeds
from fga.io import atomic_path
from fga.report.runs import COLUMNS, KEYS, present

HEADERS = {"i2t_R1": "i2t R@1", "i2t_R5": "i2t R@5", "i2t_R10": "i2t R@10",
           "t2i_R1": "t2i R@1", "t2i_R5": "t2i R@5", "t2i_R10": "t2i R@10", "rsum": "rSum"}
DASH = "—"


def summarise(runs: pd.DataFrame, keys: list[str] = KEYS, columns: list[str] = COLUMNS) -> pd.DataFrame:
    """Mean and sample std over seeds (`<name>_mean`, `<name>_std`), the number of seeds per cell, and the
    seed-mean of the per-run bootstrap CI bounds (`<name>_ci_lo_mean`, ...) where the runs carry them."""
    out = over_seeds(runs, keys, columns, present(runs, [f"{c}_ci_{b}" for c in columns for b in ("lo", "hi")]))
    if "weights" in runs:
        out["weights"] = runs.groupby(keys, sort=True)["weights"].first()
    return out.reset_index()


def pm(mean: float, std: float, digits: int = 1) -> str:
    """A "mean ± std" cell with `digits` decimals (a dash without a mean)."""
    return DASH if pd.isna(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def mean_std_table(summary: pd.DataFrame, keys: list[str], headers: dict[str, str],
                   digits: dict[str, int] | None = None) -> pd.DataFrame:
    """The shown table of a seed summary (:func:`summarise`, fga.evaluate.stats.over_seeds): its keys and seeds,
    capitalised, then a "mean ± std" cell per summarised column of `headers` (column -> header), with 1 decimal
    unless `digits` gives the column another."""
    shown = summary[keys + ["seeds"]].rename(columns={k: k.capitalize() for k in keys + ["seeds"]})
    for column, header in headers.items():
        places = (digits or {}).get(column, 1)
        shown[header] = [pm(m, s, places) for m, s in zip(summary[f"{column}_mean"], summary[f"{column}_std"])]
    return shown


def display(summary: pd.DataFrame, keys: list[str] = KEYS, confidence: float = 0.95) -> pd.DataFrame:
    """The shown table of a summary: its keys (dataset and protocol in one column, "coco (5k)") and seeds, a
    "mean ± std" cell per recall, the rSum CI. The weights are the table's legend (:func:`weights_legend`): with
    one column fewer, every recall and rSum column fits the MLflow artifact viewer at 1500 px."""
    extra = [c for c in ("seeds",) if c in summary]
    table = summary[keys + extra].copy()
    if {"dataset", "protocol"} <= set(keys):
        table["dataset"] = [f"{d} ({p})" for d, p in zip(summary["dataset"], summary["protocol"])]
        table, keys = table.drop(columns="protocol"), [k for k in keys if k != "protocol"]
    for c in COLUMNS:
        table[HEADERS[c]] = [pm(m, s) for m, s in zip(summary[f"{c}_mean"], summary[f"{c}_std"])]
    if "rsum_ci_lo_mean" in summary:
        table[f"rSum {confidence:.0%} CI"] = [DASH if pd.isna(lo) else f"[{lo:.1f}, {hi:.1f}]"
                                              for lo, hi in zip(summary["rsum_ci_lo_mean"], summary["rsum_ci_hi_mean"])]
    return table.rename(columns={k: k.capitalize() for k in keys + extra})


def weights_legend(summary: pd.DataFrame) -> str:
    """The legend line naming each backbone's weights source (backbones with the same source together); "" when
    the summary has none."""
    if "weights" not in summary:
        return ""
    pairs = summary[["backbone", "weights"]].drop_duplicates()
    pairs = pairs[pairs["weights"].fillna("") != ""]
    groups = pairs.groupby("weights", sort=True)["backbone"].agg(lambda b: ", ".join(sorted(b)))
    parts = [f"{backbones} = {weights}" for weights, backbones in sorted(groups.items(), key=lambda kv: kv[1])]
    return ("Weights: " + "; ".join(parts) + ".") if parts else ""


def _latex_text(text: str) -> str:
    """`text` with LaTeX's special characters escaped (for the legend line)."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(ch, ch) for ch in text).replace(DASH, "--")


def markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |\n|" + "|".join("---" for _ in table.columns) + "|\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in table.itertuples(index=False))


def latex(table: pd.DataFrame, caption: str, legend: str = "") -> str:
    """A booktabs table; the legend, when given, as a footnote-size line under the tabular."""
    styler = table.style.hide(axis="index").format(escape="latex", precision=1, na_rep=DASH)
    styler = styler.format_index(escape="latex", axis=1)
    tex = styler.to_latex(hrules=True, caption=caption.replace("%", r"\%"), position="t", position_float="centering")
    tex = tex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace(DASH, "--")
    if legend:
        tex = tex.replace("\\end{table}", f"\\par\\smallskip{{\\footnotesize {_latex_text(legend)}}}\n\\end{{table}}")
    return tex


def write_table(out: Path, name: str, title: str, note: str, shown: pd.DataFrame, data: pd.DataFrame,
                provenance: pd.DataFrame, legend: str = "") -> list[str]:
    """name.md (title, note, table, legend), name.csv (the numbers), name.tex, name_provenance.csv."""
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text(f"# {title}\n\n{note}\n\n" + markdown(shown) + (f"\n{legend}\n" if legend else ""))
    with atomic_path(out / f"{name}.csv") as tmp:
        data.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out / f"{name}.tex") as tmp:
        tmp.write_text(latex(shown, title, legend))
    with atomic_path(out / f"{name}_provenance.csv") as tmp:
        provenance.to_csv(tmp, index=False, float_format="%.4f")
    return [f"{name}.{ext}" for ext in ("md", "csv", "tex")] + [f"{name}_provenance.csv"]
