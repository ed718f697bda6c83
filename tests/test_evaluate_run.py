"""`fga evaluate` on a tiny real pipeline: synthetic scenes -> CNN features -> 1 epoch of GRM -> metrics.

The project (module-scoped, in a temp dir) is real end to end: `fga.data.synthetic.generate`,
`fga.features.extract.extract` with a random-init `test_efficientnet`, `fga.train.train`; the
robustness tests (tests/test_robustness_run.py) reuse it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from fga.errors import UserError
from fga.evaluate.recall import metrics_from_ranks, query_ranks
from fga.evaluate.run import MLFLOW_NAMES, evaluate, mlflow_metrics, protocols, read_ranks, settings

DS, BK, METHOD, SEED = "synthetic", "tiny_grid", "grm", 0


def tiny_cfg() -> dict:
    return {
        "grid": {"datasets": [DS], "backbones": [BK], "methods": [METHOD], "seeds": [SEED]},
        "data": {DS: {"seed": 0, "n_train": 24, "n_val": 6, "n_test": 12, "image_size": 64, "min_objects": 1,
                      "max_objects": 4}},
        "features": {"batch_size": 16, "num_workers": 0, "text": {"min_count": 1, "max_words": 90},
                     "backbones": {BK: {"model": "test_efficientnet", "weights": "random", "checkpoint": None,
                                        "input_size": 64, "regions": "grid", "grid_size": 2}}},
        "train": {"epochs": 1, "batch_size": 12, "lr": 2e-3, "weight_decay": 1e-4, "lr_milestones": [1],
                  "lr_gamma": 0.3, "grad_clip": 2.0, "device": "cpu", "amp": False, "threads": 1,
                  "mode": "frozen_features", "token_perturb": 0.0},
        "methods": {METHOD: {"embed_dim": 16, "word_dim": 8, "num_prompts": 2}},
        "evaluate": {"split": "test", "protocol": "full", "memory_budget_mb": 64, "block_images": None,
                     "block_captions": None, "save_matrix": "float32",
                     "bootstrap": {"n_resamples": 200, "confidence": 0.95, "seed": 0},
                     "qbnorm": {"enabled": True, "bank_size": {"images": 10, "captions": 40}, "beta": 20.0, "k": 1,
                                "mode": "dis", "seed": 0}},
        "robustness": {"bins": {"equal_count": 3}, "cluttered_quantile": 0.6667, "distractors": [2, 4],
                       "distractor_seed": 0},
        "tracking": {"uri": "sqlite:///mlruns.db", "artifact_root": "mlartifacts"},
        "report": {"tables_dir": "reports/tables", "figures_dir": "reports/figures"},
    }


def build_project(root: Path) -> dict:
    """data, vocabulary, features of every split and one trained checkpoint under `root` (the cwd)."""
    from fga.data.synthetic import generate
    from fga.features.extract import extract
    from fga.features.text import build_vocab_file
    from fga.train import train

    cfg = tiny_cfg()
    # absolute: MLflow caches its sqlite store per URI in-process, so two projects must not share "mlruns.db"
    cfg["tracking"]["uri"] = f"sqlite:///{root / 'mlruns.db'}"
    generate(root / "data" / DS, progress=False, **cfg["data"][DS])
    build_vocab_file(root / "data" / DS / "dataset.json", root / "features" / DS / "text_bigru" / "vocab.json", 1)
    extract(cfg, DS, BK, root / "data" / DS, root / "features" / DS / BK, quiet=True)
    train(cfg, DS, BK, METHOD, SEED, run_path(root, "runs"), quiet=True)
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def run_path(root: Path, kind: str) -> Path:
    return root / kind / DS / BK / "bigru" / METHOD / f"seed{SEED}"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalproj")
    old = os.getcwd()
    os.chdir(root)
    try:
        cfg = build_project(root)
        yield root, cfg
    finally:
        os.chdir(old)


@pytest.fixture
def in_project(project, monkeypatch):
    root, cfg = project
    monkeypatch.chdir(root)
    return root, cfg


def test_metrics_have_cis_qbnorm_and_consistent_ranks(in_project):
    root, cfg = in_project
    out = run_path(root, "results")
    m = evaluate(cfg, DS, BK, METHOD, SEED, run_path(root, "runs") / "checkpoint.safetensors", quiet=True, out_dir=out)
    assert m["protocol"] == "full" and list(m["protocols"]) == ["full"] and m["n_images"] == 12
    # CIs contain their point estimates
    for d in ("i2t", "t2i"):
        for k in ("R@1", "R@5", "R@10"):
            lo, hi = m["ci"][d][k]
            assert lo <= m[d][k] <= hi, (d, k, lo, hi, m[d][k])
    assert m["ci"]["rsum"][0] <= m["rsum"] <= m["ci"]["rsum"][1]
    assert m["ci"]["n_resamples"] == 200
    # QB-Norm column: same recall dict, from a bank of TRAIN queries
    assert set(m["qbnorm"]) >= {"i2t", "t2i", "rsum"} and set(m["qbnorm"]["i2t"]) >= {"R@1", "R@5", "R@10"}
    assert m["qbnorm_bank"] == {"split": "train", "n_images": 10, "n_captions": 40, "beta": 20.0, "k": 1,
                                "mode": "dis", "seed": 0}
    # ranks.npz reproduces the recalls
    i2t, t2i, cpi = read_ranks(out / "ranks.npz")
    assert cpi == 5 and i2t.shape == (12,) and t2i.shape == (60,)
    again = metrics_from_ranks(i2t, t2i)
    assert again["i2t"] == m["i2t"] and again["t2i"] == m["t2i"] and again["rsum"] == m["rsum"]
    q_i2t, q_t2i, _ = read_ranks(out / "ranks.npz", "qbnorm_full")
    assert metrics_from_ranks(q_i2t, q_t2i)["rsum"] == m["qbnorm"]["rsum"]
    with np.load(out / "ranks.npz") as z:
        assert list(z["image_ids"]) == [im["id"] for im in json.loads((root / "data" / DS / "dataset.json").read_text())
                                        ["images"] if im["split"] == "test"]
    # the saved matrix gives the same ranks
    sim = np.load(out / "sim_test.npy")
    assert sim.shape == (12, 60) and sim.dtype == np.float32 and m["matrix"]["file"] == "sim_test.npy"
    r_i2t, r_t2i = query_ranks(sim, 5)
    assert np.array_equal(r_i2t, i2t) and np.array_equal(r_t2i, t2i)
    # deterministic: same config, same numbers
    m2 = evaluate(cfg, DS, BK, METHOD, SEED, run_path(root, "runs") / "checkpoint.safetensors", quiet=True)
    assert m2["ci"] == m["ci"] and m2["qbnorm"] == m["qbnorm"] and "matrix" not in m2


def test_block_sizes_do_not_change_the_numbers(in_project):
    root, cfg = in_project
    ckpt = run_path(root, "runs") / "checkpoint.safetensors"
    base = evaluate(cfg, DS, BK, METHOD, SEED, ckpt, quiet=True)
    small = {**cfg, "evaluate": {**cfg["evaluate"], "block_images": 5, "block_captions": 7}}
    other = evaluate(small, DS, BK, METHOD, SEED, ckpt, quiet=True)
    assert other["similarity"]["block_images"] == 5 and other["similarity"]["block_captions"] == 7
    for key in ("i2t", "t2i", "rsum", "ci", "qbnorm"):
        assert other[key] == base[key], key


def test_mlflow_contract_keys(in_project):
    root, cfg = in_project
    m = evaluate(cfg, DS, BK, METHOD, SEED, run_path(root, "runs") / "checkpoint.safetensors", quiet=True)
    flat = mlflow_metrics(m)
    for name in MLFLOW_NAMES:
        assert flat[f"full/{name}"] == pytest.approx(m["rsum"] if name == "rsum" else
                                                      m[name[:3]]["R@" + name[5:]])
        assert f"full/ci/{name}_lo" in flat and f"full/ci/{name}_hi" in flat
        assert flat[f"full/ci/{name}_lo"] <= flat[f"full/{name}"] <= flat[f"full/ci/{name}_hi"]
        assert f"qbnorm/full/{name}" in flat
    assert all(k.split("/")[0] in ("full", "qbnorm", "diag", "positives", "binding") for k in flat)
    # GRM's module diagnostics: in metrics.json and as diag/<name>
    assert m["diagnostics"] and all(flat[f"diag/{k}"] == pytest.approx(v) for k, v in m["diagnostics"].items())


def test_grm_evaluation_carries_its_module_diagnostics(in_project):
    from fga.evaluate.run import DIAGNOSTIC_IMAGES, LoadedRun, load_run
    from fga.models.grm.diagnostics import grm_diagnostics

    root, cfg = in_project
    ckpt = run_path(root, "runs") / "checkpoint.safetensors"
    m = evaluate(cfg, DS, BK, METHOD, SEED, ckpt, quiet=True)
    run: LoadedRun = load_run(cfg, DS, BK, METHOD, SEED, ckpt, "test")
    d = run.data
    want = grm_diagnostics(run.model, d.regions, d.mask, d.tokens, d.lengths, 5, max_images=DIAGNOSTIC_IMAGES)
    assert m["diagnostics"] == {k.removeprefix("grm/"): v for k, v in want.items()}
    for name in ("prompt_entropy", "region_cos", "keep_visual", "sigma_mean", "unc_i2t_R1_eval", "unc_i2t_R1_train"):
        assert name in m["diagnostics"], name
    # the diagnostics' train-mode pass draws its own noise: the scores are those of a run without it
    again = evaluate(cfg, DS, BK, METHOD, SEED, ckpt, quiet=True)
    assert again["rsum"] == m["rsum"] and again["diagnostics"] == m["diagnostics"]


def test_non_grm_evaluation_has_no_diagnostics():
    from fga.evaluate.run import LoadedRun, module_diagnostics
    from fga.models.vse import VSEMean

    model = VSEMean(8, 10, embed_dim=4, word_dim=4)
    assert module_diagnostics(LoadedRun({}, None, None, model)) is None
    assert not any(k.startswith("diag/") for k in mlflow_metrics({"protocols": {}}))


def test_protocol_list_and_qbnorm_off(in_project):
    root, cfg = in_project
    ec = {**cfg["evaluate"], "protocol": ["full", "full"], "qbnorm": {"enabled": False}}
    assert protocols(settings({"evaluate": ec})) == ["full"]
    m = evaluate({**cfg, "evaluate": ec}, DS, BK, METHOD, SEED, run_path(root, "runs") / "checkpoint.safetensors", quiet=True)
    assert m["qbnorm_bank"] is None and "qbnorm" not in m
    assert not any(k.startswith("qbnorm/") for k in mlflow_metrics(m))
    with pytest.raises(UserError, match="coco5k"):  # COCO protocols need the 5,000-image test split
        evaluate({**cfg, "evaluate": {**ec, "protocol": ["full", "coco5k"]}}, DS, BK, METHOD, SEED,
                 run_path(root, "runs") / "checkpoint.safetensors", quiet=True)


def test_coco_protocols_on_a_5000_image_matrix():
    """coco1k ranks are within-fold ranks whose recalls equal the 5-fold means; QB-Norm per fold."""
    from fga.evaluate.recall import evaluate_protocol
    from fga.evaluate.run import protocol_ranks, qbnorm_protocol

    rng = np.random.default_rng(0)
    n, cpi = 5000, 5
    emb_i = rng.standard_normal((n, 8)).astype(np.float32)
    emb_t = (np.repeat(emb_i, cpi, axis=0) + 1.5 * rng.standard_normal((n * cpi, 8))).astype(np.float32)
    sim = (emb_i @ emb_t.T).astype(np.float16)  # 5000 x 25000: half the memory
    for p in ("coco1k", "coco5k"):
        i2t, t2i = protocol_ranks(sim, p, cpi)
        ref = evaluate_protocol(sim, p, cpi)
        got = metrics_from_ranks(i2t, t2i)
        for d in ("i2t", "t2i"):
            for k in ("R@1", "R@5", "R@10"):
                assert got[d][k] == pytest.approx(ref[d][k], abs=1e-3)
    assert protocol_ranks(sim, "coco1k", cpi)[0].max() <= 1000 * cpi
    bank_t = rng.standard_normal((50, 8)).astype(np.float32) @ emb_i.T
    bank_i = rng.standard_normal((20, 8)).astype(np.float32) @ emb_t.T
    qb = {"beta": 20.0, "k": 1, "mode": "dis"}
    m1k, (q_i2t, q_t2i) = qbnorm_protocol(sim, bank_t, bank_i, "coco1k", cpi, qb)
    assert q_i2t.shape == (n,) and q_t2i.shape == (n * cpi,) and len(m1k["i2t"]) == 5


def test_cli_evaluate_writes_outputs_and_logs_the_contract(in_project):
    import mlflow

    from fga.cli import main

    root, _ = in_project
    assert main(["evaluate", "--dataset", DS, "--backbone", BK, "--method", METHOD, "--seed", str(SEED), "--quiet",
                 "--set", "evaluate.save_matrix=none"]) == 0
    out = run_path(root, "results")
    m = json.loads((out / "metrics.json").read_text())
    assert "ci" in m and "qbnorm" in m and (out / "ranks.npz").exists()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=[f"fga-{DS}"], filter_string="tags.stage = 'evaluate'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.protocol"] == "full" and run["tags.split"] == "test" and run["tags.weights_source"]
    keys = [c[len("metrics."):] for c in runs.columns if c.startswith("metrics.") and not pd_isna(run[c])]
    assert keys and all(k.startswith(("full/", "qbnorm/full/", "diag/", "positives/", "binding/")) for k in keys)
    assert run["metrics.diag/region_cos"] == pytest.approx(m["diagnostics"]["region_cos"])
    assert run["metrics.full/rsum"] == pytest.approx(m["rsum"])
    assert run["metrics.full/ci/rsum_lo"] == pytest.approx(m["ci"]["rsum"][0])
    assert run["metrics.qbnorm/full/t2i_R1"] == pytest.approx(m["qbnorm"]["t2i"]["R@1"])


def pd_isna(x) -> bool:
    import pandas as pd

    return bool(pd.isna(x))


def test_weights_digest_depends_on_the_weights_only():
    """The saved matrix's `checkpoint` entry in metrics.json: the same weights give the same digest, whatever
    wall times the checkpoint's history recorded (issue 19: no wall-clock value reaches a results file)."""
    import torch

    from fga.evaluate.run import weights_digest

    w = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.tensor(1.0)}
    first = {"model": w, "region_source": {}, "meta": {"history": [{"epoch": 0, "seconds": 1.52}]}}
    rerun = {"model": dict(w), "meta": {"history": [{"epoch": 0, "seconds": 9.07}]}}
    assert weights_digest(first) == weights_digest(rerun) and len(weights_digest(first)) == 16
    assert weights_digest({"model": {**w, "b": torch.tensor(2.0)}}) != weights_digest(first)
    assert weights_digest({"model": {**w, "b": torch.tensor(1.0, dtype=torch.float64)}}) != weights_digest(first)
    assert weights_digest({"model": w, "region_source": {"x": torch.zeros(1, dtype=torch.bfloat16)}}) != \
        weights_digest(first)
