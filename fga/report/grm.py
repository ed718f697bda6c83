"""GRM's own report tables and figures: the module diagnostics of every GRM evaluation (grm_diagnostics), and the
paper's ablation and sensitivity grid (params.yaml `sweeps`: Tables 2-3, Fig. 4a/b) once its runs exist.

The runs are read like the other tables' (MLflow, or the result files with `report.source: files`), but for every
GRM-arch method of the grid *and* of `sweeps`, whose runs the main grid does not list (`snakemake grm_sweeps`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from fga.evaluate.run import DIAGNOSTIC_IMAGES
from fga.evaluate.stats import bootstrap_options, over_seeds, paired_tests_over_seeds
from fga.grid import SWEEP_BASE as FULL, Cell, grid_cells, sweep_cells, sweep_methods
from fga.io import read_json
from fga.models.registry import arch_name, method_section
from fga.report.notes import say
from fga.report.runs import COMPARED as CELL, KEYS, PROVENANCE, cells_of, evaluation_runs, reads_files, series_label
from fga.report.tables import DASH, mean_std_table, write_table

# sweeps key -> (table name, title)
SWEEPS: dict[str, tuple[str, str]] = {  # the keys are fga.grid.SWEEP_LISTS
    "modules": ("grm_ablation_modules", "GRM module ablation (cf. the paper's Table 2)"),
    "losses": ("grm_ablation_losses", "GRM loss ablation (cf. the paper's Table 3)"),
    "num_prompts": ("grm_sweep_prompts", "GRM vs the number of region prompts K (cf. the paper's Fig. 4a)"),
    "level_weights": ("grm_sweep_weights", "GRM vs the level weights (a, b, c) (cf. the paper's Fig. 4b)"),
}
DIAG = "diag/"  # the frame's diagnostics columns, named as the MLflow metrics (fga.evaluate.run.mlflow_metrics)
# diagnostics shown in the markdown table (the CSV has every one): name -> header
DIAGNOSTICS = {
    "prompt_entropy": "H_att", "usage_entropy": "H_use", "region_cos": "cos(μk,μk')",
    "region_to_mean_cos": "cos(μk,mean)",
    "keep_visual": "keep V", "keep_text": "keep T", "sigma_mean": "σ", "noise_to_signal": "noise/μ",
    "unc_i2t_R1_eval": "unc i2t@1 eval", "unc_i2t_R1_train": "unc i2t@1 train",
    "unc_t2i_R1_eval": "unc t2i@1 eval", "unc_t2i_R1_train": "unc t2i@1 train",
}
SWITCHES = {"use_visual_adapter": "−SA", "use_text_adapter": "−GA", "use_saliency": "−SA/GA",
            "use_region_prompt": "−RP", "use_uncertainty": "−UM", "use_reg": "−L_reg"}
LEVEL_NAMES = ("L_ori", "L_key", "L_unc")


# ------------------------------------------------------------------------------------------------- runs


def _cells(cfg: dict[str, Any]) -> list[Cell]:
    """The grid's and the sweeps' cells (dataset, backbone, text, method, seed) of GRM-arch methods."""
    cells = dict.fromkeys(grid_cells(cfg) + sweep_cells(cfg))
    return [c for c in cells if arch_name(cfg, c[3]) == FULL]


def _raw_frame(cfg: dict[str, Any], cells: list[Cell]) -> pd.DataFrame:
    """The evaluate runs as MLflow's search frame, or, from files, the rows their metrics.json make."""
    if not reads_files(cfg):
        from fga.tracking import runs_frame

        return runs_frame(cfg, cfg["grid"]["datasets"], "evaluate")
    from fga.report.files import _row, result_dir  # the file source's own row (its tags and flattening)

    rows = []
    for cell in cells:
        path = result_dir(cfg, *cell) / "metrics.json"
        if path.exists():
            rows.append(_row(path.parent, "evaluate", cell, read_json(path)))
    return pd.DataFrame(rows)


def grm_runs(cfg: dict[str, Any]) -> pd.DataFrame:
    """One row per evaluate run of a GRM-arch method in the grid or the sweeps: keys, run id, recalls (primary
    protocol) and the run's diagnostics (`diag/<name>` columns, NaN for runs logged before they existed)."""
    cells = _cells(cfg)
    raw = _raw_frame(cfg, cells)
    if raw.empty:
        return pd.DataFrame()
    runs = evaluation_runs(cfg, raw)
    runs = runs[cells_of(runs).isin(set(cells))].reset_index(drop=True)
    diag = raw.set_index("run_id")[[c for c in raw.columns if str(c).startswith("metrics." + DIAG)]]
    diag.columns = [c.removeprefix("metrics.") for c in diag.columns]
    return runs.join(diag, on="run_id")


# ----------------------------------------------------------------------------------------------- tables


def diagnostics_table(runs: pd.DataFrame, out: Path, quiet: bool) -> bool:
    """reports/tables/grm_diagnostics: rSum and each module diagnostic, mean ± std over seeds per backbone x text
    encoder x variant."""
    names = sorted(c for c in runs.columns if c.startswith(DIAG) and runs[c].notna().any())  # MLflow: any order
    if not names:
        say("report: no GRM evaluation with module diagnostics; grm_diagnostics table skipped", quiet)
        return False
    data = runs.dropna(subset=names, how="all")
    summary = over_seeds(data, KEYS, ["rsum"] + names).reset_index()
    headers = {"rsum": "rSum", **{DIAG + n: header for n, header in DIAGNOSTICS.items() if DIAG + n in names}}
    digits = {DIAG + n: 1 if "_R1_" in n else 3 for n in DIAGNOSTICS}  # R@1s are in %
    shown = mean_std_table(summary, KEYS, headers, digits)
    note = (f"What GRM's modules do on the first {DIAGNOSTIC_IMAGES} test images (fga.models.grm.diagnostics), "
            "mean ± std over seeds: H_att = attention entropy of a prompt over the patches / log L (1 = uniform); H_use = entropy "
            "of prompt usage / log K; cos(μk,μk') = mean cosine between an image's region means (1 = K copies); "
            "cos(μk,mean) = their cosine to the patch mean; keep V/T = adapter keep scores; σ, noise/μ = the "
            "uncertainty level's std and training noise relative to the region; unc i2t/t2i@1 = the unc level's "
            "own R@1 (%) in eval mode and in train mode (noise on). Every diagnostic is in the CSV; runs in "
            "grm_diagnostics_provenance.csv.")
    prov = data[KEYS + PROVENANCE]
    write_table(out, "grm_diagnostics", "GRM module diagnostics", note, shown, summary, prov)
    return True


def variant_label(cfg: dict[str, Any], method: str, backbone: str) -> str:
    """The paper's name of a variant: −SA, −L_key, K = 10, (a, b, c) = (0.5, 0.5, 0), ... (its options vs grm's)."""
    if method == FULL:
        return "GRM (full)"
    mine, full = method_section(cfg, method, backbone), method_section(cfg, FULL, backbone)
    changed = {k: v for k, v in mine.items() if k != "arch" and full.get(k) != v}
    removed = [name for key, name in SWITCHES.items() if changed.get(key) is False]
    if "level_weights" in changed:
        weights, base = [float(w) for w in changed["level_weights"]], [float(w) for w in full["level_weights"]]
        dropped = [n for n, w, w0 in zip(LEVEL_NAMES, weights, base) if w == 0 < w0]
        kept_rest = sum(w != w0 for w, w0 in zip(weights, base)) == 1  # one term removed, the others as in grm
        removed += ["−" + n for n in dropped] if dropped and kept_rest else \
            ["(a, b, c) = (" + ", ".join(f"{w:g}" for w in weights) + ")"]
    if changed.get("lambda_recon") == 0:
        removed.append("−L_recon")
    if "num_prompts" in changed:
        removed.append(f"K = {changed['num_prompts']}")
    if changed.get("saliency_pooling") == "none":
        removed.append("literal adapters (saliency_pooling none)")
    return " ".join(removed) or ", ".join(f"{k}={v}" for k, v in changed.items()) or method


def _paired(cfg: dict[str, Any], runs: pd.DataFrame, variants: list[str], quiet: bool) -> pd.DataFrame:
    """Per cell and variant: "full GRM > variant" paired on the same test queries, over the seeds both ran."""
    from fga.report.significance import _per_seed_tests  # the significance table's per-seed paired tests

    rows = _per_seed_tests(cfg, runs, FULL, variants, bootstrap_options(cfg), quiet)
    if not rows:
        return pd.DataFrame(columns=CELL + ["method", "p_value", "seed"])
    per_seed = pd.DataFrame(rows).rename(columns={"baseline": "method"})
    over = paired_tests_over_seeds(per_seed, CELL + ["method"])
    single = per_seed[~per_seed.set_index(CELL + ["method"]).index.isin(over.set_index(CELL + ["method"]).index)]
    return pd.concat([over, single], ignore_index=True)[CELL + ["method", "p_value", "seed"]]


def sweep_table(cfg: dict[str, Any], runs: pd.DataFrame, key: str, out: Path, quiet: bool) -> pd.DataFrame | None:
    """One `sweeps` list as the paper's table shape: variant, rSum mean ± std, ΔrSum vs full GRM, paired p."""
    listed = sweep_methods(cfg, key)
    if runs.empty or not (set(listed) - {FULL}) & set(runs["method"]):
        return None
    ran = runs[runs["method"].isin(set(listed) | {FULL})]
    variants = [m for m in listed if m != FULL and m in set(ran["method"])]
    with_variant = ran[ran["method"] != FULL].groupby(CELL).size().index  # cells where a variant ran
    ran = ran[ran.set_index(CELL).index.isin(with_variant)]
    order = listed if FULL in listed else [FULL] + listed
    summary = over_seeds(ran, CELL + ["method"], ["rsum"]).reset_index()
    summary["_order"] = summary["method"].map({m: i for i, m in enumerate(order)})
    summary = summary.sort_values(CELL + ["_order"]).drop(columns="_order").reset_index(drop=True)
    full = summary[summary["method"] == FULL].set_index(CELL)["rsum_mean"]
    summary["delta_rsum"] = [r["rsum_mean"] - full.get(tuple(r[c] for c in CELL), math.nan)
                             for _, r in summary.iterrows()]
    tests = _paired(cfg, ran, variants, quiet)
    summary = summary.merge(tests, on=CELL + ["method"], how="left")
    summary["variant"] = [variant_label(cfg, m, b) for m, b in zip(summary["method"], summary["backbone"])]
    shown = mean_std_table(summary, CELL + ["variant", "method"], {"rsum": "rSum"})
    shown["ΔrSum vs full"] = [DASH if pd.isna(d) else ("0.0" if m == FULL else f"{d:+.1f}")
                              for d, m in zip(summary["delta_rsum"], summary["method"])]
    shown["p (full > variant)"] = [DASH if pd.isna(p) else f"{p:.3g}" for p in summary["p_value"]]
    name, title = SWEEPS[key]
    note = (f"`sweeps.{key}` in params.yaml (`snakemake --cores all grm_sweeps`): rSum mean ± std over seeds, "
            "ΔrSum = variant − full GRM (same dataset, protocol, backbone, text encoder); p = one-sided paired "
            "permutation test of \"full GRM > variant\" on the same test queries (ranks.npz), the largest p over the "
            "seeds both ran (below α only if the full model wins at every seed). Runs in "
            f"{name}_provenance.csv.")
    prov = ran[ran["method"].isin(set(summary["method"]))][KEYS + PROVENANCE]
    write_table(out, name, title, note, shown, summary, prov)
    return summary


def grm_tables(cfg: dict[str, Any], out: Path, quiet: bool) -> list[str]:
    """Every GRM table the runs allow (diagnostics, then each sweep); the names of the tables written."""
    runs = grm_runs(cfg)
    written = ["grm_diagnostics"] if diagnostics_table(runs, out, quiet) else []
    for key, (name, _) in SWEEPS.items():
        if sweep_table(cfg, runs, key, out, quiet) is not None:
            written.append(name)
    return written


# ---------------------------------------------------------------------------------------------- figures


def sweep_frame(cfg: dict[str, Any], runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """The runs of one numeric sweep with its x value: K (`num_prompts`) or the (a, b, c) label (`level_weights`)."""
    listed = sweep_methods(cfg, key)
    data = runs[runs["method"].isin(listed)].copy() if not runs.empty else pd.DataFrame()
    if data.empty:
        return data
    options = [method_section(cfg, m, b) for m, b in zip(data["method"], data["backbone"])]
    if key == "num_prompts":
        data["x"] = [int(o["num_prompts"]) for o in options]
    else:
        data["x"] = ["/".join(f"{float(w):g}" for w in o["level_weights"]) for o in options]
        data["_order"] = data["method"].map({m: i for i, m in enumerate(listed)})
        data = data.sort_values(["_order", "seed"]).drop(columns="_order")
    data["panel"] = data["dataset"] + " (" + data["protocol"] + ")"
    return data.reset_index(drop=True)


def sweep_figure(cfg: dict[str, Any], runs: pd.DataFrame, key: str, figures: Path) -> list[str]:
    """rSum vs K (Fig. 4a) or vs (a, b, c) (Fig. 4b): one line per backbone (per backbone + text encoder when the
    runs have several), mean ± std over seeds."""
    from fga.report.figures import _plt, _save  # the report's figure style and reproducible writer

    data = sweep_frame(cfg, runs, key)
    if data.empty or data["method"].nunique() < 2:
        return []
    plt, sns = _plt()
    data = data.assign(backbone=series_label(data, "backbone"))  # "b + minilm" when text encoders differ
    panels = sorted(data["panel"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6), squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels):
        sub = data[data["panel"] == panel]
        if key == "num_prompts":
            sns.lineplot(data=sub, x="x", y="rsum", hue="backbone", style="backbone", markers=True, dashes=False,
                         errorbar="sd", ax=ax)
            ax.set_xscale("log")
            ticks = sorted(sub["x"].unique())
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel("number of region prompts K")
        else:
            sns.pointplot(data=sub, x="x", y="rsum", hue="backbone", order=list(dict.fromkeys(sub["x"])),
                          errorbar="sd", markers="o", ax=ax)
            ax.set_xlabel("level weights a/b/c (ori/key/unc)")
            ax.tick_params(axis="x", rotation=30)
        ax.set_ylabel("rSum (mean ± std over seeds)")
        ax.set_title(panel)
    name = "grm_sweep_prompts" if key == "num_prompts" else "grm_sweep_weights"
    fig.suptitle(SWEEPS[key][1])
    return _save(fig, figures, name)


def grm_figures(cfg: dict[str, Any], figures: Path, quiet: bool) -> list[str]:
    """The rSum-vs-K and rSum-vs-weights figures, for the sweeps that have runs of at least two variants."""
    runs = grm_runs(cfg)
    written = [f for key in ("num_prompts", "level_weights") for f in sweep_figure(cfg, runs, key, figures)]
    if not written and sweep_methods(cfg):
        say("report: no sweep runs yet (`snakemake --cores all grm_sweeps`); GRM sweep figures skipped", quiet)
    return written
