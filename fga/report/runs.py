"""What the report reads from MLflow: the evaluate and robustness runs as frames (restricted to the configured grid),
and the artifacts of a run (its ranks.npz, its region-word attention files). With `report.source: files` the frames
come from the DVC-tracked result files instead (fga.report.files), a run id is its results directory, and the
artifacts are read there. Either way each row also names its run's result file (`result_file`): the provenance CSVs
identify runs by it and their key, never by an MLflow run id (random), so the DVC-tracked tables are reproducible."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from fga.errors import UserError
from fga.evaluate.recall import DEFAULT_TIE_RULE
from fga.grid import DEFAULT_TEXT_ENCODER, grid_cells, run_path
from fga.report.files import result_file

RECALLS = [f"{d}_R{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
COLUMNS = RECALLS + ["rsum"]
KEYS = ["dataset", "protocol", "backbone", "text", "method"]
RUN_KEYS = ["dataset", "backbone", "text", "method"]  # a run's key (with its seed): fga.grid.run_path's parts
COMPARED = [k for k in KEYS if k != "method"]  # what runs compared method against method share (text included)
RESULT_FILE = "result_file"
PROVENANCE = ["seed", RESULT_FILE]  # after a table's keys: how its provenance CSV names each run
# the evaluate stage's `evaluate.tie_rule` as the runs frame holds it (search_runs' params columns; from files,
# metrics.json's `ties`: fga.report.files)
TIE_RULE_PARAM = "params.evaluate.tie_rule"
# region-word maps of an evaluate run (attention.json; region_attention_<i>.json of older runs)
ATTENTION_RE = re.compile(r"(^|/)(region_)?attention[^/]*\.json$")


SOURCES = ("mlflow", "files")


def reads_files(cfg: dict[str, Any]) -> bool:
    """Whether the report reads the result files (`report.source: files`) rather than MLflow (the default)."""
    source = (cfg.get("report") or {}).get("source", "mlflow")
    if source not in SOURCES:
        raise UserError(f"params.yaml: report.source is {source!r}; use one of {', '.join(SOURCES)}")
    return source == "files"


def _metric(r: pd.Series, name: str) -> float:
    v = r.get(f"metrics.{name}")
    return float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else math.nan


def _tie_rule(r: pd.Series) -> str:
    """The tie rule the run ranked with; a run from before the option ranked pessimistically."""
    rule = r.get(TIE_RULE_PARAM)
    return rule if isinstance(rule, str) and rule else DEFAULT_TIE_RULE


def text_tag(r: pd.Series) -> str:
    """The run's caption encoder (tag `text`); a run logged before the text-encoder axis has none: the BiGRU."""
    text = r.get("tags.text")
    return text if isinstance(text, str) and text else DEFAULT_TEXT_ENCODER


def key_tags(r: pd.Series) -> dict[str, Any]:
    """The run's key (RUN_KEYS and seed) from its MLflow tags."""
    return {**{k: text_tag(r) if k == "text" else r[f"tags.{k}"] for k in RUN_KEYS}, "seed": r["tags.seed"]}


def series_label(frame: pd.DataFrame, column: str = "method") -> pd.Series:
    """What a figure's hue or axis names a row's series by: `column` alone, or "<column> + <text encoder>" when the
    frame holds runs of more than one text encoder (so they are drawn apart, never pooled)."""
    if "text" not in frame or frame["text"].nunique() <= 1:
        return frame[column].astype(str)
    return frame[column].astype(str) + " + " + frame["text"].astype(str)


def evaluation_runs(cfg: dict[str, Any], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per evaluate run: key tags, weights source, run id, result file, tie rule (``tie_rule``), the
    protocol's metrics, and, where the evaluate stage computed them, bootstrap CI bounds (``<name>_ci_lo/_hi``) and
    QB-Norm recalls (``qb_<name>``)."""
    from fga.tracking import runs_frame

    if runs is None:
        runs = runs_frame(cfg, cfg["grid"]["datasets"], "evaluate")
    if runs.empty:
        raise UserError("no evaluate runs in the MLflow store; run the pipeline (`snakemake --cores all`) first")
    rows = []
    for _, r in runs.iterrows():
        protocol = r["tags.protocol"]
        row = key_tags(r)
        row.update(protocol=protocol, run_id=r["run_id"], weights=r.get("tags.weights_source", "") or "")
        row[RESULT_FILE] = result_file(cfg, "evaluate", *(row[k] for k in RUN_KEYS + ["seed"]))
        row["tie_rule"] = _tie_rule(r)
        row.update({c: _metric(r, f"{protocol}/{c}") for c in COLUMNS})
        row.update({f"{c}_ci_{b}": _metric(r, f"{protocol}/ci/{c}_{b}") for c in COLUMNS for b in ("lo", "hi")})
        row.update({f"qb_{c}": _metric(r, f"qbnorm/{protocol}/{c}") for c in COLUMNS})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype(int)
    return frame.sort_values(KEYS + ["seed"]).reset_index(drop=True)


def cells_of(runs: pd.DataFrame) -> pd.Series:
    """Each run's fga.grid cell: (dataset, backbone, text encoder, method, seed)."""
    return pd.Series(list(zip(*(runs[k] for k in RUN_KEYS), runs["seed"].astype(int))), index=runs.index,
                     dtype=object)


def in_grid(cfg: dict[str, Any], runs: pd.DataFrame, ablation: bool = True) -> pd.DataFrame:
    """The runs of the configured grid only (a store also keeps runs of methods or seeds dropped from it);
    ablation=False: the main grid only (datasets x backbones x text encoders x methods x seeds, no ablation
    variants)."""
    if runs.empty:
        return runs
    return runs[cells_of(runs).isin(set(grid_cells(cfg, ablation)))].reset_index(drop=True)


def missing_runs(cfg: dict[str, Any], runs: pd.DataFrame) -> list[str]:
    """Grid cells (fga.grid.run_path: dataset/backbone/text/method/seed<k>, ablation variants included) without a
    run in `runs`."""
    have = set(cells_of(runs)) if not runs.empty else set()
    return [run_path(*cell) for cell in grid_cells(cfg) if cell not in have]


def present(frame: pd.DataFrame, cols: list[str]) -> list[str]:
    """The columns of `cols` that `frame` has with at least one value."""
    return [c for c in cols if c in frame and frame[c].notna().any()]


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


def _long_frame(rows: dict, order: Callable[[pd.DataFrame], pd.Series]) -> pd.DataFrame:
    """Rows sorted by run key, `order` and seed, with every recall column (NaN where a run lacks it)."""
    df = pd.DataFrame(list(rows.values()))
    if df.empty:
        return df
    df["seed"] = df["seed"].astype(int)
    for c in COLUMNS:
        if c not in df:
            df[c] = math.nan
    df["_order"] = order(df)
    return df.sort_values(RUN_KEYS + ["_order", "seed"]).drop(columns="_order").reset_index(drop=True)


def robustness_runs(cfg: dict[str, Any], runs: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long frames from the robustness runs: one row per (run, clutter bin) and per (run, distractor level), from
    the metrics of the run's protocol (tag `protocol`)."""
    from fga.tracking import runs_frame

    if runs is None:
        runs = runs_frame(cfg, cfg["grid"]["datasets"], "robustness")
    clutter: dict[tuple, dict] = {}
    distract: dict[tuple, dict] = {}
    for _, r in runs.iterrows():
        base = key_tags(r)
        base["run_id"] = r["run_id"]
        base[RESULT_FILE] = result_file(cfg, "robustness", *(base[k] for k in RUN_KEYS + ["seed"]))
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
            else:
                row = distract.setdefault((r["run_id"], int(m["n"])), {**base, "n_extra": int(m["n"])})
            row[m["name"]] = float(v)
    return (_long_frame(clutter, lambda d: d["bin"].map(bin_order)), _long_frame(distract, lambda d: d["n_extra"]))


def run_ranks(cfg: dict[str, Any], run_id: str, tmp: Path) -> Any:
    """The ranks.npz artifact of an evaluate run (fga.evaluate.run.RanksFile, its primary protocol), None when the
    run logged none."""
    if reads_files(cfg):
        from fga.report.files import ranks_file

        return ranks_file(run_id)
    from fga.evaluate.run import load_ranks
    from fga.tracking import download_artifact, list_artifacts

    if "ranks.npz" not in list_artifacts(cfg, run_id):
        return None
    return load_ranks(download_artifact(cfg, run_id, "ranks.npz", tmp / run_id))


def attention_artifacts(cfg: dict[str, Any], run_id: str) -> list[str]:
    """The run's artifact paths that hold region-word attention maps."""
    if reads_files(cfg):
        from fga.report.files import attention_files

        return attention_files(run_id)
    from fga.tracking import list_artifacts

    return [p for p in list_artifacts(cfg, run_id) if ATTENTION_RE.search(p)]


def attention_maps(cfg: dict[str, Any], run_id: str, path: str, tmp_dir: Path) -> list[Any]:
    """The maps of an attention artifact: ``{"maps": [...]}`` (attention.json), or one bare map (older files).
    Raises OSError, ValueError or TypeError when the artifact is not one."""
    from fga.tracking import download_artifact

    local = Path(run_id) / path if reads_files(cfg) else download_artifact(cfg, run_id, path, tmp_dir)
    item = json.loads(local.read_text())
    if isinstance(item, dict) and "maps" in item:
        if not isinstance(item["maps"], list):
            raise TypeError("'maps' is not a list")
        return item["maps"]
    return [item]
