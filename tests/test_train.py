"""The training loop: determinism (identical checkpoint bytes), exact resume after SIGKILL, checkpoint safety, DDP,
finetune mode.

Every test builds a tiny project in tmp_path: a real synthetic dataset (fga.data.synthetic), its
vocabulary, and random region features written with StoreWriter under the right params hash
(no CNN runs, except the random-init `test_efficientnet` of the finetune tests).
"""
from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fga.checkpoint import load_checkpoint
from fga.data.synthetic import generate
from fga.errors import UserError
from fga.features.text import build_vocab_file
from store_fixtures import write_random_project

ROOT = Path(__file__).resolve().parent.parent
DS, BK = "synthetic", "rand"
N_REGIONS, FEAT_DIM = 4, 16


def tiny_cfg(**train: object) -> dict:
    cfg = {
        "data": {DS: {"seed": 0, "n_train": 8, "n_val": 4, "n_test": 4, "image_size": 48, "min_objects": 1,
                      "max_objects": 3}},
        "features": {"batch_size": 8, "num_workers": 0, "text": {"min_count": 1, "max_words": 90},
                     "backbones": {
                         BK: {"model": "none", "weights": "random", "regions": "grid", "grid_size": 2},
                         "tiny_grid": {"model": "test_efficientnet", "weights": "random", "checkpoint": None,
                                       "input_size": 64, "regions": "grid", "grid_size": 2},
                         "tiny_roi": {"model": "test_efficientnet", "weights": "random", "checkpoint": None,
                                      "input_size": 64, "regions": "boxes", "max_regions": 4},
                         "tiny_vit": {"model": "vit_tiny_patch16_224", "weights": "random", "checkpoint": None,
                                      "input_size": 32, "regions": "patches"}}},
        "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "weight_decay": 1e-4, "lr_milestones": [1],
                  "lr_gamma": 0.3, "grad_clip": 2.0, "device": "cpu", "amp": True, "threads": 1,
                  "mode": "frozen_features", "token_perturb": 0.0},
        "methods": {"vse_mean": {"embed_dim": 16, "word_dim": 8},
                    "grm": {"embed_dim": 16, "word_dim": 8, "num_prompts": 2}},
        "evaluate": {"split": "test", "protocol": "full", "block_images": 128, "block_captions": 1280},
    }
    cfg["train"].update(train)
    return cfg


def make_project(root: Path, cfg: dict) -> None:
    """data/<ds> (real synthetic scenes), features/<ds>/text_bigru/vocab.json and random features for every split."""
    write_random_project(root, cfg, DS, BK, N_REGIONS, FEAT_DIM, pad_every=2)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_project(tmp_path, tiny_cfg())
    return tmp_path


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# A script that trains one run in a fresh process (under torchrun too). With FGA_TEST_HANG_EPOCH=e,
# the 3rd GRM step of epoch e touches FGA_TEST_MARKER and then hangs: the test knows the process is
# mid-epoch e and kills it, with no race against the run finishing.
SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    cfg = json.loads(Path(sys.argv[1]).read_text())
    hang = os.environ.get("FGA_TEST_HANG_EPOCH")
    if hang is not None:
        from fga.models.grm import GRM
        original, calls = GRM.training_loss, []
        def training_loss(self, img, txt, positives, epoch):
            if epoch == int(hang):
                calls.append(epoch)
                if len(calls) == 3:
                    Path(os.environ["FGA_TEST_MARKER"]).touch()
                    time.sleep(600)
            return original(self, img, txt, positives, epoch)
        GRM.training_loss = training_loss
    from fga.train import train
    meta = train(cfg, "synthetic", "rand", sys.argv[3], 0, Path(sys.argv[2]), quiet=True)
    if meta["rank"] == 0:
        Path(sys.argv[2], "meta.json").write_text(json.dumps(meta))
""")


def script(root: Path, cfg: dict) -> tuple[Path, Path]:
    (root / "run_train.py").write_text(SCRIPT)
    (root / "cfg.json").write_text(json.dumps(cfg))
    return root / "run_train.py", root / "cfg.json"


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


# --------------------------------------------------------------------------------------------- tests


def test_same_seed_same_metrics_and_weights(project):
    from fga.train import train

    cfg = tiny_cfg(token_perturb=0.2)  # GRM samples noise inside the model; captions are perturbed too
    a = train(cfg, DS, BK, "grm", 3, project / "a", quiet=True)
    b = train(cfg, DS, BK, "grm", 3, project / "b", quiet=True)
    assert [r["val_rsum"] for r in a["history"]] == [r["val_rsum"] for r in b["history"]]
    assert [r["loss_total"] for r in a["history"]] == [r["loss_total"] for r in b["history"]]
    ca = load_checkpoint(project / "a" / "checkpoint.safetensors")
    cb = load_checkpoint(project / "b" / "checkpoint.safetensors")
    assert tensors_equal(ca["model"], cb["model"]) and ca["region_source"] == {}
    # the pipeline output is byte for byte reproducible (DVC can match dvc.lock): no wall-clock times in it,
    # while the returned history (what MLflow logs) keeps them
    assert (project / "a" / "checkpoint.safetensors").read_bytes() == (project / "b" / "checkpoint.safetensors").read_bytes()
    assert all("seconds" in r and "samples_per_s" in r for r in a["history"])
    assert ca["meta"]["history"] == [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")}
                                     for r in a["history"]]
    assert ca["meta"]["run_hash"] == a["run_hash"] and ca["meta"]["best"] == a["best"]
    assert ca["meta"]["params"]["key"] == [DS, BK, "grm", 3]
    c = train(cfg, DS, BK, "grm", 4, project / "c", quiet=True)
    assert [r["loss_total"] for r in c["history"]] != [r["loss_total"] for r in a["history"]]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(project, capsys):
    from fga.evaluate.run import evaluate
    from fga.train import train

    cfg = tiny_cfg(epochs=3, token_perturb=0.2)  # GRM: the model draws noise, so RNG restore matters
    run, cfg_path = script(project, cfg)
    marker, cut_dir = project / "mid-epoch-1", project / "cut"
    cut = subprocess.Popen([sys.executable, str(run), str(cfg_path), str(cut_dir), "grm"], cwd=project,
                           env=child_env(FGA_TEST_HANG_EPOCH="1", FGA_TEST_MARKER=str(marker)),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        whole = train(cfg, DS, BK, "grm", 0, project / "whole", quiet=True)  # meanwhile, uninterrupted
        deadline = time.time() + 60
        while not marker.exists():
            assert cut.poll() is None, cut.communicate()[0]
            assert time.time() < deadline, "the run never reached epoch 1"
            time.sleep(0.05)
        assert torch.load(cut_dir / "last.pt", weights_only=True)["meta"]["epoch"] == 0
    finally:
        cut.send_signal(signal.SIGKILL)
        cut.wait()
    assert not (cut_dir / "checkpoint.safetensors").exists()

    capsys.readouterr()
    resumed = train(cfg, DS, BK, "grm", 0, cut_dir, quiet=False)
    assert f"resuming {cut_dir} at epoch 1" in capsys.readouterr().out
    assert len(resumed["history"]) == 3
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (project / "whole", cut_dir))
    assert tensors_equal(a["model"], b["model"])
    assert (project / "whole" / "checkpoint.safetensors").read_bytes() == (cut_dir / "checkpoint.safetensors").read_bytes()
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in h]  # noqa: E731
    assert strip(whole["history"]) == strip(resumed["history"]) and whole["best"] == resumed["best"]
    m_whole = evaluate(cfg, DS, BK, "grm", 0, project / "whole" / "checkpoint.safetensors", quiet=True)
    m_cut = evaluate(cfg, DS, BK, "grm", 0, cut_dir / "checkpoint.safetensors", quiet=True)
    assert m_whole == m_cut


@pytest.mark.parametrize("damage", ["truncated", "tensor", "random"])
def test_bad_last_checkpoint_is_one_line_error_and_kept(project, damage):
    from fga.train import train

    cfg = tiny_cfg(epochs=1)
    run_dir = project / "run"
    train(cfg, DS, BK, "vse_mean", 0, run_dir, quiet=True)
    last = run_dir / "last.pt"
    if damage == "truncated":
        data = last.read_bytes()
        last.write_bytes(data[: len(data) // 2])
    elif damage == "tensor":
        torch.save(torch.zeros(3), last)
    else:
        last.write_bytes(np.random.default_rng(0).bytes(4096))
    before = last.read_bytes()
    with pytest.raises(UserError) as err:
        train(cfg, DS, BK, "vse_mean", 0, run_dir, quiet=True)
    assert "\n" not in str(err.value) and str(last) in str(err.value)
    assert last.read_bytes() == before


def test_finished_run_rewrites_its_checkpoint_from_last_pt(project, capsys):
    """A finished run whose checkpoint is gone (e.g. renamed outputs) gets the same file back without training."""
    from fga.train import train

    cfg = tiny_cfg(epochs=1)
    run_dir = project / "run"
    first = train(cfg, DS, BK, "vse_mean", 0, run_dir, quiet=True)
    written = (run_dir / "checkpoint.safetensors").read_bytes()
    (run_dir / "checkpoint.safetensors").unlink()
    capsys.readouterr()
    again = train(cfg, DS, BK, "vse_mean", 0, run_dir, quiet=False)
    assert "epoch 0:" not in capsys.readouterr().out  # no epoch trained or validated
    assert (run_dir / "checkpoint.safetensors").read_bytes() == written and again["history"] == first["history"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method,loss_key", [("vse_mean", "loss_triplet"), ("grm", "loss_total")])
def test_ddp_two_gloo_ranks_equal_one_process(project, method, loss_key):
    from fga.train import train

    # 8 images x 5 captions = 40 pairs = one global batch per epoch: epoch 0 (summed negatives) and
    # epoch 1 (hardest negatives) are one optimizer step each; no clipping, so the logged grad norm
    # is the raw gradient's (an Adam update alone would hide a wrong gradient scale).
    cfg = tiny_cfg(batch_size=40, grad_clip=0.0, epochs=2, token_perturb=0.2)
    # GRM's encoded dicts (tokens, masks, region prompts, attention, log-variances) go through the
    # gather; its per-rank noise (Gumbel, region samples) is switched off, since each rank draws its own
    cfg["methods"]["grm"].update(use_saliency=False, use_uncertainty=False)
    run, cfg_path = script(project, cfg)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    two = subprocess.Popen([*torchrun, str(run), str(cfg_path), str(project / "ddp"), method], cwd=project,
                           env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        a = train(cfg, DS, BK, method, 0, project / "one", quiet=True)  # meanwhile, one process
        out = two.communicate(timeout=120)[0]
    finally:
        if two.poll() is None:
            two.kill()
    assert two.returncode == 0, out

    b = json.loads((project / "ddp" / "meta.json").read_text())
    assert b["world_size"] == 2 and len(a["history"]) == len(b["history"]) == 2
    for ra, rb in zip(a["history"], b["history"]):
        assert rb[loss_key] == pytest.approx(ra[loss_key], rel=1e-5)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-5)
    sa = torch.load(project / "one" / "last.pt", weights_only=True)
    sb = torch.load(project / "ddp" / "last.pt", weights_only=True)
    assert len(sb["rng"]) == 2
    for key, value in sa["model"].items():
        torch.testing.assert_close(sb["model"][key], value, rtol=0, atol=1e-5)
    first = sa["optimizer"]["state"][0]["exp_avg"]  # Adam's first moment = 0.1 g1 after step 1, mixes g2 in step 2
    torch.testing.assert_close(sb["optimizer"]["state"][0]["exp_avg"], first, rtol=1e-4, atol=1e-7)


def finetune_project(tmp_path: Path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg(mode="finetune", epochs=1, batch_size=4, token_perturb=0.2)
    cfg["data"][DS].update(n_train=4, n_val=2, n_test=0)  # 6 images
    generate(tmp_path / "data" / DS, progress=False, **cfg["data"][DS])
    build_vocab_file(tmp_path / "data" / DS / "dataset.json", tmp_path / "features" / DS / "text_bigru" / "vocab.json", 1)
    return cfg


@pytest.mark.parametrize("backbone", ["tiny_grid", "tiny_roi", "tiny_vit"])
def test_finetune_trains_the_backbone(tmp_path, monkeypatch, backbone):
    from fga.finetune import FinetuneBackbone
    from fga.rng import seed_everything
    from fga.train import train

    cfg = finetune_project(tmp_path, monkeypatch)
    spec = cfg["features"]["backbones"][backbone]
    meta = train(cfg, DS, backbone, "vse_mean", 0, tmp_path / "run", quiet=True)
    assert meta["mode"] == "finetune" and len(meta["history"]) == 1
    assert np.isfinite(meta["history"][0]["loss_triplet"])
    state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    seed_everything(0)  # the loop builds the backbone first thing after seeding: replay its initial weights
    initial = FinetuneBackbone(spec, name=backbone).state_dict()
    trained = state["region_source"]
    assert trained and trained.keys() == {f"backbone.{k}" for k in initial}
    weights = [k for k, v in initial.items() if v.is_floating_point() and "weight" in k]
    changed = [k for k in weights if not torch.equal(initial[k], trained[f"backbone.{k}"])]
    assert len(changed) == len(weights)  # every backbone weight was updated
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    lrs = [g["initial_lr"] for g in last["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([cfg["train"]["lr"], cfg["train"]["lr"] * 0.1])

    if backbone == "tiny_grid":  # the saved backbone is the one validation used: same val rSum from the checkpoint
        from fga.finetune import finetuned_inputs
        from fga.runs import build_for
        from fga.train import validation_rsum

        val = finetuned_inputs(cfg, DS, backbone, "val", state, torch.device("cpu"))
        model = build_for(cfg, "vse_mean", DS, backbone, val.regions.shape[-1])
        model.load_state_dict(state["model"])
        assert validation_rsum(model, val, torch.device("cpu"), cfg)["rsum"] == meta["best"]["rsum"]
    if backbone == "tiny_roi":  # image loading in a worker process gives the same batches
        workers = copy.deepcopy(cfg)
        workers["train"]["num_workers"] = 1
        train(workers, DS, backbone, "vse_mean", 0, tmp_path / "workers", quiet=True)
        other = load_checkpoint(tmp_path / "workers" / "checkpoint.safetensors")
        assert tensors_equal(other["region_source"], trained) and tensors_equal(other["model"], state["model"])


def test_frozen_run_has_no_backbone(project):
    from fga.train import train

    train(tiny_cfg(epochs=1), DS, BK, "vse_mean", 0, project / "run", quiet=True)
    last = torch.load(project / "run" / "last.pt", weights_only=True)
    assert last["region_source"] == {} and len(last["optimizer"]["param_groups"]) == 1
    assert not any("backbone" in k for k in last["model"])


def test_finetune_regions_match_the_feature_extractor(tmp_path):
    """In eval mode the trainable path gives the store's regions (grid pooling, ROI-Align, ViT tokens)."""
    from fga.features.visual import RegionExtractor
    from fga.finetune import FinetuneBackbone

    cfg = tiny_cfg()
    boxes = [torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.9, 0.7]])]
    for name in ("tiny_grid", "tiny_roi", "tiny_vit"):
        spec = cfg["features"]["backbones"][name]
        images = torch.randn(2, 3, spec["input_size"], spec["input_size"])
        torch.manual_seed(0)
        ref = RegionExtractor(spec, name=name)
        torch.manual_seed(0)
        net = FinetuneBackbone(spec, name=name).eval()
        with torch.no_grad():
            regions, mask = net(images, boxes)
        assert regions.shape[1] == net.n_regions == ref.n_regions and regions.shape[2] == ref.feature_dim
        if name == "tiny_vit":
            torch.testing.assert_close(regions, ref.patch_tokens(images))
            assert mask.all() and net.n_regions == 5  # CLS + 2 x 2 patches
            continue
        fmap = ref.feature_map(images)
        if name == "tiny_grid":
            torch.testing.assert_close(regions, ref.grid_regions(fmap, 2)[0])
            assert mask.all()
        else:
            for i, feats in enumerate(ref.roi_regions(fmap, boxes)):
                torch.testing.assert_close(regions[i, : len(feats)], feats)
                assert mask[i].sum() == len(feats) and (regions[i, len(feats):] == 0).all()


def test_finetune_augmentation_is_seeded_and_moves_boxes(tmp_path, monkeypatch):
    from fga.finetune import finetune_sources

    cfg = finetune_project(tmp_path, monkeypatch)
    _, sources = finetune_sources(cfg, DS, "tiny_roi", splits=("train",))
    split = sources["train"].split
    a, boxes_a = split.load_one(0, 7)
    b, boxes_b = split.load_one(0, 7)
    c, _ = split.load_one(0, 8)
    plain, boxes_plain = split.load_one(0, None)
    assert a.shape == plain.shape == (3, 64, 64)
    assert torch.equal(a, b) and torch.equal(boxes_a, boxes_b) and not torch.equal(a, c)
    torch.testing.assert_close(boxes_plain, split.boxes[0])  # plain resize keeps normalised boxes
    assert ((boxes_a >= 0) & (boxes_a <= 1)).all() and (boxes_a[:, 2:] > boxes_a[:, :2]).all()
    state = torch.get_rng_state()
    split.load_one(1, 3)
    assert torch.equal(state, torch.get_rng_state())  # augmentation leaves the global RNG alone
