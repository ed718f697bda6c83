"""The paper preset (configs/paper.yaml): its dry run plans the paper's whole grid with the Slurm profile's GPU
requests, and a stand-in of the same DAG runs for real on the CPU.

The stand-in overlays the preset with only what cannot exist on a CPU-only CI machine without a hub: tiny random
ViT/Swin of the paper's two families instead of the four checkpoints, a tiny random BERT (BertConfig +
save_pretrained) instead of bert-base-uncased, the fixture Flickr30K served from 127.0.0.1 instead of the real set,
the CPU instead of CUDA, one seed and 2 epochs (one step each: the preset's batch of 128 holds every fixture
caption), and a slice of the grid: on 2 shared cores the whole 2 x 4 x 3 grid took 688 s, one dataset x 2
backbones x 3 methods 280 s, one dataset x 1 backbone x 3 methods 136 s (81 s with the machine quiet; a job
costs 15-60 s, most of it imports, building a 28M-parameter Swin and saving its AdamW state), so the stand-in
runs both datasets (the fixture Flickr30K and COCO 2014 + Karpathy splits, each downloaded over 127.0.0.1 and
prepared by the DAG's own prepare_data jobs) on one backbone (Swin-384: K = 50, the preset's per-backbone
override) with every method. COCO's protocols, the mean over 5 folds of 1,000 images and the 5K gallery, need
COCO's 5,000-image test split, which a fixture cannot have: the stand-in scores COCO's one fixture test image
with `full`, and tests/test_recall.py runs both protocols on 5,000 x 25,000 matrices. Mode, methods, per-backbone K, schedule shape and everything else come from the
preset; the dry run checks the whole grid as the jobs will read it.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import BIN
from test_workflow import ROOT, run

try:
    from fixtures_data import base_cfg, coco_files, flickr_files, serve_set, server  # noqa: F401
except ImportError:  # pragma: no cover
    from tests.fixtures_data import base_cfg, coco_files, flickr_files, serve_set, server  # noqa: F401

pytestmark = pytest.mark.e2e

PRESET = "configs/paper.yaml"
PROFILE = "workflow/profiles/slurm"
RUN_RULES = ("train", "evaluate", "robustness")  # one job per dataset x backbone x method x seed
# The paper's four backbones -> random timm models of the same families, at input sizes that keep a CPU step short
# (ViT: CLS + 4 / 9 patches; Swin: 2 x 2 / 3 x 3 final-stage tokens).
STANDIN_BACKBONES = {
    "vit_base_224": {"model": "vit_tiny_patch16_224", "input_size": 32},
    "vit_base_384": {"model": "vit_tiny_patch16_384", "input_size": 48},
    "swin_base_224": {"model": "swin_tiny_patch4_window7_224", "input_size": 64},
    "swin_base_384": {"model": "swin_tiny_patch4_window7_224", "input_size": 96},
}
STANDIN_GRID = {"datasets": ["flickr30k", "coco"], "backbones": ["swin_base_384"], "seeds": [0]}


def preset() -> dict:
    return yaml.safe_load((ROOT / PRESET).read_text())


def paper_project(tmp: Path) -> Path:
    """A copy of the workflow with the real params.yaml and the preset."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp / name)
    for name in ("workflow", "fga", "configs"):
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp


def job_counts(log: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a (dry) run: rule -> job count."""
    table = log.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M) if m[1] != "total"}


def job_resources(log: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the `resources:` line of each of its jobs in a dry run, as {name: value}."""
    out: dict[str, list[dict[str, str]]] = {}
    for block in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n)+)", log, re.M):
        line = re.search(r"^\s+resources: (.*)$", block[2], re.M)
        if line:
            pairs = dict(item.split("=", 1) for item in line[1].split(", "))
            out.setdefault(block[1], []).append(pairs)
    return out


def resolved_params(project: Path) -> dict:
    """The params file the planned jobs read (common.smk writes it, content-addressed, when the workflow loads)."""
    files = list((project / ".snakemake/fga").glob("*.yaml"))
    assert len(files) == 1, files
    return yaml.safe_load(files[0].read_text())


def check_paper_params(cfg: dict, datasets: list[str], protocols: dict[str, object]) -> None:
    """The preset's schedule, mode, K per backbone and protocols, as the jobs will read them."""
    from fga.config import evaluation_section
    from fga.models.registry import method_section

    want = preset()
    for key in ("mode", "text_encoder", "batch_size", "lr", "lr_milestones", "lr_gamma", "backbone_lr_scale"):
        assert cfg["train"][key] == want["train"][key], key
    for backbone in want["grid"]["backbones"]:
        k = method_section(cfg, "grm", backbone)["num_prompts"]
        assert k == (50 if backbone.startswith("swin") else 5), (backbone, k)
        for method in want["grid"]["methods"]:
            assert method_section(cfg, method, backbone)["embed_dim"] == 512
    for dataset in datasets:
        assert evaluation_section(cfg, dataset)["protocol"] == protocols[dataset]


def test_preset_dry_run_plans_the_paper_grid_with_gpu_requests(tmp_path):
    project = paper_project(tmp_path)
    out = run([str(BIN / "snakemake"), "-n", "--configfile", PRESET, "--profile", PROFILE], project)
    log = out.stdout + out.stderr
    grid = preset()["grid"]
    n_runs = len(grid["datasets"]) * len(grid["backbones"]) * len(grid["methods"]) * len(grid["seeds"])
    assert n_runs == 2 * 4 * 3 * 3
    counts = job_counts(log)
    assert counts == {"prepare_data": 2, "extract_features": 8, **{r: n_runs for r in RUN_RULES},
                      "report": 1, "all": 1}, counts
    # every train/evaluate/robustness job asks Slurm for what the profile says, a GPU included
    profile = yaml.safe_load((project / PROFILE / "config.yaml").read_text())["set-resources"]
    resources = job_resources(log)
    for rule in (*RUN_RULES, "extract_features"):
        jobs = resources[rule]
        assert len(jobs) == counts[rule]
        for job in jobs:
            assert job["gpu"] == "1" and job["slurm_partition"] == "main", (rule, job)
            assert int(job["mem_mb"]) == profile[rule]["mem_mb"] and int(job["runtime"]) == profile[rule]["runtime"]
    assert "gpu" not in resources["report"][0]
    # what the jobs will read: the paper's schedule, K = 5 (ViT) / 50 (Swin), COCO's 1K folds then 5K
    check_paper_params(resolved_params(project), grid["datasets"],
                       {"flickr30k": "full", "coco": ["coco1k", "coco5k"]})
    cfg = resolved_params(project)
    assert cfg["train"]["epochs"] == 30 and cfg["train"]["device"] == "cuda"


def tiny_bert(path: Path) -> Path:
    """A random 2-layer BERT with a small word-piece vocabulary, saved like a local bert-base-uncased directory."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True)
    words = ["a", "photo", "caption", "number", "coco", "flickr", ",", "."]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[f"##{d}" for d in range(10)], *map(str, range(10))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    return path


def standin_overlay(tmp_path: Path, server, flickr_files, coco_files) -> dict:
    """The second overlay: what cannot exist here (and the grid's slice), nothing else."""
    flickr = serve_set(server, flickr_files, prefix="flickr30k/")
    images_url = flickr["urls"].pop("flickr30k_images")
    return {
        "grid": STANDIN_GRID,
        "data": {"flickr30k": base_cfg(tmp_path / "flickr30k", images_url=images_url, **flickr),
                 "coco": base_cfg(tmp_path / "coco", **serve_set(server, coco_files, prefix="coco/"))},
        "evaluate": {"per_dataset": {"coco": {"protocol": "full"}}},  # coco1k/coco5k need 5,000 test images
        "features": {
            "backbones": {name: {**spec, "weights": "random", "checkpoint": None}
                          for name, spec in STANDIN_BACKBONES.items()},
            "text": {"encoders": {"bert_base": {"model_dir": str(tiny_bert(tmp_path / "bert"))}}},
        },
        "train": {"device": "cpu", "epochs": 2, "threads": 1, "num_workers": 0},
    }


def test_preset_standin_runs_for_real_on_the_cpu(tmp_path, server, flickr_files, coco_files):
    from fga.checkpoint import load_checkpoint

    project = paper_project(tmp_path / "project")
    overlay = standin_overlay(tmp_path, server, flickr_files, coco_files)
    (project / "standin.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    cmd = [str(BIN / "snakemake"), "--cores", "2", "--configfile", PRESET, "standin.yaml"]
    out = run(cmd, project)
    grid = {**preset()["grid"], **STANDIN_GRID}
    counts = job_counts(out.stdout + out.stderr)
    n_runs = len(grid["datasets"]) * len(grid["backbones"]) * len(grid["methods"])
    assert {r: counts.get(r) for r in RUN_RULES} == {r: n_runs for r in RUN_RULES}, counts
    cfg = resolved_params(project)
    check_paper_params(cfg, ["flickr30k", "coco"], {"flickr30k": "full", "coco": "full"})  # COCO's substituted

    for dataset in grid["datasets"]:
        for backbone in grid["backbones"]:
            for method in grid["methods"]:
                run_id = f"{dataset}/{backbone}/bert_base/{method}/seed0"
                ckpt = load_checkpoint(project / f"runs/{run_id}/checkpoint.safetensors")
                meta = ckpt["meta"]
                # finetune: the backbone's and BERT's weights travel in the checkpoint; 2 epochs
                assert ckpt["region_source"], run_id
                assert meta["mode"] == "finetune" and meta["text_encoder"] == "bert_base", run_id
                assert any(k.startswith("txt.transformer.") for k in ckpt["model"]), run_id
                assert [row["epoch"] for row in meta["history"]] == [0, 1], run_id
                metrics = json.loads((project / f"results/{run_id}/metrics.json").read_text())
                assert metrics["protocol"] == "full" and 0 <= metrics["rsum"] <= 600, run_id
                assert (project / f"results/{run_id}/robustness.json").exists()
                if method == "grm":
                    prompts = [t for k, t in ckpt["model"].items() if k.endswith("prompts")]
                    assert len(prompts) == 1 and prompts[0].shape[0] == (50 if backbone.startswith("swin") else 5)
    import pandas as pd

    table = pd.read_csv(project / "reports/tables/main.csv")
    assert len(table) == n_runs and (table["seeds"] == 1).all()
