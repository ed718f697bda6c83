"""Caption encoders behind one interface (fga.models.text_encoder): the BiGRU unchanged, the packaged MiniLM's cached
word pieces (frozen_features) end to end, a tiny random BERT fine-tuned in the graph, [CLS]/[SEP] handling, word-piece
perturbation, and the one-line errors of a bert_base without a model directory or a checkpoint of another encoder."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fga.batches import TokenNoise, perturb_tokens
from fga.checkpoint import load_checkpoint
from fga.errors import UserError
from fga.features.text import load_tokenizer, tokenize, word_piece_ids
from fga.io import read_json
from fga.models.registry import METHODS, build_model
from fga.models.text_encoder import (BiGRUTextEncoder, TextEncoderSpec, TransformerTextEncoder, WordPieceProjection,
                                     backbone_parameters, build_text_encoder)
from test_train import BK, DS, finetune_project, make_project, tiny_cfg

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"embed_dim": 16, "word_dim": 8}
METHOD_CFG = {"vse_mean": SMALL, "grm": {**SMALL, "num_prompts": 2}, "scan": SMALL, "vse_inf": SMALL}
EVALUATE = {"split": "test", "protocol": "full", "memory_budget_mb": 64, "block_images": None, "block_captions": None,
            "save_matrix": "float32", "bootstrap": {"n_resamples": 50, "confidence": 0.95, "seed": 0},
            "qbnorm": {"enabled": True, "bank_size": {"images": 2, "captions": 6}, "beta": 20.0, "k": 1, "mode": "dis",
                       "seed": 0}}
SPECIALS = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert(path: Path, words: list[str]) -> Path:
    """A random 1-layer BERT with a word-level vocab.txt (the specials first, as in bert-base-uncased)."""
    from transformers import BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(SPECIALS + sorted(set(words))) + "\n")
    config = BertConfig(vocab_size=len(SPECIALS) + len(set(words)), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)  # AutoTokenizer reads vocab.txt with config.json's model_type
    return path


def dataset_words(root: Path) -> list[str]:
    ds = read_json(root / "data" / DS / "dataset.json")
    return [w for im in ds["images"] for s in im["sentences"] for w in tokenize(s)]


# ------------------------------------------------------------------------------------------------ the BiGRU


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bigru_is_the_default_and_draws_the_same_weights(method):
    models = []
    for spec in (None, TextEncoderSpec(), TextEncoderSpec("bigru", "finetune")):
        torch.manual_seed(0)
        models.append(build_model(method, METHOD_CFG[method], img_dim=6, vocab_size=20, text_encoder=spec))
    assert all(isinstance(m.txt, BiGRUTextEncoder) for m in models)
    names = [k for k, _ in models[0].named_parameters()]
    assert [k for k in names if k.startswith("txt.")] == ["txt.embed.weight"] + [
        f"txt.gru.{k}" for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_ih_l0_reverse",
                                 "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse")]
    for other in models[1:]:
        assert [k for k, _ in other.named_parameters()] == names
        assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), other.state_dict().values()))
    assert not list(backbone_parameters(models[0]))


def test_build_text_encoder_needs_what_its_mode_reads():
    with pytest.raises(ValueError, match="feature_dim"):
        build_text_encoder(TextEncoderSpec("minilm"), vocab_size=0, word_dim=8, embed_dim=4)
    with pytest.raises(ValueError, match="model_dir"):
        build_text_encoder(TextEncoderSpec("minilm", "finetune"), vocab_size=0, word_dim=8, embed_dim=4)
    proj = build_text_encoder(TextEncoderSpec("minilm", feature_dim=5), vocab_size=0, word_dim=8, embed_dim=4)
    assert isinstance(proj, WordPieceProjection)
    out = proj(torch.randn(2, 3, 5).half(), torch.tensor([3, 1]))
    assert out.shape == (2, 3, 4) and out.dtype == torch.float32
    assert torch.all(out[1, 1:] == 0) and torch.all(out[0] != 0)  # padded pieces are zeros, as the BiGRU gives


# ------------------------------------------------------------------------------------------- [CLS] / [SEP]


def test_stored_rows_lose_cls_and_sep():
    from fga.inputs import strip_special_tokens

    real = np.array([5, 2, 4])  # [CLS] w w w [SEP] / [CLS] [SEP] / [CLS] w w [SEP]
    tokens = np.zeros((3, 6, 2), np.float32)
    mask = np.arange(6)[None, :] < real[:, None]
    for i, n in enumerate(real):
        tokens[i, :n, 0] = np.arange(n) + 1  # position + 1: [CLS] is 1, the first piece 2, ...
        tokens[i, :n, 1] = -1
    feats, lengths = strip_special_tokens(tokens, mask)
    assert lengths.tolist() == [3, 1, 2] and feats.shape == (3, 3, 2) and feats.dtype == torch.float16
    assert feats[0, :, 0].tolist() == [2, 3, 4]  # the pieces, [CLS] (1) and [SEP] (5) gone
    assert feats[1, :, 0].tolist() == [2, 0, 0]  # no piece: its [SEP] is the one token
    assert feats[2, :, 0].tolist() == [2, 3, 0] and feats[2, 2, 1] == 0  # [SEP] (4) zeroed like padding


def test_finetune_encoder_wraps_the_pieces_in_cls_and_sep(tmp_path):
    from transformers import AutoModel

    path = tiny_bert(tmp_path / "bert", ["red", "circle", "blue", "square", "left", "of"])
    torch.manual_seed(0)
    enc = TransformerTextEncoder(str(path), embed_dim=4).eval()
    tok = load_tokenizer(str(path))
    ids, lengths = word_piece_ids(tok, ["red circle left of blue square", "blue square"], 88)
    assert lengths.tolist() == [6, 2] and tok.unk_token_id not in ids[0]  # every word is a piece of the vocab
    assert tok.cls_token_id not in ids and tok.sep_token_id not in ids
    ids, lengths = torch.from_numpy(ids), torch.from_numpy(lengths)
    with torch.no_grad():
        out = enc(ids, lengths)
        bert = AutoModel.from_pretrained(str(path)).eval()
        for i in range(2):
            n = int(lengths[i])
            alone = torch.tensor([[tok.cls_token_id, *ids[i, :n].tolist(), tok.sep_token_id]])
            expect = enc.proj(bert(input_ids=alone).last_hidden_state[0, 1 : n + 1])
            torch.testing.assert_close(out[i, :n], expect, rtol=1e-4, atol=1e-5)  # padding changes nothing
            assert torch.all(out[i, n:] == 0)
    assert {n for n, _ in backbone_parameters(torch.nn.ModuleDict({"txt": enc}))} == {
        f"txt.transformer.{n}" for n, _ in bert.named_parameters()}


# ------------------------------------------------------------------------------------------- perturbation


def test_word_piece_perturbation_masks_replaces_or_drops(tmp_path):
    words = [f"w{i}" for i in range(20)]
    tok = load_tokenizer(str(tiny_bert(tmp_path / "bert", words)))
    noise = TokenNoise.word_pieces(tok)
    assert noise == TokenNoise(tok.mask_token_id, len(SPECIALS), len(SPECIALS) + len(words))
    ids = torch.arange(len(SPECIALS), len(SPECIALS) + 12).reshape(2, 6)
    lengths = torch.tensor([6, 4])
    ids[1, 4:] = 0
    out, new = perturb_tokens(ids, lengths, 1.0, noise, torch.Generator().manual_seed(0))
    assert torch.all(new <= lengths) and torch.all(new >= 1)
    for row, n in zip(out, new):
        real, pad = row[: int(n)], row[int(n):]
        assert torch.all(pad == 0)
        assert torch.all((real == tok.mask_token_id) | (real >= noise.random_low) & (real < noise.random_high))
    assert (out == tok.mask_token_id).any() and (new < lengths).any()  # p = 1: every action happens
    again, _ = perturb_tokens(ids, lengths, 1.0, noise, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    same, same_len = perturb_tokens(ids, lengths, 0.0, noise, torch.Generator().manual_seed(0))
    assert torch.equal(same, ids) and torch.equal(same_len, lengths)
    # the vocabulary path is the same function with <unk> and words from 2
    v_out, _ = perturb_tokens(ids, lengths, 1.0, 40, torch.Generator().manual_seed(0))
    w_out, _ = perturb_tokens(ids, lengths, 1.0, TokenNoise.words(40), torch.Generator().manual_seed(0))
    assert torch.equal(v_out, w_out) and TokenNoise.words(40) == TokenNoise(1, 2, 40)


# ----------------------------------------------------------------------------------- frozen MiniLM, end to end


@pytest.fixture
def minilm_project(tmp_path, monkeypatch):
    from fga.features.text import extract_text, text_store_dir

    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg(epochs=1, text_encoder="minilm")
    cfg["data"][DS].update(n_train=4, n_val=2, n_test=2)  # 40 captions through MiniLM
    cfg["methods"] = copy.deepcopy(METHOD_CFG)
    cfg["features"]["text"]["encoders"] = {"minilm": {"model_dir": None, "max_words": 90},
                                           "bert_base": {"model_dir": None}}
    cfg["evaluate"] = copy.deepcopy(EVALUATE)
    make_project(tmp_path, cfg)
    extract_text(cfg, DS, "minilm", tmp_path / "data" / DS, text_store_dir(DS, "minilm"), quiet=True)
    return cfg


def test_minilm_frozen_trains_and_evaluates_every_method(minilm_project, tmp_path):
    from fga.evaluate.robustness_run import robustness
    from fga.evaluate.run import evaluate
    from fga.inputs import load_split, text_encoder_spec
    from fga.train import train

    cfg = minilm_project
    spec = text_encoder_spec(cfg)
    assert (spec.name, spec.mode, spec.feature_dim) == ("minilm", "frozen_features", 384)
    train_split = load_split(cfg, DS, BK, "train")
    assert train_split.tokens.shape[0] == 20 and train_split.tokens.shape[-1] == 384
    assert train_split.tokens.dtype == torch.float16 and int(train_split.lengths.min()) >= 1
    scores = {}
    for method in sorted(METHODS):
        ckpt = tmp_path / "runs" / method / "checkpoint.safetensors"
        meta = train(cfg, DS, BK, method, 0, ckpt.parent, quiet=True)
        assert meta["text_encoder"] == "minilm" and np.isfinite(meta["history"][0]["val_rsum"])
        state = load_checkpoint(ckpt)
        assert state["meta"]["text_encoder"] == "minilm"
        assert state["model"]["txt.proj.weight"].shape == (16, 384)
        assert not any(k.startswith("txt.embed") or k.startswith("txt.gru") for k in state["model"])
        if method in ("grm", "scan"):
            metrics = scores[method] = evaluate(cfg, DS, BK, method, 0, ckpt, quiet=True,
                                                out_dir=tmp_path / "results" / method)
            assert 0 <= metrics["rsum"] <= 600 and metrics["qbnorm_bank"]  # the bank reads stored train pieces
            assert metrics["binding"]["probes"] > 0  # new captions (near misses) through the live MiniLM
    robust = {**cfg, "robustness": {"bins": {"equal_count": 2}, "cluttered_quantile": 0.5, "distractors": [],
                                    "distractor_seed": 0}}
    res = robustness(robust, DS, BK, "scan", 0, tmp_path / "runs" / "scan" / "checkpoint.safetensors", quiet=True)
    assert res["overall"]["rsum"] == pytest.approx(scores["scan"]["rsum"])  # the same test captions and matrix
    maps = read_json(tmp_path / "results" / "grm" / "attention.json")["maps"]
    assert maps and all(len(m["words"]) == len(m["cosine"]) for m in maps)  # one word piece a row
    assert all(w not in ("[CLS]", "[SEP]") for m in maps for w in m["words"])
    # captions no store holds are encoded live, as the store was: same pieces, same features
    from fga.inputs import caption_tokens, split_texts

    ds = read_json(tmp_path / "data" / DS / "dataset.json")
    stored, stored_len = split_texts(cfg, DS, BK, "val", ds, rows=[0, 3])
    caps = [s for im in ds["images"] if im["split"] == "val" for s in im["sentences"][:5]]
    live, live_len = caption_tokens(cfg, [caps[0], caps[3]], tmp_path / "features" / DS / "text_bigru" / "vocab.json")
    assert torch.equal(stored_len, live_len)
    torch.testing.assert_close(live.float(), stored[:, : live.shape[1]].float(), atol=2e-3, rtol=1e-2)
    bigru = copy.deepcopy(cfg)
    bigru["train"]["text_encoder"] = "bigru"
    with pytest.raises(UserError, match="trained with text encoder 'minilm', but train.text_encoder is 'bigru'"):
        evaluate(bigru, DS, BK, "grm", 0, tmp_path / "runs" / "grm" / "checkpoint.safetensors", quiet=True)
    noisy = copy.deepcopy(cfg)
    noisy["train"]["token_perturb"] = 0.2
    with pytest.raises(UserError, match="token_perturb"):  # cached features have no ids to perturb
        train(noisy, DS, BK, "vse_mean", 0, tmp_path / "noisy", quiet=True)


def test_the_cli_runs_the_encoder_text_encoder_names_under_its_own_directory_and_tag(minilm_project, tmp_path):
    """`fga train/evaluate --text-encoder minilm` in a project whose params say bigru: the run is minilm's, lives
    under <backbone>/minilm/ and is logged with tag text=minilm; an unknown name is one line, exit 2."""
    import yaml
    from mlflow.tracking import MlflowClient

    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())  # a whole params file: the project's sections in it
    cfg.update({k: v for k, v in copy.deepcopy(minilm_project).items() if k in cfg and k != "grid"})
    cfg["grid"].update(backbones=[BK], methods=["vse_mean"], ablation={"backbones": [], "methods": []})
    cfg["train"]["text_encoder"] = "bigru"
    cfg["tracking"].update(uri=f"sqlite:///{tmp_path / 'mlruns.db'}", artifact_root=str(tmp_path / "mlartifacts"),
                           log_checkpoints=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = ["--dataset", DS, "--backbone", BK, "--method", "vse_mean", "--seed", "0", "--quiet"]
    for verb in ("train", "evaluate"):
        out = subprocess.run([sys.executable, "-m", "fga", verb, *run, "--text-encoder", "minilm"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "runs" / DS / BK / "minilm" / "vse_mean" / "seed0" / "checkpoint.safetensors")
    assert ckpt["meta"]["text_encoder"] == "minilm"
    assert read_json(tmp_path / "results" / DS / BK / "minilm" / "vse_mean" / "seed0" / "metrics.json")["rsum"] >= 0
    assert not (tmp_path / "runs" / DS / BK / "bigru").exists()
    client = MlflowClient(cfg["tracking"]["uri"])
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("stage") in ("train", "evaluate")]
    assert sorted(r.info.run_name for r in runs) == [f"{BK}/minilm/vse_mean/seed0/{v}" for v in ("evaluate", "train")]
    assert {r.data.tags["text"] for r in runs} == {"minilm"}
    out = subprocess.run([sys.executable, "-m", "fga", "train", *run, "--text-encoder", "roberta"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "train.text_encoder = 'roberta'" in out.stderr


# ------------------------------------------------------------------------------------ a tiny BERT, fine-tuned


def test_finetune_tiny_bert_trains_in_the_backbone_group(tmp_path, monkeypatch):
    from fga.evaluate.run import evaluate
    from fga.finetune import FinetuneBackbone
    from fga.train import train

    cfg = finetune_project(tmp_path, monkeypatch)  # finetune mode, 0.2 token perturbation, one epoch
    cfg["data"][DS]["n_test"] = 0
    bert = tiny_bert(tmp_path / "bert", dataset_words(tmp_path))
    cfg["features"]["text"]["encoders"] = {"bert_base": {"model_dir": str(bert)}}
    cfg["train"]["text_encoder"] = "bert_base"
    cfg["train"]["batch_size"] = 20  # one step
    cfg["evaluate"] = {**copy.deepcopy(EVALUATE), "split": "val", "qbnorm": {"enabled": False}}
    meta = train(cfg, DS, "tiny_grid", "vse_mean", 0, tmp_path / "run", quiet=True)
    assert meta["text_encoder"] == "bert_base" and len(meta["history"]) == 1
    state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    from transformers import AutoModel

    initial = AutoModel.from_pretrained(str(bert)).state_dict()
    trained = {k.removeprefix("txt.transformer."): v for k, v in state["model"].items()
               if k.startswith("txt.transformer.")}
    assert trained.keys() == initial.keys()
    # every weight on the path to the word pieces' last hidden states moved (the pooler reads [CLS] for nothing)
    weights = [k for k, v in initial.items() if v.is_floating_point() and k.endswith("weight") and "pooler" not in k]
    unchanged = [k for k in weights if torch.equal(initial[k], trained[k])]
    assert len(weights) > 10 and not unchanged, unchanged
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    groups = last["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([cfg["train"]["lr"], cfg["train"]["lr"] * 0.1])
    n_visual = len(list(FinetuneBackbone(cfg["features"]["backbones"]["tiny_grid"], name="tiny_grid").parameters()))
    n_bert = len(list(AutoModel.from_pretrained(str(bert)).parameters()))
    assert len(groups[1]["params"]) == n_visual + n_bert  # the visual backbone and the BERT share the group
    metrics = evaluate(cfg, DS, "tiny_grid", "vse_mean", 0, tmp_path / "run" / "checkpoint.safetensors", quiet=True)
    assert metrics["rsum"] == pytest.approx(meta["best"]["rsum"])  # evaluate re-tokenises the captions alike


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("choose", [["--set", "train.text_encoder=bert_base"], ["--text-encoder", "bert_base"]])
def test_bert_base_without_model_dir_is_a_one_line_cli_error(tmp_path, choose):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out = subprocess.run([sys.executable, "-m", "fga", "train", "--dataset", "synthetic", "--backbone", "lite0_grid",
                          "--method", "vse_mean", "--seed", "0", *choose],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr  # fga.cli: every UserError exits 2 ("fga: error: ..."), no traceback
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "features.text.encoders.bert_base.model_dir" in lines[0] and "bert-base-uncased" in lines[0]


def test_bert_base_model_dir_must_be_a_bert(tmp_path):
    from fga.inputs import text_encoder_spec

    cfg = tiny_cfg(text_encoder="bert_base", mode="finetune")
    cfg["features"]["text"]["encoders"] = {"bert_base": {"model_dir": str(tmp_path / "missing")}}
    with pytest.raises(UserError, match=r"not a bert model \(no readable config.json\); set features.text.encoders"):
        text_encoder_spec(cfg)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "distilbert"}')
    cfg["features"]["text"]["encoders"]["bert_base"]["model_dir"] = str(other)
    with pytest.raises(UserError, match="model_type 'distilbert'"):
        text_encoder_spec(cfg)
    (other / "config.json").write_text('{"model_type": "bert", "hidden_size": 16}')
    with pytest.raises(UserError, match="no tokenizer vocab"):
        text_encoder_spec(cfg)
    (other / "vocab.txt").write_text("\n".join(SPECIALS))
    assert text_encoder_spec(cfg) == TextEncoderSpec("bert_base", "finetune", None, str(other))
    cfg["train"]["text_encoder"] = "roberta"
    with pytest.raises(UserError, match="train.text_encoder = 'roberta'"):
        text_encoder_spec(cfg)


def test_params_select_the_encoder_and_a_bigru_runs_hash_ignores_the_transformers():
    from fga.config import load_params
    from fga.grid import run_text_encoder
    from fga.runs import run_params

    cfg = load_params(ROOT / "params.yaml")
    assert run_text_encoder(cfg) == "bigru" and set(cfg["features"]["text"]["encoders"]) >= {"minilm", "bert_base"}
    assert cfg["features"]["text"]["encoders"]["bert_base"]["model_dir"] is None
    params = run_params(cfg, "synthetic", "lite0_grid", "grm", 0)
    assert "text_encoder" not in params["train"] and set(params["text"]) == {"min_count", "max_words"}
    other = load_params(ROOT / "params.yaml", ["features.text.encoders.minilm.max_words=32"])
    assert run_params(other, "synthetic", "lite0_grid", "grm", 0) == params  # a BiGRU run does not read it
    minilm = load_params(ROOT / "params.yaml", ["train.text_encoder=minilm"])
    assert run_text_encoder(minilm) == "minilm"
    assert run_params(minilm, "synthetic", "lite0_grid", "grm", 0)["text"]["encoder"] == {
        "minilm": {"model_dir": None, "max_words": 90}}
    with pytest.raises(UserError, match="train.text_encoder"):
        load_params(ROOT / "params.yaml", ["train.text_encoder=not a name"])
