"""End to end on a real dataset's layout: SCAN's precomputed f30k_precomp, downloaded from the loopback server,
through the real Snakefile (prepare -> features -> train -> evaluate -> robustness -> report)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import BIN, tiny_params
from test_workflow import run, tiny_project

try:
    from fixtures_data import PRECOMP_SPLITS, base_cfg, precomp_files, serve_set, server  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.fixtures_data import PRECOMP_SPLITS, base_cfg, precomp_files, serve_set, server  # noqa: F401

pytestmark = pytest.mark.e2e

DATASET, BACKBONE, METHOD = "f30k_precomp", "butd", "vse_inf"


def prepared_params(project: Path, data_cfg: dict) -> Path:
    """Point test_workflow's tiny project at one real-format dataset: one backbone, method and seed, no ablation."""
    n_train = PRECOMP_SPLITS[DATASET]["train"]
    return tiny_params(project, {
        "grid.datasets": [DATASET],
        "grid.backbones": [BACKBONE],
        "grid.methods": [METHOD],
        "grid.seeds": [0],
        "grid.ablation": {"backbones": [], "methods": []},
        f"data.{DATASET}": data_cfg,
        "train.epochs": 1,
        "train.batch_size": n_train,  # the fixture's whole train split in one batch
        "features.batch_size": 2,
        "evaluate.bootstrap.n_resamples": 50,  # CIs of a 2-image test set mean nothing: keep them cheap
    })


def test_prepared_dataset_runs_through_the_snakefile(tmp_path, server, precomp_files):
    # the download path, not `root`: data.zip comes over HTTP from 127.0.0.1, checksum pinned to the fixture's
    data_cfg = base_cfg(tmp_path, **serve_set(server, precomp_files))
    project = prepared_params(tiny_project(tmp_path), data_cfg)
    started = time.monotonic()
    run([str(BIN / "snakemake"), "--cores", "2"], project)
    elapsed = time.monotonic() - started
    assert server.count("data.zip") == 1

    data = json.loads((project / f"data/{DATASET}/dataset.json").read_text())
    n_test = PRECOMP_SPLITS[DATASET]["test"]
    assert sum(im["split"] == "test" for im in data["images"]) == n_test
    assert (project / f"features/{DATASET}/{BACKBONE}/test.h5").exists()

    run_dir = project / f"results/{DATASET}/{BACKBONE}/bigru/{METHOD}/seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recalls = [metrics[d][f"R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert all(math.isfinite(r) and 0 <= r <= 100 for r in recalls), metrics
    assert math.isfinite(metrics["rsum"]) and metrics["rsum"] == pytest.approx(sum(recalls), abs=1e-3)
    # the grid's last stage also ran on a dataset with no boxes: recall overall, no clutter bins
    robustness = json.loads((run_dir / "robustness.json").read_text())
    assert robustness["bins"] == {} and "no instances" in robustness["clutter_note"]

    table = pd.read_csv(project / "reports/tables/main.csv")
    row = table[(table["dataset"] == DATASET) & (table["backbone"] == BACKBONE) & (table["method"] == METHOD)]
    assert len(row) == 1 and (row["seeds"] == 1).all()
    assert row["rsum_mean"].iloc[0] == pytest.approx(metrics["rsum"], abs=1e-3)
    print(f"snakemake on {DATASET}: {elapsed:.1f} s")
