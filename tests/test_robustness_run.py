"""`fga robustness` on the tiny real pipeline of tests/test_evaluate_run.py: clutter bins, the
cluttered subset, distractor features and curve, MLflow keys."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fga.data.synthetic import clutter_counts
from fga.errors import UserError
from fga.evaluate.recall import metrics_from_ranks, query_ranks
from fga.evaluate.robustness_run import (bin_spec, distractor_cfg, distractor_name, make_distractor_features,
                                         mlflow_metrics, robustness, settings)
from fga.evaluate.run import evaluate
from fga.evaluate.stats import bootstrap_ci, bootstrap_options
from fga.features.store import feature_hash
from fga.inputs import store_rows

from test_evaluate_run import BK, DS, METHOD, SEED, in_project, project, run_path  # noqa: F401  (fixtures)

LEVELS = [0, 2, 4]


@pytest.fixture(scope="module")
def with_distractors(project):  # noqa: F811
    root, cfg = project
    import os

    old = os.getcwd()
    os.chdir(root)
    try:
        from fga.cli import main

        for n in LEVELS:
            assert main(["robustness", "distractors", "--n", str(n), "--backbone", BK, "--quiet"]) == 0
    finally:
        os.chdir(old)
    return root, cfg


def test_distractor_sets_and_features(with_distractors, monkeypatch):
    root, cfg = with_distractors
    monkeypatch.chdir(root)
    base = clutter_counts(root / "data" / DS / "instances.json")
    test_ids = [im["id"] for im in json.loads((root / "data" / DS / "dataset.json").read_text())["images"]
                if im["split"] == "test"]
    orig, orig_mask, ids0, _ = store_rows(root / "features" / DS / BK / "test.h5", feature_hash(cfg, DS, BK))
    for n in LEVELS:
        name = distractor_name(n)
        counts = clutter_counts(root / "data" / name / "instances.json")
        assert sorted(counts) == sorted(test_ids) and all(counts[i] == base[i] + n for i in test_ids)
        path = root / "features" / name / BK / "test.h5"
        regions, mask, ids, attrs = store_rows(path, feature_hash(distractor_cfg(cfg, n), name, BK))
        assert ids == test_ids and attrs["dataset"] == name
        if n == 0:  # re-rendering without distractors reproduces the test images (pixel-exact; CNN to ~1e-5)
            assert np.allclose(regions.numpy(), orig.numpy(), atol=1e-4) and np.array_equal(mask.numpy(), orig_mask.numpy())
        else:
            assert not np.array_equal(regions.numpy(), orig.numpy())
    # the hash is tied to the level: level 2's store is stale for level 4's params
    with pytest.raises(UserError, match="other feature params"):
        store_rows(root / "features" / distractor_name(2) / BK / "test.h5",
                   feature_hash(distractor_cfg(cfg, 4), distractor_name(2), BK))
    # idempotent: a second call reuses data and features
    mtime = (root / "features" / distractor_name(2) / BK / "test.h5").stat().st_mtime_ns
    make_distractor_features(cfg, 2, BK)
    assert (root / "features" / distractor_name(2) / BK / "test.h5").stat().st_mtime_ns == mtime


def test_bins_cluttered_and_curve(with_distractors, monkeypatch):
    root, cfg = with_distractors
    monkeypatch.chdir(root)
    ckpt = run_path(root, "runs") / "checkpoint.safetensors"
    res = robustness(cfg, DS, BK, METHOD, SEED, ckpt, quiet=True)
    assert res["protocol"] == "full" and res["n_images"] == 12
    assert sum(b["n_images"] for b in res["bins"].values()) == 12 and res["n_unbinned"] == 0
    assert len(res["bins"]) == 3
    # per-bin recall = that bin's queries ranked against the FULL gallery
    m = evaluate(cfg, DS, BK, METHOD, SEED, ckpt, quiet=True, out_dir=root / "tmp_eval")
    sim = np.load(root / "tmp_eval" / "sim_test.npy")
    i2t, t2i = query_ranks(sim, 5)
    counts = clutter_counts(root / "data" / DS / "instances.json")
    with np.load(root / "tmp_eval" / "ranks.npz") as z:
        ids = list(z["image_ids"])
    cvec = np.array([counts[i] for i in ids])
    for label, row in res["bins"].items():
        sel = (cvec >= row["lo"]) & (True if row["hi"] is None else cvec <= row["hi"])
        assert row["n_images"] == sel.sum() and row["n_queries_t2i"] == 5 * sel.sum()
        ref = metrics_from_ranks(i2t[sel], t2i[np.repeat(sel, 5)])
        assert row["i2t"] == ref["i2t"] and row["t2i"] == ref["t2i"], label
    lo = res["cluttered"]["lo"]
    assert res["cluttered"]["n_images"] == (cvec >= lo).sum() > 0
    assert res["overall"]["rsum"] == m["rsum"]
    # the distractor curve: level 0 (the test set itself, from the clutter bins' matrix), then one entry per level
    assert [r["n_extra"] for r in res["distractors"]] == LEVELS
    assert res["distractors"][0]["i2t"] == m["i2t"] and res["distractors"][0]["t2i"] == m["t2i"]
    # every recall block carries the evaluate stage's bootstrap CI, resampling that block's own images
    opts = bootstrap_options(cfg)
    assert res["overall"]["ci"] == m["ci"]  # the same ranks and options as metrics.json
    for label, row in res["bins"].items():
        sel = (cvec >= row["lo"]) & (True if row["hi"] is None else cvec <= row["hi"])
        assert row["ci"] == bootstrap_ci(i2t[sel], t2i[np.repeat(sel, 5)], 5, **opts), label
        assert row["ci"]["rsum"][0] <= row["rsum"] <= row["ci"]["rsum"][1]
    assert res["cluttered"]["ci"] == bootstrap_ci(i2t[cvec >= lo], t2i[np.repeat(cvec >= lo, 5)], 5, **opts)
    assert res["distractors"][0]["ci"] == m["ci"]
    for row in res["distractors"][1:]:
        assert row["ci"]["n_resamples"] == opts["n_resamples"] and row["ci"]["rsum"][0] <= row["rsum"] <= row["ci"]["rsum"][1]
    flat = mlflow_metrics(res)
    assert all(k.startswith(("full/clutter/", "full/distractors/")) for k in flat)
    for label in res["bins"]:
        safe = label.replace("+", "plus")
        assert f"full/clutter/{safe}/n_images" in flat and f"full/clutter/{safe}/rsum" in flat
        assert flat[f"full/clutter/{safe}/ci/rsum_lo"] == res["bins"][label]["ci"]["rsum"][0]
    assert "full/clutter/cluttered/i2t_R1" in flat and "full/clutter/all/rsum" in flat
    assert flat["full/clutter/cluttered/ci/t2i_R5_hi"] == res["cluttered"]["ci"]["t2i"]["R@5"][1]
    for n in LEVELS:
        assert f"full/distractors/{n}/t2i_R10" in flat and f"full/distractors/{n}/rsum" in flat
        assert f"full/distractors/{n}/ci/rsum_hi" in flat
    assert all(set(k) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/ ") for k in flat)


def test_every_level_ranks_with_the_tie_rule_resolved_once(with_distractors, monkeypatch):
    """evaluate.tie_rule is read once per robustness run and handed to every distractor level."""
    import fga.evaluate.robustness_run as stage

    root, cfg = with_distractors
    monkeypatch.chdir(root)
    resolved, ranked_with = [], []
    monkeypatch.setattr(stage, "tie_rule_of", lambda ec, real=stage.tie_rule_of: resolved.append(1) or real(ec))
    monkeypatch.setattr(stage, "query_ranks",
                        lambda sim, cpi, ties, real=stage.query_ranks: ranked_with.append(ties) or real(sim, cpi, ties))
    optimistic = {**cfg, "evaluate": {**cfg["evaluate"], "tie_rule": "optimistic"}}
    res = robustness(optimistic, DS, BK, METHOD, SEED, run_path(root, "runs") / "checkpoint.safetensors", quiet=True)
    assert res["ties"] == "optimistic" and [r["n_extra"] for r in res["distractors"]] == LEVELS
    assert len(resolved) == 1
    assert ranked_with == ["optimistic"] * len(LEVELS)  # the test set (level 0 too), then each re-rendered level


def test_saved_matrix_is_reused(with_distractors, monkeypatch):
    root, cfg = with_distractors
    monkeypatch.chdir(root)
    ckpt = run_path(root, "runs") / "checkpoint.safetensors"
    out = root / "reuse"
    m = evaluate(cfg, DS, BK, METHOD, SEED, ckpt, quiet=True, out_dir=out)
    (out / "metrics.json").write_text(json.dumps(m))
    res = robustness({**cfg, "robustness": {**cfg["robustness"], "distractors": []}}, DS, BK, METHOD, SEED, ckpt,
                     quiet=True, results_dir=out)
    assert res["matrix_reused"] and res["overall"]["rsum"] == m["rsum"]
    # with no re-rendered levels the curve is level 0 alone: the test set, from the same (reused) matrix
    assert [r["n_extra"] for r in res["distractors"]] == [0] and res["distractors"][0]["rsum"] == m["rsum"]
    # a matrix of another checkpoint is not reused
    m["matrix"]["checkpoint"] = "0" * 16
    (out / "metrics.json").write_text(json.dumps(m))
    res = robustness({**cfg, "robustness": {**cfg["robustness"], "distractors": []}}, DS, BK, METHOD, SEED, ckpt,
                     quiet=True, results_dir=out)
    assert not res["matrix_reused"]


def test_bin_specs_and_settings():
    rc = settings({"robustness": {"distractors": [2, 4]}})
    assert rc["bins"] == {"equal_count": 3} and rc["distractors"] == [2, 4]
    assert bin_spec(rc, "coco") == [[1, 3], [4, 7], [8, 15], [16, None]]
    assert bin_spec(rc, "coco_precomp") == [[1, 3], [4, 7], [8, 15], [16, None]]
    assert bin_spec(rc, "synthetic") == {"equal_count": 3}
    with pytest.raises(UserError):
        settings({"robustness": {"distractors": [2, 2]}})
    with pytest.raises(UserError, match="level 0, the test set, is always in the curve"):
        settings({"robustness": {"distractors": [0, 2]}})


def test_cli_robustness_logs_bins_and_levels(with_distractors, monkeypatch):
    import mlflow

    from fga.cli import main

    root, _ = with_distractors
    monkeypatch.chdir(root)
    assert main(["robustness", "--dataset", DS, "--backbone", BK, "--method", METHOD, "--seed", str(SEED),
                 "--quiet"]) == 0
    res = json.loads((run_path(root, "results") / "robustness.json").read_text())
    assert set(res) >= {"bins", "cluttered", "distractors", "protocol"}
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=[f"fga-{DS}"], filter_string="tags.stage = 'robustness'")
    assert len(runs) == 1 and runs.iloc[0]["tags.protocol"] == "full"
    keys = [c[len("metrics."):] for c in runs.columns if c.startswith("metrics.")]
    assert keys and all(k.startswith(("full/clutter/", "full/distractors/")) for k in keys)
    assert runs.iloc[0]["metrics.full/distractors/4/rsum"] == pytest.approx(res["distractors"][-1]["rsum"])
    assert runs.iloc[0]["metrics.full/clutter/all/ci/rsum_lo"] == pytest.approx(res["overall"]["ci"]["rsum"][0])
    assert main(["robustness", "--dataset", DS, "--quiet"]) == 2  # missing --backbone etc.: one-line error


def test_equal_count_falls_back_to_the_distinct_levels(with_distractors, monkeypatch):
    root, cfg = with_distractors
    monkeypatch.chdir(root)
    rc = {**cfg["robustness"], "bins": {"equal_count": 50}, "distractors": []}
    res = robustness({**cfg, "robustness": rc}, DS, BK, METHOD, SEED, run_path(root, "runs") / "checkpoint.safetensors",
                     quiet=True)
    distinct = len(set(clutter_counts(root / "data" / DS / "instances.json")[i] for i in
                       [im["id"] for im in json.loads((root / "data" / DS / "dataset.json").read_text())["images"]
                        if im["split"] == "test"]))
    assert res["bin_spec"] == {"equal_count": distinct} and res["bin_spec_requested"] == {"equal_count": 50}
    assert len(res["bins"]) == distinct and sum(b["n_images"] for b in res["bins"].values()) == 12


def test_no_instances_means_no_clutter_bins(with_distractors, monkeypatch):
    """Precomputed features or Flickr30K without Entities: instances.json holds no boxes, so no bins."""
    root, cfg = with_distractors
    monkeypatch.chdir(root)
    path = root / "data" / DS / "instances.json"
    original = path.read_text()
    path.write_text(json.dumps({**json.loads(original), "annotations": []}))
    try:
        rc = {**cfg["robustness"], "distractors": []}
        res = robustness({**cfg, "robustness": rc}, DS, BK, METHOD, SEED, run_path(root, "runs") / "checkpoint.safetensors",
                         quiet=True)
    finally:
        path.write_text(original)
    assert res["bins"] == {} and res["cluttered"] is None and res["bin_spec"] is None
    assert "no instances" in res["clutter_note"] and res["n_unbinned"] == res["n_images"] == 12
    flat = mlflow_metrics(res)
    assert "full/clutter/all/rsum" in flat and not any("cluttered" in k for k in flat)
