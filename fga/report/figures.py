"""The report's seaborn figures (PNG and PDF, reproducible bytes): recall vs clutter and vs distractors, the seed
spread of rSum, and GRM's region-word heat maps from the evaluate runs' attention artifacts. When the runs hold more
than one text encoder, a method's series is "<method> + <text encoder>" (fga.report.runs.series_label), so encoders
are drawn apart, never pooled; with one, the figures name methods alone."""
from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from fga.io import atomic_path
from fga.models.registry import arch_name
from fga.report.notes import say
from fga.report.runs import RUN_KEYS, attention_artifacts, attention_maps, bin_order, series_label


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


@contextlib.contextmanager
def _seeded_global_rng(seed: int = 0) -> Iterator[None]:
    """numpy's global RNG seeded within the block, restored after: seaborn's strip-plot jitter draws from it, and an
    unseeded jitter made every rerun's seed-spread figure differ."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _method_lines(sns, data: pd.DataFrame, x: str, y: str, ax, legend: bool) -> None:
    """One line per method (the caller's series_label), mean over seeds with a seeded 95% bootstrap band."""
    sns.lineplot(data=data, x=x, y=y, hue="method", style="method", markers=True, dashes=False,
                 errorbar=("ci", 95), n_boot=1000, seed=0, ax=ax, legend=legend)


def _legend_outside(sns, axes) -> None:
    if axes[0][-1].get_legend():
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1), title="method")


def clutter_figure(clutter: pd.DataFrame, figures: Path) -> list[str]:
    """rSum (and R@1 both ways) vs clutter bin, one line per method, 95% CI band over seeds; one column per backbone."""
    plt, sns = _plt()
    ranged = clutter[clutter["bin"].map(lambda b: bin_order(b)[0] == 0)].copy()
    if ranged.empty:
        return []
    ranged["method"] = series_label(ranged)
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
    _legend_outside(sns, axes)
    fig.suptitle("Recall vs clutter (mean over seeds, 95% CI band)")
    return _save(fig, figures, "clutter_recall")


def distractor_figure(distract: pd.DataFrame, figures: Path) -> list[str]:
    """rSum vs added distractor objects, one line per method, 95% CI band over seeds; one panel per backbone."""
    plt, sns = _plt()
    data = distract.assign(method=series_label(distract))
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
    _legend_outside(sns, axes)
    fig.suptitle("Recall vs added distractors (mean over seeds, 95% CI band)")
    return _save(fig, figures, "distractor_recall")


def seed_spread_figure(runs: pd.DataFrame, figures: Path) -> list[str]:
    """rSum of every seed per method (per method + text encoder when there are several): box plot with the seeds as
    points; one panel per dataset/protocol/backbone."""
    plt, sns = _plt()
    data = runs.assign(method=series_label(runs))  # "grm + minilm" when text encoders differ
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
        with _seeded_global_rng():
            sns.stripplot(data=sub, x="method", y="rsum", order=order, hue="method", palette="deep", size=6,
                          jitter=0.15, legend=False, ax=ax)
        ax.set_title(panel)
        ax.set_xlabel("")
        ax.set_ylabel("rSum (one point per seed)")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Seed spread of rSum")
    return _save(fig, figures, "seed_spread")


def _readable_maps(cfg: dict[str, Any], run_id: str, tmp_dir: Path, quiet: bool) -> Iterator[tuple[str, list[Any]]]:
    """(artifact path, maps) of each attention artifact of the run; one that cannot be read is noted and skipped."""
    for path in attention_artifacts(cfg, run_id):
        try:
            yield path, attention_maps(cfg, run_id, path, tmp_dir)
        except (OSError, ValueError, TypeError) as exc:
            say(f"report: {run_id}:{path} is not a region-word attention file ({exc}); skipped", quiet)


def _heat_map(plt, sns, item: dict[str, Any], att: pd.DataFrame, title: str):
    """One map as a word x region heat map (the figure)."""
    fig, ax = plt.subplots(figsize=(0.45 * att.shape[1] + 2.5, 0.35 * att.shape[0] + 1.5))
    label = "attention" if item.get("temperature") is None else f"attention (softmax, T={item['temperature']})"
    sns.heatmap(att, cmap="viridis", ax=ax, cbar_kws={"label": label})
    ax.set_xlabel("region / prompt")
    ax.set_ylabel("word")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    ax.tick_params(axis="y", rotation=0)
    image = f", image {item['image_id']}" if item.get("image_id") is not None else ""
    ax.set_title(title + image + (f"\n{item['caption']}" if item.get("caption") else ""), fontsize=8)
    return fig


def attention_figures(cfg: dict[str, Any], runs: pd.DataFrame, figures: Path, quiet: bool, limit: int = 4) -> list[str]:
    """Region-word heat maps from GRM evaluate runs that saved them: the ``maps`` list of their ``attention.json``
    artifact (fga.evaluate.attention), each map ``{"words": [...], "attention": [[word x region]], "regions"?: [...],
    "caption"?: str, "image_id"?: int}``; at most `limit` maps of the lowest seed of each GRM-arch method, backbone and
    text encoder."""
    grm = runs[runs["method"].map(lambda m: arch_name(cfg, m) == "grm")]
    if grm.empty:
        say("report: no GRM evaluate runs; region-word heat maps skipped", quiet)
        return []
    plt, sns = _plt()
    names: list[str] = []
    tmp_dir = figures.parent / f".{figures.name}.artifacts"
    texts = grm["text"].nunique() > 1  # name the encoder only when the runs have several (else: names as before)
    for (dataset, backbone, text, method), cell in grm.groupby(RUN_KEYS, sort=True):
        model = f"{backbone}/{text}" if texts else backbone
        run = cell.sort_values("seed").iloc[0]
        k = 0
        for path, maps in _readable_maps(cfg, run["run_id"], tmp_dir, quiet):
            for j, item in enumerate(maps):
                if k >= limit:
                    break
                try:
                    att = pd.DataFrame(item["attention"], index=item["words"],
                                       columns=item.get("regions") or [f"r{i}" for i in range(len(item["attention"][0]))])
                except (KeyError, ValueError, IndexError, TypeError, AttributeError) as exc:
                    say(f"report: {run['run_id']}:{path} map {j} is not a region-word map ({exc}); skipped", quiet)
                    continue
                fig = _heat_map(plt, sns, item, att, f"{method} on {dataset}/{model}, seed {run['seed']}")
                names += _save(fig, figures, f"attention_{dataset}_{model.replace('/', '_')}_{method}_{k}")
                k += 1
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if not names:
        say("report: the GRM evaluate runs saved no region-word attention maps; heat maps skipped", quiet)
    return names
