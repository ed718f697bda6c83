"""MLflow runs -> the paper's tables and figures (mean ± std over seeds), each beside its provenance.

Every measured number comes from an MLflow run (``fga.tracking``): the main table from the evaluate
runs, the robustness tables and figures from the robustness runs. Each table is written as Markdown,
LaTeX (booktabs, pandas ``Styler.to_latex``) and CSV, with ``<table>_provenance.csv`` beside it
naming the run behind every value. The paper's own GRM numbers sit in a table of their own, labelled
"paper (not measured here)", and never in a table of measured rows. A table or figure whose runs do
not exist yet (no robustness stage, no ablation variants, ...) is skipped with a printed note.

Tables (``report.tables_dir``): main, ablation (when ablation variants ran), robustness_clutter,
robustness_distractors, qbnorm, significance (GRM vs each baseline, paired per seed, from the evaluate runs'
ranks.npz artifacts), paper_reference. Figures (``report.figures_dir``, PNG and PDF):
clutter_recall, distractor_recall, seed_spread, attention_<...> (GRM region-word maps, when the
evaluate runs saved them). Tables and figures are logged as artifacts of one ``report`` run per
dataset experiment.
"""
from __future__ import annotations

import json
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from fga.errors import UserError
from fga.io import atomic_dir, atomic_path

RECALLS = [f"{d}_R{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
COLUMNS = RECALLS + ["rsum"]
HEADERS = {"i2t_R1": "i2t R@1", "i2t_R5": "i2t R@5", "i2t_R10": "i2t R@10",
           "t2i_R1": "t2i R@1", "t2i_R5": "t2i R@5", "t2i_R10": "t2i R@10", "rsum": "rSum"}
KEYS = ["dataset", "protocol", "backbone", "method"]
RUN_KEYS = ["dataset", "backbone", "method"]
DASH = "—"

# GRM (AAAI 2025) Table 1 as the paper reports it (rSum only; the per-recall values are not available).
PAPER_SOURCE = "GRM (AAAI 2025), Table 1 (rSum); see the README's Faithfulness notes"
PAPER_GRM_RSUM = pd.DataFrame(
    [("ViT-B-224", 516.2, 532.5, 443.0), ("ViT-B-384", 531.8, 538.2, 451.2),
     ("Swin-B-224", 546.0, 547.5, 470.8), ("Swin-B-384", 550.7, 548.0, 478.3)],
    columns=["backbone", "flickr30k_1k", "coco_1k", "coco_5k"])
PAPER_HEADERS = {"backbone": "Backbone", "flickr30k_1k": "Flickr30K 1K rSum", "coco_1k": "COCO 1K rSum",
                 "coco_5k": "COCO 5K rSum"}

# the module an ablation switch removes (GRM.md §6, Table 2)
SWITCH_NAMES = {"use_saliency": "SA/GA", "use_visual_adapter": "SA", "use_text_adapter": "GA", "use_region_prompt": "RP",
                "use_uncertainty": "UM", "use_reg": "L_reg"}


def say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg)


# ------------------------------------------------------------------------------------------------- reading


def _metric(r: pd.Series, name: str) -> float:
    v = r.get(f"metrics.{name}")
    return float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else math.nan


def evaluation_runs(cfg: dict[str, Any], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per evaluate run: key tags, weights source, run id, the protocol's metrics, and, where the
    evaluate stage computed them, bootstrap CI bounds (``<name>_ci_lo/_hi``) and QB-Norm recalls (``qb_<name>``)."""
    from fga.tracking import runs_frame

    if runs is None:
        runs = runs_frame(cfg, cfg["grid"]["datasets"], "evaluate")
    if runs.empty:
        raise UserError("no evaluate runs in the MLflow store; run the pipeline (`snakemake --cores all`) first")
    rows = []
    for _, r in runs.iterrows():
        protocol = r["tags.protocol"]
        row = {k: r[f"tags.{k}"] for k in ("dataset", "backbone", "method", "seed")}
        row.update(protocol=protocol, run_id=r["run_id"], weights=r.get("tags.weights_source", "") or "")
        row.update({c: _metric(r, f"{protocol}/{c}") for c in COLUMNS})
        row.update({f"{c}_ci_{b}": _metric(r, f"{protocol}/ci/{c}_{b}") for c in COLUMNS for b in ("lo", "hi")})
        row.update({f"qb_{c}": _metric(r, f"qbnorm/{protocol}/{c}") for c in COLUMNS})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype(int)
    return frame.sort_values(KEYS + ["seed"]).reset_index(drop=True)


def grid_cells(cfg: dict[str, Any], ablation: bool = True) -> list[tuple[str, str, str, int]]:
    """(dataset, backbone, method, seed) of every run the grid asks for: the main grid, then (ablation=True)
    the ablation variants."""
    grid = cfg["grid"]
    cells = [(d, b, m, int(s)) for d in grid["datasets"] for b in grid["backbones"] for m in grid["methods"]
             for s in grid["seeds"]]
    no_variants = {"backbones": [], "methods": []}
    variants = (grid.get("ablation") or no_variants) if ablation else no_variants
    cells += [(d, b, m, int(s)) for d in grid["datasets"] for b in variants["backbones"] for m in variants["methods"]
              for s in grid["seeds"] if (d, b, m, int(s)) not in cells]
    return cells


def _cells_of(runs: pd.DataFrame) -> pd.Series:
    return pd.Series(list(zip(runs["dataset"], runs["backbone"], runs["method"], runs["seed"].astype(int))),
                     index=runs.index, dtype=object)


def in_grid(cfg: dict[str, Any], runs: pd.DataFrame, ablation: bool = True) -> pd.DataFrame:
    """The runs of the configured grid only (a store also keeps runs of methods or seeds dropped from it);
    ablation=False: the main grid only (datasets x backbones x methods x seeds, no ablation variants)."""
    if runs.empty:
        return runs
    return runs[_cells_of(runs).isin(set(grid_cells(cfg, ablation)))].reset_index(drop=True)


def missing_runs(cfg: dict[str, Any], runs: pd.DataFrame) -> list[str]:
    """Grid cells (dataset/backbone/method/seed, ablation variants included) without a run in `runs`."""
    have = set(_cells_of(runs)) if not runs.empty else set()
    return [f"{d}/{b}/{m}/seed{s}" for d, b, m, s in grid_cells(cfg) if (d, b, m, s) not in have]


def _present(frame: pd.DataFrame, cols: list[str]) -> list[str]:
    return [c for c in cols if c in frame and frame[c].notna().any()]


def summarise(runs: pd.DataFrame, keys: list[str] = KEYS, columns: list[str] = COLUMNS) -> pd.DataFrame:
    """Mean and sample std over seeds (`<name>_mean`, `<name>_std`), the number of seeds per cell, and the
    seed-mean of the per-run bootstrap CI bounds (`<name>_ci_lo_mean`, ...) where the runs carry them."""
    grouped = runs.groupby(keys, sort=True)
    mean = grouped[columns].mean()
    std = grouped[columns].std(ddof=1).fillna(0.0)
    out = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    ci = _present(runs, [f"{c}_ci_{b}" for c in columns for b in ("lo", "hi")])
    if ci:
        out = out.join(grouped[ci].mean().add_suffix("_mean"))
    out["seeds"] = grouped.size()
    if "weights" in runs:
        out["weights"] = grouped["weights"].first()
    return out.reset_index()


def _pm(mean: float, std: float) -> str:
    return DASH if pd.isna(mean) else f"{mean:.1f} ± {std:.1f}"


def _display(summary: pd.DataFrame, keys: list[str] = KEYS, confidence: float = 0.95) -> pd.DataFrame:
    extra = [c for c in ("weights", "seeds") if c in summary]
    table = summary[keys + extra].copy()
    for c in COLUMNS:
        table[HEADERS[c]] = [_pm(m, s) for m, s in zip(summary[f"{c}_mean"], summary[f"{c}_std"])]
    if "rsum_ci_lo_mean" in summary:
        table[f"rSum {confidence:.0%} CI"] = [DASH if pd.isna(lo) else f"[{lo:.1f}, {hi:.1f}]"
                                for lo, hi in zip(summary["rsum_ci_lo_mean"], summary["rsum_ci_hi_mean"])]
    return table.rename(columns={k: k.capitalize() for k in keys + extra})


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |\n|" + "|".join("---" for _ in table.columns) + "|\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in table.itertuples(index=False))


def _latex(table: pd.DataFrame, caption: str) -> str:
    styler = table.style.hide(axis="index").format(escape="latex", precision=1, na_rep=DASH)
    styler = styler.format_index(escape="latex", axis=1)
    tex = styler.to_latex(hrules=True, caption=caption.replace("%", r"\%"), position="t", position_float="centering")
    return tex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace(DASH, "--")


def _write_table(out: Path, name: str, title: str, note: str, display: pd.DataFrame, data: pd.DataFrame,
                 provenance: pd.DataFrame) -> list[str]:
    """name.md (title, note, table), name.csv (the numbers), name.tex, name_provenance.csv."""
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text(f"# {title}\n\n{note}\n\n" + _markdown(display))
    with atomic_path(out / f"{name}.csv") as tmp:
        data.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out / f"{name}.tex") as tmp:
        tmp.write_text(_latex(display, title))
    with atomic_path(out / f"{name}_provenance.csv") as tmp:
        provenance.to_csv(tmp, index=False, float_format="%.4f")
    return [f"{name}.{ext}" for ext in ("md", "csv", "tex")] + [f"{name}_provenance.csv"]


# ------------------------------------------------------------------------------------------------- tables


def main_table(runs: pd.DataFrame, out: Path, missing: list[str] | None = None,
               confidence: float = 0.95) -> pd.DataFrame:
    summary = summarise(runs)
    ci = f" The rSum {confidence:.0%} CI is the seed-mean of each run's percentile bootstrap interval (test images resampled " \
         "with their captions); CSV columns `<name>_ci_lo_mean`/`_hi_mean` hold every recall's." \
        if "rsum_ci_lo_mean" in summary else ""
    note = ("Recall@K in %, mean ± sample std over seeds (Seeds = number of runs per cell); rSum = sum of the six "
            "recalls. Every number comes from an MLflow evaluate run listed in main_provenance.csv." + ci)
    if missing:
        note += (f"\n\n**Incomplete grid**: no evaluate run for {len(missing)} cell(s) of `grid` "
                 f"({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}); their rows average fewer seeds.")
    prov_cols = KEYS + ["seed", "run_id"] + COLUMNS + _present(runs, [f"rsum_ci_{b}" for b in ("lo", "hi")])
    _write_table(out, "main", "Image-text retrieval (test split)", note, _display(summary, confidence=confidence),
                 summary, runs[prov_cols])
    return summary


def _variants(cfg: dict[str, Any]) -> dict[str, str]:
    """Ablation variants: method -> the arch it is a variant of (methods sections with an `arch:` key)."""
    from fga.models.registry import declared_arch

    return {m: arch for m in (cfg.get("methods") or {}) if (arch := declared_arch(cfg, m))}


def _variant_label(cfg: dict[str, Any], method: str, arch: str) -> str:
    section = cfg["methods"][method]
    base = (cfg["methods"].get(arch) or {})
    removed = [SWITCH_NAMES.get(k, k.removeprefix("use_")) for k, v in section.items()
               if k.startswith("use_") and v is False]
    if removed:
        return "w/o " + " + ".join(removed)
    changed = [f"{k}={v}" for k, v in section.items() if k != "arch" and base.get(k) != v]
    return ", ".join(changed) or method


def ablation_table(cfg: dict[str, Any], runs: pd.DataFrame, summary: pd.DataFrame, out: Path, quiet: bool) -> bool:
    """Table 2 style: the full model and each variant of it, with ΔrSum against the full model."""
    variants = {m: a for m, a in _variants(cfg).items() if m in set(summary["method"])}
    if not variants:
        say("report: no ablation variants (methods with `arch:`) among the evaluate runs; ablation table skipped", quiet)
        return False
    rows = []
    for (dataset, protocol, backbone), cell in summary.groupby(["dataset", "protocol", "backbone"], sort=True):
        by_method = {r["method"]: r for _, r in cell.iterrows()}
        for arch in sorted(set(variants.values())):
            members = [m for m, a in variants.items() if a == arch and m in by_method]
            if not members:
                continue
            full = by_method.get(arch)
            for method in ([arch] if full is not None else []) + sorted(members):
                r = by_method[method]
                label = f"{arch.upper()} (full)" if method == arch else _variant_label(cfg, method, arch)
                delta = r["rsum_mean"] - full["rsum_mean"] if full is not None else math.nan
                rows.append({"dataset": dataset, "protocol": protocol, "backbone": backbone, "arch": arch,
                             "model": label, "method": method, "seeds": r["seeds"],
                             **{f"{c}_{s}": r[f"{c}_{s}"] for c in COLUMNS for s in ("mean", "std")},
                             "delta_rsum": delta})
    if not rows:
        say("report: ablation variants have no runs on the same backbone as their full model; table skipped", quiet)
        return False
    data = pd.DataFrame(rows)
    display = data[["dataset", "protocol", "backbone", "model", "method", "seeds"]].copy()
    for c in COLUMNS:
        display[HEADERS[c]] = [_pm(m, s) for m, s in zip(data[f"{c}_mean"], data[f"{c}_std"])]
    display["ΔrSum"] = [DASH if pd.isna(d) else ("0.0" if m.endswith("(full)") else f"{d:+.1f}")
                        for d, m in zip(data["delta_rsum"], data["model"])]
    display = display.rename(columns={k: k.capitalize() for k in ("dataset", "protocol", "backbone", "model",
                                                                   "method", "seeds")})
    members = set(data["method"])
    prov = runs[runs["method"].isin(members)][KEYS + ["seed", "run_id"] + COLUMNS]
    note = ("Module ablation (cf. GRM Table 2): the full model and each variant with one module switched off "
            "(`methods.<variant>: {arch: ..., use_<module>: false}`), mean ± std over seeds; ΔrSum = variant − full, "
            "on the same dataset, protocol and backbone. Runs in ablation_provenance.csv.")
    _write_table(out, "ablation", "Module ablation", note, display, data, prov)
    return True


def qbnorm_table(runs: pd.DataFrame, out: Path, quiet: bool) -> bool:
    qb = [f"qb_{c}" for c in COLUMNS]
    if not _present(runs, qb):
        say("report: no QB-Norm metrics (qbnorm/<protocol>/...) in the evaluate runs; QB-Norm table skipped", quiet)
        return False
    have = runs[runs["qb_rsum"].notna()].copy()
    plain = summarise(have)
    ci = [c for c in have if "_ci_" in c]  # the plain recalls' intervals; QB-Norm's have none
    renamed = have.drop(columns=COLUMNS + ci).rename(columns={f"qb_{c}": c for c in COLUMNS})
    summary = summarise(renamed)
    summary["delta_rsum"] = summary["rsum_mean"].to_numpy() - plain["rsum_mean"].to_numpy()
    display = _display(summary)
    display["ΔrSum vs plain"] = [f"{d:+.1f}" for d in summary["delta_rsum"]]
    note = ("Recall with QB-Norm (querybank normalisation, Bogolin et al. 2022; the bank is built from TRAIN "
            "queries), mean ± std over seeds; ΔrSum = QB-Norm − plain rSum of the same runs.")
    prov = have[KEYS + ["seed", "run_id"] + qb]
    _write_table(out, "qbnorm", "Image-text retrieval with QB-Norm (test split)", note, display, summary, prov)
    return True


def _run_ranks(cfg: dict[str, Any], run_id: str, tmp: Path) -> tuple[Any, Any, int, Any] | None:
    """(i2t, t2i, caps_per_image, image_ids) of an evaluate run's ranks.npz artifact (its primary protocol),
    None when the run logged none."""
    from fga.evaluate.run import read_ranks
    from fga.tracking import download_artifact, list_artifacts

    if "ranks.npz" not in list_artifacts(cfg, run_id):
        return None
    path = download_artifact(cfg, run_id, "ranks.npz", tmp / run_id)
    i2t, t2i, cpi = read_ranks(path)
    with np.load(path) as z:
        ids = z["image_ids"]
    return i2t, t2i, cpi, ids


def significance_table(cfg: dict[str, Any], runs: pd.DataFrame, out: Path, quiet: bool, method: str = "grm") -> bool:
    """Paired test "`method` > baseline" in rSum on the same test queries, per seed, for every other main-grid
    method; its ranks come from each evaluate run's ranks.npz artifact (fga.evaluate.stats.paired_test)."""
    import tempfile

    from fga.evaluate.stats import bootstrap_options, paired_test

    baselines = sorted(set(runs["method"]) - {method})
    if method not in set(runs["method"]) or not baselines:
        say(f"report: the significance table needs {method} and a baseline among the evaluate runs; skipped", quiet)
        return False
    opts = bootstrap_options(cfg)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[str, Any] = {}

        def ranks(run_id: str) -> Any:
            if run_id not in cache:
                cache[run_id] = _run_ranks(cfg, run_id, Path(tmp))
            return cache[run_id]

        for (dataset, protocol, backbone), cell in runs.groupby(["dataset", "protocol", "backbone"], sort=True):
            ours = cell[cell["method"] == method].set_index("seed")["run_id"]
            for baseline in baselines:
                theirs = cell[cell["method"] == baseline].set_index("seed")["run_id"]
                for seed in sorted(set(ours.index) & set(theirs.index)):
                    a, b = ranks(ours[seed]), ranks(theirs[seed])
                    where = f"{dataset}/{backbone}/{{}}/seed{seed}"
                    if a is None or b is None:
                        say(f"report: no ranks.npz artifact in the evaluate run of "
                            f"{where.format(method if a is None else baseline)}; its significance row skipped", quiet)
                        continue
                    if a[2] != b[2] or not np.array_equal(a[3], b[3]):
                        say(f"report: {where.format(method)} and {where.format(baseline)} ranked different test "
                            "queries; their significance row skipped", quiet)
                        continue
                    test = paired_test(a[:2], b[:2], a[2], **opts)
                    rows.append({"dataset": dataset, "protocol": protocol, "backbone": backbone, "baseline": baseline,
                                 "seed": str(seed), "delta_rsum": test["delta_rsum"], "ci_lo": test["ci"][0],
                                 "ci_hi": test["ci"][1], "p_value": test["p_value"], "n_images": len(a[3]),
                                 "n_resamples": test["n_resamples"], "run_id": ours[seed],
                                 "baseline_run_id": theirs[seed]})
    if not rows:
        say(f"report: no {method}/baseline pair of runs with ranks.npz on the same seed; significance table skipped",
            quiet)
        return False
    per_seed = pd.DataFrame(rows)
    # over seeds: the mean Δ and the LARGEST per-seed p (intersection-union: "better at every seed" at level α
    # iff every seed's test rejects at α); no CI: the seeds share their test images, so their intervals do not pool
    combined = (per_seed.groupby(["dataset", "protocol", "backbone", "baseline"], sort=True)
                .agg(delta_rsum=("delta_rsum", "mean"), p_value=("p_value", "max"), n_seeds=("seed", "size"),
                     n_images=("n_images", "first"), n_resamples=("n_resamples", "first")).reset_index())
    combined = combined[combined["n_seeds"] > 1].drop(columns="n_seeds").assign(seed="all")
    keys = ["dataset", "protocol", "backbone", "baseline"]
    data = pd.concat([per_seed, combined], ignore_index=True)
    data["_order"] = [math.inf if s == "all" else int(s) for s in data["seed"]]  # seeds numerically, `all` last
    data = data.sort_values(keys + ["_order"]).drop(columns="_order").reset_index(drop=True)
    conf = f"{opts['confidence']:.0%}"
    display = data[keys + ["seed"]].rename(columns={k: k.capitalize() for k in keys + ["seed"]})
    display[f"ΔrSum ({method.upper()} - baseline)"] = [f"{d:+.1f}" for d in data["delta_rsum"]]
    display[f"ΔrSum {conf} CI"] = [DASH if pd.isna(lo) else f"[{lo:+.1f}, {hi:+.1f}]"
                                   for lo, hi in zip(data["ci_lo"], data["ci_hi"])]
    display[f"p ({method.upper()} better)"] = [f"{p:.3g}" for p in data["p_value"]]
    note = (f"Paired test of H1 \"{method.upper()} > baseline in rSum\" on the same test queries (primary protocol), "
            f"from the per-query ranks each evaluate run logged (ranks.npz): p = one-sided sign-flip permutation test "
            f"of the per-image rSum differences (an image with its captions is the unit), CI = paired percentile "
            f"bootstrap of ΔrSum; {opts['n_resamples']} resamples, seed {opts['seed']} (`evaluate.bootstrap`). "
            f"Seed `all`: ΔrSum = mean over the seeds, p = the LARGEST per-seed p (it is below α only if "
            f"{method.upper()} wins at every seed; conservative, no CI). Runs in significance_provenance.csv.")
    prov = per_seed[keys + ["seed", "run_id", "baseline_run_id"]]
    _write_table(out, "significance", f"Significance: {method.upper()} vs each baseline (paired, per seed)", note,
                 display, data, prov)
    return True


def paper_table(out: Path) -> None:
    data = PAPER_GRM_RSUM.copy()
    data.insert(0, "source", "paper (not measured here)")
    display = PAPER_GRM_RSUM.rename(columns=PAPER_HEADERS)
    for c in display.columns[1:]:
        display[c] = display[c].map(lambda v: f"{v:.1f}")
    prov = PAPER_GRM_RSUM.melt(id_vars="backbone", var_name="dataset_protocol", value_name="rsum")
    prov["source"] = PAPER_SOURCE
    prov["run_id"] = ""
    note = ("**paper (not measured here)**: GRM's rSum as the paper reports it (ViT/Swin backbones fine-tuned on "
            "Flickr30K/COCO), for reference only. These numbers were not produced by this pipeline and belong to "
            "no MLflow run; compare them with the measured tables only with that in mind.")
    _write_table(out, "paper_reference", "GRM as published — paper (not measured here)", note, display, data, prov)


# ---------------------------------------------------------------------------------------------- robustness

# `<protocol>/clutter/...` (fga.evaluate.robustness_run.mlflow_metrics); runs logged before the protocol prefix
# have bare `clutter/...` keys, read as the run's protocol so an older store still fills the tables
_BIN_RE = re.compile(r"^(?:(?P<protocol>[^/]+)/)?clutter/(?P<bin>[^/]+)/(?P<name>[^/]+)$")
_DIS_RE = re.compile(r"^(?:(?P<protocol>[^/]+)/)?distractors/(?P<n>\d+)/(?P<name>[^/]+)$")


def bin_order(label: str) -> tuple[int, float, str]:
    """Ranges by their lower edge ("1-3" < "4-6" < "7plus"), then "cluttered", then "all"."""
    m = re.match(r"^(\d+)", label)
    if m:
        return (0, float(m.group(1)), label)
    return (1 if label == "cluttered" else 2, 0.0, label)


def robustness_runs(cfg: dict[str, Any], runs: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long frames from the robustness runs: one row per (run, clutter bin) and per (run, distractor level), from
    the metrics of the run's protocol (tag `protocol`)."""
    from fga.tracking import runs_frame

    if runs is None:
        runs = runs_frame(cfg, cfg["grid"]["datasets"], "robustness")
    clutter: dict[tuple, dict] = {}
    distract: dict[tuple, dict] = {}
    for _, r in runs.iterrows():
        base = {k: r[f"tags.{k}"] for k in RUN_KEYS + ["seed"]}
        base["run_id"] = r["run_id"]
        protocol = r.get("tags.protocol")
        for col, v in r.items():
            if not isinstance(col, str) or not col.startswith("metrics.") or pd.isna(v):
                continue
            name = col.removeprefix("metrics.")
            m = _BIN_RE.match(name) or _DIS_RE.match(name)
            if m is None or m["protocol"] not in (None, protocol):
                continue
            if m.re is _BIN_RE:
                row = clutter.setdefault((r["run_id"], m["bin"]), {**base, "bin": m["bin"]})
                row[m["name"]] = float(v)
            else:
                row = distract.setdefault((r["run_id"], int(m["n"])), {**base, "n_extra": int(m["n"])})
                row[m["name"]] = float(v)

    def frame(rows: dict, order: Callable[[pd.DataFrame], pd.Series]) -> pd.DataFrame:
        df = pd.DataFrame(list(rows.values()))
        if df.empty:
            return df
        df["seed"] = df["seed"].astype(int)
        for c in COLUMNS:
            if c not in df:
                df[c] = math.nan
        df["_order"] = order(df)
        return df.sort_values(RUN_KEYS + ["_order", "seed"]).drop(columns="_order").reset_index(drop=True)

    return (frame(clutter, lambda d: d["bin"].map(bin_order)), frame(distract, lambda d: d["n_extra"]))


def _wide(summary: pd.DataFrame, level: str, fmt: Callable[[Any], str]) -> pd.DataFrame:
    """Rows (dataset, backbone, method); one rSum column per level (mean ± std over seeds)."""
    levels = list(dict.fromkeys(summary[level]))
    rows = []
    for keys, cell in summary.groupby(RUN_KEYS, sort=True):
        row = dict(zip(RUN_KEYS, keys))
        row["seeds"] = int(cell["seeds"].max())
        by = {r[level]: r for _, r in cell.iterrows()}
        for lv in levels:
            r = by.get(lv)
            row[fmt(lv)] = DASH if r is None else _pm(r["rsum_mean"], r["rsum_std"])
        rows.append(row)
    return pd.DataFrame(rows).rename(columns={k: k.capitalize() for k in RUN_KEYS + ["seeds"]})


def clutter_table(clutter: pd.DataFrame, out: Path, quiet: bool) -> bool:
    if clutter.empty:
        say("report: no robustness runs with <protocol>/clutter/<bin>/... metrics; clutter table and figure skipped", quiet)
        return False
    summary = summarise(clutter, RUN_KEYS + ["bin"], COLUMNS)
    summary["order"] = summary["bin"].map(bin_order)
    summary = summary.sort_values(RUN_KEYS + ["order"]).drop(columns="order").reset_index(drop=True)
    if "n_images" in clutter:
        summary = summary.merge(clutter.groupby(RUN_KEYS + ["bin"])["n_images"].mean().rename("n_images").reset_index(),
                                on=RUN_KEYS + ["bin"], how="left")
    sizes = (summary.groupby("bin", sort=False)["n_images"].first() if "n_images" in summary else {})

    def fmt(b: str) -> str:
        n = sizes.get(b) if len(sizes) else None
        return f"rSum {b}" + (f" (n={int(n)})" if n is not None and not pd.isna(n) else "")

    display = _wide(summary, "bin", fmt)
    note = ("rSum per clutter bin (objects per test image); each bin's queries are ranked against the FULL test "
            "gallery, so bins differ only in which queries they hold. `cluttered` = the most cluttered images "
            "(top quantile), `all` = every test image. Mean ± sample std over seeds; n = test images in the bin. "
            "Per-recall means and stds in robustness_clutter.csv; runs in robustness_clutter_provenance.csv.")
    prov = clutter[RUN_KEYS + ["bin", "seed", "run_id"] + _present(clutter, COLUMNS + ["n_images"])]
    _write_table(out, "robustness_clutter", "Robustness: recall vs clutter", note, display, summary, prov)
    return True


def distractor_table(distract: pd.DataFrame, out: Path, quiet: bool) -> bool:
    if distract.empty:
        say("report: no robustness runs with <protocol>/distractors/<n>/... metrics; distractor table and figure "
            "skipped", quiet)
        return False
    summary = summarise(distract, RUN_KEYS + ["n_extra"], COLUMNS).sort_values(RUN_KEYS + ["n_extra"])
    display = _wide(summary.reset_index(drop=True), "n_extra", lambda n: f"rSum +{n}")
    note = ("rSum when every test image gets n extra objects that no caption mentions (synthetic scenes "
            "re-rendered), mean ± sample std over seeds. Runs in robustness_distractors_provenance.csv.")
    prov = distract[RUN_KEYS + ["n_extra", "seed", "run_id"] + _present(distract, COLUMNS)]
    _write_table(out, "robustness_distractors", "Robustness: recall vs added distractors", note, display,
                 summary.reset_index(drop=True), prov)
    return True


# ------------------------------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _save(fig, figures: Path, name: str) -> list[str]:
    """PNG (150 dpi) and PDF, with no timestamps in the files' metadata (reruns give the same bytes)."""
    plt, _ = _plt()
    names = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        with atomic_path(figures / f"{name}.{ext}", suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta)
        names.append(f"{name}.{ext}")
    plt.close(fig)
    return names


def clutter_figure(clutter: pd.DataFrame, figures: Path) -> list[str]:
    """rSum (and R@1 both ways) vs clutter bin, one line per method, 95% CI band over seeds; one column per backbone."""
    plt, sns = _plt()
    ranged = clutter[clutter["bin"].map(lambda b: bin_order(b)[0] == 0)].copy()
    if ranged.empty:
        return []
    bins = sorted(ranged["bin"].unique(), key=bin_order)
    ranged["bin_pos"] = ranged["bin"].map({b: i for i, b in enumerate(bins)})
    ranged["panel"] = ranged["dataset"] + " / " + ranged["backbone"]
    panels = sorted(ranged["panel"].unique())
    ys = [("rsum", "rSum"), ("i2t_R1", "i2t R@1"), ("t2i_R1", "t2i R@1")]
    fig, axes = plt.subplots(len(ys), len(panels), figsize=(4.2 * len(panels), 3.0 * len(ys)), squeeze=False,
                             sharex=True, layout="constrained")
    for j, panel in enumerate(panels):
        data = ranged[ranged["panel"] == panel]
        for i, (y, label) in enumerate(ys):
            ax = axes[i][j]
            _method_lines(sns, data, "bin_pos", y, ax, legend=(i == 0 and j == len(panels) - 1))
            ax.set_xticks(range(len(bins)), bins)
            ax.set_xlabel("objects per image (clutter bin)" if i == len(ys) - 1 else "")
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(panel)
    if axes[0][-1].get_legend():
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), title="method")
    fig.suptitle("Recall vs clutter (mean over seeds, 95% CI band)")
    return _save(fig, figures, "clutter_recall")


def _method_lines(sns, data: pd.DataFrame, x: str, y: str, ax, legend: bool) -> None:
    """One line per method, mean over seeds with a seeded 95% bootstrap band."""
    sns.lineplot(data=data, x=x, y=y, hue="method", style="method", markers=True, dashes=False,
                 errorbar=("ci", 95), n_boot=1000, seed=0, ax=ax, legend=legend)


def distractor_figure(distract: pd.DataFrame, figures: Path) -> list[str]:
    plt, sns = _plt()
    data = distract.copy()
    data["panel"] = data["dataset"] + " / " + data["backbone"]
    panels = sorted(data["panel"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False, layout="constrained")
    for j, panel in enumerate(panels):
        ax = axes[0][j]
        _method_lines(sns, data[data["panel"] == panel], "n_extra", "rsum", ax, legend=(j == len(panels) - 1))
        ax.set_xticks(sorted(data["n_extra"].unique()))
        ax.set_xlabel("added distractor objects per image")
        ax.set_ylabel("rSum")
        ax.set_title(panel)
    if axes[0][-1].get_legend():
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), title="method")
    fig.suptitle("Recall vs added distractors (mean over seeds, 95% CI band)")
    return _save(fig, figures, "distractor_recall")


def seed_spread_figure(runs: pd.DataFrame, figures: Path) -> list[str]:
    """rSum of every seed per method: box plot with the seeds as points; one panel per dataset/protocol/backbone."""
    plt, sns = _plt()
    data = runs.copy()
    data["panel"] = data["dataset"] + " (" + data["protocol"] + ") / " + data["backbone"]
    panels = sorted(data["panel"].unique())
    methods = sorted(data["method"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.5, 0.9 * len(methods) + 1.5) * len(panels), 3.6),
                             squeeze=False, layout="constrained")
    for j, panel in enumerate(panels):
        ax = axes[0][j]
        sub = data[data["panel"] == panel]
        order = [m for m in methods if m in set(sub["method"])]
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
            warnings.simplefilter("ignore", DeprecationWarning)
            sns.boxplot(data=sub, x="method", y="rsum", order=order, color="0.9", fliersize=0, ax=ax)
        sns.stripplot(data=sub, x="method", y="rsum", order=order, hue="method", palette="deep", size=6,
                      jitter=0.15, legend=False, ax=ax)
        ax.set_title(panel)
        ax.set_xlabel("")
        ax.set_ylabel("rSum (one point per seed)")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Seed spread of rSum")
    return _save(fig, figures, "seed_spread")


ATTENTION_RE = re.compile(r"(^|/)(region_)?attention[^/]*\.json$")


def _attention_maps(item: Any) -> list[Any]:
    """The maps of an attention artifact: ``{"maps": [...]}`` (attention.json), or one bare map (older files)."""
    if isinstance(item, dict) and "maps" in item:
        if not isinstance(item["maps"], list):
            raise TypeError("'maps' is not a list")
        return item["maps"]
    return [item]


def attention_figures(cfg: dict[str, Any], runs: pd.DataFrame, figures: Path, quiet: bool, limit: int = 4) -> list[str]:
    """Region-word heat maps from GRM evaluate runs that saved them: the ``maps`` list of their ``attention.json``
    artifact (fga.evaluate.attention), each map ``{"words": [...], "attention": [[word x region]], "regions"?: [...],
    "caption"?: str, "image_id"?: int}``; at most `limit` maps of the lowest seed of each GRM-arch method and backbone."""
    from fga.tracking import download_artifact, list_artifacts

    variants = _variants(cfg)
    grm = runs[runs["method"].map(lambda m: variants.get(m, m) == "grm")]
    if grm.empty:
        say("report: no GRM evaluate runs; region-word heat maps skipped", quiet)
        return []
    plt, sns = _plt()
    names: list[str] = []
    tmp_dir = figures.parent / f".{figures.name}.artifacts"
    for (dataset, backbone, method), cell in grm.groupby(RUN_KEYS, sort=True):
        run = cell.sort_values("seed").iloc[0]
        k = 0
        for path in [p for p in list_artifacts(cfg, run["run_id"]) if ATTENTION_RE.search(p)]:
            try:
                maps = _attention_maps(json.loads(download_artifact(cfg, run["run_id"], path, tmp_dir).read_text()))
            except (OSError, ValueError, TypeError) as exc:
                say(f"report: {run['run_id']}:{path} is not a region-word attention file ({exc}); skipped", quiet)
                continue
            for j, item in enumerate(maps):
                if k >= limit:
                    break
                try:
                    att = pd.DataFrame(item["attention"], index=item["words"],
                                       columns=item.get("regions") or [f"r{i}" for i in range(len(item["attention"][0]))])
                except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
                    say(f"report: {run['run_id']}:{path} map {j} is not a region-word map ({exc}); skipped", quiet)
                    continue
                fig, ax = plt.subplots(figsize=(0.45 * att.shape[1] + 2.5, 0.35 * att.shape[0] + 1.5))
                label = "attention" if item.get("temperature") is None else f"attention (softmax, T={item['temperature']})"
                sns.heatmap(att, cmap="viridis", ax=ax, cbar_kws={"label": label})
                ax.set_xlabel("region / prompt")
                ax.set_ylabel("word")
                ax.tick_params(axis="x", rotation=90, labelsize=7)
                ax.tick_params(axis="y", rotation=0)
                image = f", image {item['image_id']}" if item.get("image_id") is not None else ""
                ax.set_title(f"{method} on {dataset}/{backbone}, seed {run['seed']}{image}"
                             + (f"\n{item['caption']}" if item.get("caption") else ""), fontsize=8)
                names += _save(fig, figures, f"attention_{dataset}_{backbone}_{method}_{k}")
                k += 1
    if tmp_dir.exists():
        import shutil

        shutil.rmtree(tmp_dir, ignore_errors=True)
    if not names:
        say("report: the GRM evaluate runs saved no region-word attention maps; heat maps skipped", quiet)
    return names


# ------------------------------------------------------------------------------------------------- report


def write_report(cfg: dict[str, Any], quiet: bool = False) -> None:
    """Read the runs, write every table and figure (replacing both directories as a whole, so nothing stale
    survives), and log them as artifacts of a `report` run per dataset."""
    from fga.evaluate.stats import bootstrap_options
    from fga.tracking import log_run, reconcile, runs_frame

    datasets = cfg["grid"]["datasets"]
    reconcile(cfg, datasets)  # single writer after all runs: repair any race the parallel jobs left
    every_run = in_grid(cfg, evaluation_runs(cfg))  # incl. the ablation variants
    runs = in_grid(cfg, every_run, ablation=False)
    if every_run.empty:
        raise UserError("no evaluate runs of the configured grid in the MLflow store "
                        f"({cfg['tracking']['uri']}); run the pipeline first or check `grid` and `tracking.uri`")
    missing = missing_runs(cfg, every_run)
    if missing:
        print(f"report: WARNING: {len(missing)} grid cell(s) have no evaluate run in {cfg['tracking']['uri']} "
              f"(e.g. {missing[0]}); the tables average the runs there are. The report reads MLflow: point "
              "tracking.uri at the store the runs were logged to, or rerun their evaluate stage to log them.",
              file=sys.stderr)
    clutter, distract = (in_grid(cfg, f, ablation=False) for f in robustness_runs(cfg, runs_frame(cfg, datasets, "robustness")))
    tables_dir = Path(cfg["report"]["tables_dir"])
    figures_dir = Path(cfg["report"]["figures_dir"])
    with atomic_dir(tables_dir) as out:
        confidence = bootstrap_options(cfg)["confidence"]
        summary = main_table(runs, out, missing, confidence)
        ablation_table(cfg, every_run, summarise(every_run), out, quiet)
        qbnorm_table(runs, out, quiet)
        significance_table(cfg, runs, out, quiet)
        has_clutter = clutter_table(clutter, out, quiet)
        has_distract = distractor_table(distract, out, quiet)
        paper_table(out)
    with atomic_dir(figures_dir) as figs:
        seed_spread_figure(runs, figs)
        if has_clutter:
            clutter_figure(clutter, figs)
        if has_distract:
            distractor_figure(distract, figs)
        attention_figures(cfg, runs, figs, quiet)
    for dataset in datasets:
        if dataset not in set(every_run["dataset"]):
            continue
        log_run(cfg, {"dataset": dataset, "backbone": "all", "method": "all", "seed": "all", "stage": "report"},
                params={"report": cfg["report"], "grid": cfg["grid"]},
                metrics={"n_evaluate_runs": int((every_run["dataset"] == dataset).sum()),
                         "n_robustness_runs": int(clutter[clutter["dataset"] == dataset]["run_id"].nunique())
                         if not clutter.empty else 0},
                artifacts=[(tables_dir, "tables"), (figures_dir, "figures")])
    if not quiet:
        print(_markdown(_display(summary, confidence=confidence)))
        print(f"report: tables in {tables_dir}/, figures in {figures_dir}/")
