"""Where an experiment's outputs live: the one place that maps the params key `experiment` to output roots.

The default experiment keeps the historical layout (runs/, results/, logs/, the configured report dirs), so its
outputs and dvc.yaml never move. Another experiment writes beside it: experiments/<name>/runs|results|logs and
reports/<name>/tables|figures. data/ and features/ are shared by every experiment (keyed by dataset and
backbone), so an experiment must not change the `data` or `features` sections (`shared_sections_problem`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from fga.tracking import DEFAULT_EXPERIMENT, experiment_of

EXPERIMENTS_DIR = "experiments"
REPORTS_DIR = "reports"
# report dirs at these values follow the experiment; any other value is the user's choice and is kept as is
DEFAULT_REPORT_DIRS = {"tables_dir": f"{REPORTS_DIR}/tables", "figures_dir": f"{REPORTS_DIR}/figures"}
# the params that make the shared data/ and features/ files (the distractor seed makes data/synthetic_distract<n>/)
SHARED_SECTIONS = ("data", "features", "robustness.distractor_seed")


class OutputRoots(NamedTuple):
    """The directories one experiment's stages write to (relative to the project root)."""

    runs: str  # checkpoints: <runs>/<dataset>/<backbone>/<text encoder>/<method>/seed<seed>/ (fga.grid.run_path)
    results: str  # metrics, ranks, robustness: same layout under <results>/
    logs: str  # the Snakemake jobs' logs
    benchmarks: str  # the Snakemake jobs' benchmark files
    tables: str  # report tables
    figures: str  # report figures


def _report_dir(cfg: dict[str, Any], key: str, experiment: str) -> str:
    configured = str(cfg.get("report", {}).get(key, DEFAULT_REPORT_DIRS[key]))
    if experiment == DEFAULT_EXPERIMENT or configured != DEFAULT_REPORT_DIRS[key]:
        return configured
    return f"{REPORTS_DIR}/{experiment}/{Path(configured).name}"


def output_roots(cfg: dict[str, Any]) -> OutputRoots:
    """The output roots of the params' experiment (the default one: exactly the historical paths)."""
    experiment = experiment_of(cfg)
    prefix = "" if experiment == DEFAULT_EXPERIMENT else f"{EXPERIMENTS_DIR}/{experiment}/"
    return OutputRoots(runs=f"{prefix}runs", results=f"{prefix}results", logs=f"{prefix}logs",
                       benchmarks=f"{prefix}benchmarks/logs", tables=_report_dir(cfg, "tables_dir", experiment),
                       figures=_report_dir(cfg, "figures_dir", experiment))


def _at(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def shared_sections_problem(cfg: dict[str, Any], base: dict[str, Any], source: str) -> str | None:
    """Why `cfg` (a non-default experiment) may not run over `base` (the params file it overlays): it changes a
    section whose outputs every experiment shares; None when it may."""
    if experiment_of(cfg) == DEFAULT_EXPERIMENT:
        return None
    changed = [s for s in SHARED_SECTIONS if _at(cfg, s) != _at(base, s)]
    if not changed:
        return None
    return (f"experiment {experiment_of(cfg)!r} changes `{'`, `'.join(changed)}` of {source}, whose outputs "
            f"(data/, features/) every experiment shares; change them in {source} itself, or run the experiment in "
            "a separate project copy")


def compare_dir(cfg: dict[str, Any]) -> Path:
    """Where `fga report --compare` writes: `compare/` beside the configured tables dir (reports/compare/)."""
    return Path(str(cfg.get("report", {}).get("tables_dir", DEFAULT_REPORT_DIRS["tables_dir"]))).parent / "compare"
