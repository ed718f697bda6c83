"""GRM region-word maps (fga.evaluate.attention): shapes, words, the link to S_unc, attention.json, the report figure."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fga.encoding import encode_split
from fga.errors import UserError
from fga.evaluate.attention import (TEMPERATURE, attention_record, grm_maps, n_maps, region_word_tensors,
                                    token_label, _box_categories)
from fga.features.text import load_vocab, split_captions, tokenize
from fga.inputs import load_split
from fga.io import read_json
from fga.models.grm import GRM
from fga.models.scan import SCAN
from fga.models.vse import VSEMean
from fga.models.vse_gpo import VSEInfinity
from store_fixtures import write_random_project

DS, BK = "synthetic", "rand"
R, D = 4, 10
STORE = Path("features") / DS / BK / "test.h5"


def tiny_cfg() -> dict:
    return {
        "grid": {"datasets": [DS], "backbones": [BK], "methods": ["grm"], "seeds": [0]},
        "data": {DS: {"seed": 0, "n_train": 16, "n_val": 4, "n_test": 6, "image_size": 48, "min_objects": 1,
                      "max_objects": 3}},
        "features": {"batch_size": 8, "num_workers": 0, "text": {"min_count": 1, "max_words": 90},
                     "backbones": {BK: {"model": "none", "weights": "random", "regions": "grid", "grid_size": 2}}},
        "train": {"epochs": 1, "batch_size": 8, "lr": 2e-3, "weight_decay": 1e-4, "lr_milestones": [1],
                  "lr_gamma": 0.3, "grad_clip": 2.0, "device": "cpu", "amp": False, "threads": 1,
                  "mode": "frozen_features", "token_perturb": 0.0},
        "methods": {"grm": {"embed_dim": 8, "word_dim": 4, "num_prompts": 3}},
        "evaluate": {"split": "test", "protocol": "full", "memory_budget_mb": 64, "block_images": None,
                     "block_captions": None, "save_matrix": "none", "attention_maps": 4,
                     "bootstrap": {"n_resamples": 20, "confidence": 0.95, "seed": 0},
                     "qbnorm": {"enabled": False, "bank_size": {"images": 4, "captions": 8}, "beta": 20.0, "k": 1,
                                "mode": "dis", "seed": 0}},
        "tracking": {"uri": "sqlite:///mlruns.db", "artifact_root": "mlartifacts"},
        "report": {"tables_dir": "reports/tables", "figures_dir": "reports/figures"},
    }


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg()
    write_random_project(tmp_path, cfg, DS, BK, R, D, pad_every=3)  # image 0 has its last region masked
    return tmp_path, cfg


def grm(**kw) -> GRM:
    torch.manual_seed(0)
    return GRM(D, 200, **{"embed_dim": 8, "word_dim": 4, "num_prompts": 3, **kw}).eval()


def pooled(cosine: np.ndarray, weights: np.ndarray, combine: str) -> float:
    """S_unc of one pair from its word x region cosine, pooled as fga.models.grm.similarity does."""
    t2i = float((weights * cosine.max(axis=1)).sum() / weights.sum())
    i2t = float(cosine.max(axis=0).mean())
    return {"mean": (t2i + i2t) / 2, "sum": t2i + i2t, "t2i": t2i, "i2t": i2t}[combine]


def test_maps_are_words_by_regions_softmax_rows_and_the_captions_words(project):
    root, cfg = project
    data = load_split(cfg, DS, BK, "test")
    model = grm()
    record = attention_record(cfg, DS, "grm", model, data, 4, "test", STORE)
    assert record["method"] == "grm" and record["arch"] == "grm" and "reason" not in record
    assert len(record["maps"]) == 4
    ds = read_json(root / "data" / DS / "dataset.json")
    image_ids, captions = split_captions(ds, "test")
    for i, m in enumerate(record["maps"]):
        att, cos = np.array(m["attention"]), np.array(m["cosine"])
        assert m["image_id"] == image_ids[i] and m["caption"] == captions[5 * i]  # first caption of image i
        assert m["words"] == tokenize(m["caption"])
        assert att.shape == cos.shape == (len(m["words"]), 3) and len(m["regions"]) == 3
        assert np.allclose(att.sum(axis=1), 1.0, atol=1e-5)
        assert (att.argmax(axis=1) == cos.argmax(axis=1)).all()  # the softmax keeps the max-pooled region
        shifted = np.exp((cos - cos.max(axis=1, keepdims=True)) / TEMPERATURE)
        assert np.allclose(att, shifted / shifted.sum(axis=1, keepdims=True), atol=1e-5)
        n_valid = int(data.mask[i].sum())
        assert len(m["image_tokens"]) == n_valid and (n_valid == R - 1) == (i % 3 == 0)
        top = np.array(m["region_token_attention"])  # A_hat over the valid image tokens, per prompt
        assert top.shape == (3, n_valid) and np.allclose(top.sum(axis=1), 1.0, atol=1e-5)
        assert m["region_top_token"] == top.argmax(axis=1).tolist()
        assert m["regions"] == [f"prompt {k}: cell {t}" for k, t in enumerate(m["region_top_token"])]
    assert record["maps"] == attention_record(cfg, DS, "grm", model, data, 4, "test", STORE)["maps"]  # deterministic


@pytest.mark.parametrize("kw", [{}, {"saliency_pooling": "none", "sim_combine": "sum"},
                                {"use_region_prompt": False}, {"use_region_prompt": False, "no_rp_regions": "mean"},
                                {"use_saliency": False, "use_uncertainty": False, "sim_combine": "t2i"}],
                         ids=["grm", "unweighted_sum", "no_rp_tokens", "no_rp_mean", "no_sa_no_um_t2i"])
def test_the_map_is_what_the_unc_similarity_pools(project, kw):
    _, cfg = project
    data = load_split(cfg, DS, BK, "test")
    model = grm(**kw)
    img, txt = encode_split(model, data, torch.device("cpu"))  # what `fga evaluate` scores
    unc = model.level_similarity(img, txt, "unc")
    n = 4
    rows = [5 * i for i in range(n)]
    tensors = region_word_tensors(model, data.regions[:n], data.mask[:n], data.tokens[rows], data.lengths[rows])
    maps = grm_maps(model, data, split_captions(read_json(Path("data") / DS / "dataset.json"), "test")[1],
                    load_vocab(Path("features") / DS / "text_bigru" / "vocab.json"), n)
    for i, (t, m) in enumerate(zip(tensors, maps)):
        model_score = float(unc[i, 5 * i])
        # exact (unrounded) tensors and the rounded JSON both reproduce the model's S_unc of the pair
        assert pooled(t["cosine"].double().numpy(), t["word_weights"].double().numpy(), model.sim_combine) \
            == pytest.approx(model_score, abs=1e-5)
        assert pooled(np.array(m["cosine"]), np.array(m["word_weights"]), model.sim_combine) \
            == pytest.approx(model_score, abs=1e-5)
        assert m["unc_similarity"] == pytest.approx(model_score, abs=1e-5)
        n_regions = {"prompt": 3, "tokens": int(data.mask[i].sum()), "mean": 1}[m["region_kind"]]
        assert np.array(m["attention"]).shape == (len(m["words"]), n_regions) == (len(m["words"]), len(m["regions"]))
    if not kw.get("use_saliency", True) or kw.get("saliency_pooling") == "none":
        assert all(w == 1.0 for m in maps for w in m["word_weights"])


def test_sampling_eval_mode_maps_the_region_means_and_restores_the_mode(project):
    _, cfg = project
    data = load_split(cfg, DS, BK, "test")
    sampled, mean = grm(eval_mode="sample"), grm()
    a = attention_record(cfg, DS, "grm", sampled, data, 2, "test")
    b = attention_record(cfg, DS, "grm", mean, data, 2, "test")
    assert sampled.um.eval_mode == "sample"
    assert [m["cosine"] for m in a["maps"]] == [m["cosine"] for m in b["maps"]]  # same weights: u_k = mu_k


def test_methods_without_region_attention_and_zero_maps_give_empty_maps_with_a_reason(project):
    _, cfg = project
    data = load_split(cfg, DS, BK, "test")
    cfg = {**cfg, "methods": {**cfg["methods"], "grm_no_sa": {"arch": "grm", "use_saliency": False}}}
    for method, model in (("vse_mean", VSEMean(D, 200, embed_dim=8, word_dim=4)),
                          ("scan", SCAN(D, 200, embed_dim=8, word_dim=4)),
                          ("vse_inf", VSEInfinity(D, 200, embed_dim=8, word_dim=4))):
        record = attention_record(cfg, DS, method, model.eval(), data, 4, "test", STORE)
        assert record["maps"] == [] and record["arch"] == method and "no region attention" in record["reason"]
    record = attention_record(cfg, DS, "grm_no_sa", grm(use_saliency=False), data, 0, "test", STORE)
    assert record["maps"] == [] and record["arch"] == "grm" and "attention_maps is 0" in record["reason"]
    assert len(attention_record(cfg, DS, "grm", grm(), data, 50, "test", STORE)["maps"]) == data.n_images
    for bad in (-1, "4", True, 1.5):
        with pytest.raises(UserError, match="evaluate.attention_maps"):
            n_maps({"attention_maps": bad})
    assert n_maps({}) == 4 and n_maps({"attention_maps": 0}) == 0


def test_box_regions_are_named_by_their_category(project):
    root, _ = project
    instances = read_json(root / "data" / DS / "instances.json")
    names = {c["id"]: c["name"] for c in instances["categories"]}
    image_id = instances["images"][0]["id"]
    anns = sorted((a for a in instances["annotations"] if a["image_id"] == image_id and not a.get("iscrowd", 0)),
                  key=lambda a: -a["area"])
    cats = _box_categories(root / "data" / DS / "instances.json", [image_id], [len(anns)])[image_id]
    assert cats == [names[a["category_id"]] for a in anns]
    assert token_label(0, {"region_source": "gt_boxes"}, cats) == f"box 0 ({cats[0]})"
    assert token_label(3, {"region_source": "patches", "cls_index": 0, "patch_grid": [2, 2]}, None) == "patch 1,0"
    assert token_label(0, {"region_source": "patches", "cls_index": 0}, None) == "cls"
    assert token_label(2, {"region_source": "grid"}, None) == "cell 2"


def test_evaluate_writes_and_logs_attention_json_and_the_report_draws_it(project, mlflow_store):
    import mlflow

    from fga.cli import main
    from fga.report import write_report
    from fga.train import train

    root, cfg = project
    cfg["tracking"]["uri"] = mlflow_store
    cfg["tracking"]["artifact_root"] = str(root / "mlartifacts")
    cfg["grid"]["methods"] = ["grm", "vse_mean"]
    cfg["methods"]["vse_mean"] = {"embed_dim": 8, "word_dim": 4}
    (root / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for method in ("grm", "vse_mean"):
        train(cfg, DS, BK, method, 0, root / "runs" / DS / BK / "bigru" / method / "seed0", quiet=True)
        assert main(["evaluate", "--dataset", DS, "--backbone", BK, "--method", method, "--seed", "0", "--quiet"]) == 0
    grm_att = json.loads((root / "results" / DS / BK / "bigru" / "grm" / "seed0" / "attention.json").read_text())
    assert grm_att["method"] == "grm" and grm_att["arch"] == "grm" and len(grm_att["maps"]) == 4
    vse_att = json.loads((root / "results" / DS / BK / "bigru" / "vse_mean" / "seed0" / "attention.json").read_text())
    assert vse_att["maps"] == [] and vse_att["reason"]
    mlflow.set_tracking_uri(mlflow_store)
    run = mlflow.search_runs(experiment_names=[f"fga-{DS}"],
                             filter_string="tags.stage = 'evaluate' and tags.method = 'grm'").iloc[0]
    assert "attention.json" in [a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])]
    write_report(cfg, quiet=True)
    figures = root / "reports" / "figures"
    for k in range(4):
        assert (figures / f"attention_{DS}_{BK}_grm_{k}.png").stat().st_size > 3000
    assert not list(figures.glob("attention_*vse_mean*")) and not (figures / f"attention_{DS}_{BK}_grm_4.png").exists()
