"""The paper's setting (configs/paper.yaml) at its real shapes: what one finetune training step and a COCO-5K
evaluation cost, and what the whole grid of the preset would cost.

What it measures, each in a subprocess of its own (peak memory = that process's ru_maxrss growth over the
measurement; on CUDA torch.cuda.max_memory_allocated), with random weights (timm create_model without pretrained
weights; BERT from `transformers.BertConfig()`, whose defaults are bert-base's shapes) through fga's own classes
(`fga.finetune.FinetuneBackbone` for ViT/Swin, `fga.models.registry.build_model` with the bert_base finetune text
encoder, `fga.train.TrainStep` + `optimizer_step`, AdamW over every parameter):

* train: one training step of each method (grm, scan, vse_inf, vse_mean; the preset's options: embed_dim 512,
  K = 5 on ViT, 50 on Swin, hardest negatives) on each backbone (ViT-B/16-224: 197 tokens = CLS + 14 x 14 patches;
  Swin-B-224: 49 tokens, its last stage's 7 x 7, which is what fga's patch-token extraction yields), captions of
  16-24 BERT word pieces (mean 20). On the CPU at batch 8 (`--batch`), 1 thread and, for GRM on the first
  backbone, 2 threads (`--threads`): GRM's full step per backbone, and each method's head (its side of the step:
  encode_image + training_loss + backward, on the encoders' outputs) at 8 and 128; another method's step is
  GRM's with its own head swapped in ("composed"), its batch-128 step the encoders scaled linearly from 8 plus
  the head measured at 128 ("projected"). Best of --repeats. With CUDA: every method's full step, bf16 autocast
  at batch 128, measured.
* the evaluation's encoders (eval mode, no_grad), in the same process as the step: seconds per image (backbone +
  encode_image) and per caption (BERT).
* similarity: fga.evaluate.similarity (bench_coco5k's measurement) on a block of images x captions of the
  COCO-5K test matrix (5,000 x 25,000), for each of GRM's similarity levels (ori, key, unc and the weighted sum
  the test score uses; on the first backbone, the weighted sum on the others) and for SCAN, projected to the full
  matrix by its number of pairs. VSE-infinity and VSE++ score one GEMM of global embeddings (not measured).

The grid's cost (backbones x methods x seeds x 30 epochs over COCO's 113,287 and Flickr30K's 29,000 training
images x 5 captions at batch 128, one validation per epoch and one test evaluation per run) is printed in
GPU-hours when the step was measured on a GPU, else in CPU core-hours (measured seconds x threads) with a GPU
projection that is only an assumption: the counted FLOPs (torch.utils.flop_counter) at H100/H200 SXM bf16 dense
peak (989 TFLOP/s) times an assumed model-FLOP utilisation (--mfu, default 0.4). The 384-px backbones are projected
from the 224-px measurement (encoders x their FLOP ratio, similarity x their token ratio) unless measured
(`--backbones` with them).

    python benchmarks/bench_paper_scale.py                     # CPU: 5-7 min on 2 cores
    python benchmarks/bench_paper_scale.py --device cuda       # a GPU: bf16, batch 128, measured
    python benchmarks/bench_paper_scale.py --out cost.md       # also write the table (.md) or the figures (.json)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_coco5k import N_CAPTIONS, N_IMAGES  # noqa: E402  (the COCO-5K test matrix's shape)
from bench_similarity import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "paper.yaml"
METHODS = ("grm", "scan", "vse_inf", "vse_mean")
LEVELS = ("ori", "key", "unc", "weighted")  # GRM's test_similarity: one level, or the level_weights sum
WORD_PIECES = (16, 24)  # BERT word pieces per caption (mean 20)
# Karpathy splits: images per split (5 captions each)
SPLITS = {"coco": {"train": 113_287, "val": 5_000, "test": 5_000},
          "flickr30k": {"train": 29_000, "val": 1_014, "test": 1_000}}
GPU_PEAK_FLOPS = 989e12  # H100 / H200 SXM, bf16 dense (NVIDIA data sheets)
EVAL_BLOCK = (16, 640)  # images x captions scored per similarity measurement (at least one full block of the plan)
# the token-level methods' similarity is measured; VSE-infinity's and VSE++'s is one GEMM of global embeddings
# (5,000 x 25,000 x 512: 0.13 TFLOP, negligible next to their encoders), counted as 0 in the grid
TOKEN_METHODS = ("grm", "scan")
HEAD_VOCAB = 1_000  # BiGRU word ids of the head measurements (their text encoder's output is an input there)


def paper_config() -> dict[str, Any]:
    """params.yaml with the preset overlaid, validated and resolved as Snakemake hands it to a job."""
    import yaml

    from fga.config import merged, snakemake_config

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    return snakemake_config(merged(base, yaml.safe_load(PRESET.read_text())), [ROOT / "params.yaml"], [PRESET], {})


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# --------------------------------------------------------------------------------------------- children


def fake_bert(path: Path) -> Path:
    """A bert-base-shaped directory (BertConfig() defaults, random weights, a vocab.txt of its size)."""
    from transformers import BertConfig, BertModel

    config = BertConfig()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(specials + [f"w{i}" for i in range(config.vocab_size - 5)]) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


def _models(cfg: dict, method: str, backbone: str, bert_dir: str):
    """The backbone (FinetuneBackbone, random) and the method's model with the preset's options, its captions
    through the bert_base finetune encoder read from bert_dir."""
    from fga.finetune import FinetuneBackbone
    from fga.models.registry import build_model, method_section
    from fga.models.text_encoder import TextEncoderSpec

    spec = {**cfg["features"]["backbones"][backbone], "weights": "random", "checkpoint": None}
    torch.manual_seed(0)
    net = FinetuneBackbone(spec, name=backbone)
    text = TextEncoderSpec(name="bert_base", mode="finetune", model_dir=bert_dir)
    model = build_model(method, method_section(cfg, method, backbone), img_dim=net.feature_dim,
                        vocab_size=HEAD_VOCAB, text_encoder=text)
    return net, model


def _caption_batch(b: int, vocab: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """b random captions of 16-24 token ids (0 = padding), and their lengths."""
    lengths = torch.randint(WORD_PIECES[0], WORD_PIECES[1] + 1, (b,), generator=g)
    ids = torch.randint(5, vocab, (b, int(lengths.max())), generator=g)
    return ids * (torch.arange(ids.shape[1])[None, :] < lengths[:, None]), lengths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Images(nn.Module):
    """A region source of random images through the trainable backbone (fga.finetune.BackboneRegions without a split)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.backbone = net

    def forward(self, batch: dict, device: torch.device):
        return self.backbone(batch["images"].to(device), batch["boxes"])


def step_child(a: dict) -> dict:
    """One training step of a.method on a.backbone at a.batch (backbone + BERT + method + AdamW), then the
    evaluation's encoders (eval mode, no_grad): seconds per image and per caption."""
    import contextlib

    from torch.utils.flop_counter import FlopCounterMode

    from fga.train import TrainStep, optimizer_step

    torch.set_num_threads(a["threads"])
    device = torch.device(a["device"])
    cfg = paper_config()
    net, model = _models(cfg, a["method"], a["backbone"], a["bert_dir"])
    step = TrainStep(model, _Images(net)).to(device).train()
    params = [p for p in step.parameters() if p.requires_grad]
    # fga.train.build_learner puts the backbones in a group of their own at a lower lr: the same work per step
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    g = torch.Generator().manual_seed(0)
    size = net.data_config["input_size"][-1]
    vocab = model.txt.transformer.config.vocab_size

    def batch(b: int):
        ids, lengths = _caption_batch(b, vocab, g)
        img_idx = torch.arange(b)
        return ({"images": torch.randn(b, 3, size, size, generator=g), "boxes": None}, ids.to(device),
                lengths.to(device), (img_idx[:, None] == img_idx[None, :]).to(device))

    def one(b: int) -> tuple[float, float]:
        args = batch(b)
        with FlopCounterMode(display=False) as fc:
            _sync(device)
            t0 = time.perf_counter()
            optimizer_step(step, opt, scaler, params, 2.0, autocast, *args, epoch=1)  # epoch >= warm-up: hardest
            _sync(device)
        return time.perf_counter() - t0, float(fc.get_total_flops())

    one(2)  # warm-up: lazy allocations, AdamW's state
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = maxrss_bytes()
    # best of the repeats: other load on a shared machine slows some, never speeds one up
    seconds, flops = min(one(a["batch"]) for _ in range(a.get("repeats", 1)))
    out = {**a, "step_s": seconds, "flops": flops, "params": sum(p.numel() for p in params),
           "feature_dim": int(net.feature_dim),
           "peak_bytes": torch.cuda.max_memory_allocated() if cuda else maxrss_bytes() - rss0}
    if not cuda:  # the method's share of this step, to compose the other methods' steps from their heads
        with torch.no_grad():
            regions, mask = net(torch.randn(8, 3, size, size, generator=g))
        out["head_s"], out["head_flops"], _ = min(head_cost(model, regions, mask, a["batch"], g, vocab)
                                                  for _ in range(a.get("repeats", 1)))
    step.eval()
    n_img, n_cap = a["batch"], 5 * a["batch"]
    with torch.no_grad(), (torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()):
        x = torch.randn(n_img, 3, size, size, generator=g).to(device)
        ids, lengths = (t.to(device) for t in _caption_batch(n_cap, vocab, g))
        regions, mask = net(x[:2])
        out["tokens"] = int(regions.shape[1])
        _sync(device)
        t0 = time.perf_counter()
        model.encode_image(*net(x))
        _sync(device)
        t1 = time.perf_counter()
        model.encode_text(ids, lengths)
        _sync(device)
        t2 = time.perf_counter()
    out["image_s"], out["caption_s"] = (t1 - t0) / n_img, (t2 - t1) / n_cap
    return out


def head_cost(model: nn.Module, regions: torch.Tensor, mask: torch.Tensor, b: int, g: torch.Generator,
              vocab: int) -> tuple[float, float, int]:
    """Seconds, FLOPs and ru_maxrss growth of the method's side of a step at batch b: encode_image on 8 images'
    backbone tokens (`regions`, `mask`) and the text encoder's output for 8 captions, both repeated to b, the loss
    over the b x b pairs, backward. This is what differs between methods, and what grows with b^2."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        ids, lengths = _caption_batch(8, vocab, g)
        txt = model.encode_text(ids, lengths)
    reps = math.ceil(b / 8)
    regions = regions.repeat(reps, 1, 1)[:b].requires_grad_(True)
    mask = mask.repeat(reps, 1)[:b]
    txt = {k: v.repeat(reps, *[1] * (v.dim() - 1))[:b] for k, v in txt.items()}
    txt = {k: (v.requires_grad_(True) if v.is_floating_point() else v) for k, v in txt.items()}
    positives = torch.arange(b)[:, None] == torch.arange(b)[None, :]
    rss0 = maxrss_bytes()
    with FlopCounterMode(display=False) as fc:
        t0 = time.perf_counter()
        loss, _ = model.training_loss(model.encode_image(regions, mask), txt, positives, 1)
        loss.backward()
        seconds = time.perf_counter() - t0
    return seconds, float(fc.get_total_flops()), maxrss_bytes() - rss0


def head_child(a: dict) -> dict:
    """The method's side of a step (head_cost) at a.batch and at a.project_batch, on random tokens of the backbone's
    shape (a.tokens x a.img_dim, from its step) and the BiGRU's caption encodings (both are inputs of the head)."""
    from fga.models.registry import build_model, method_section

    torch.set_num_threads(a["threads"])
    cfg = paper_config()
    torch.manual_seed(0)
    model = build_model(a["method"], method_section(cfg, a["method"], a["backbone"]), img_dim=a["img_dim"],
                        vocab_size=HEAD_VOCAB).train()
    g = torch.Generator().manual_seed(0)
    regions = torch.randn(8, a["tokens"], a["img_dim"], generator=g)
    mask = torch.ones(8, a["tokens"], dtype=torch.bool)
    out = dict(a)
    head_cost(model, regions, mask, 2, g, HEAD_VOCAB)  # warm-up: lazy initialisation, first allocations
    for key, b in (("", a["batch"]), ("_project", a["project_batch"])):
        # repeats at the small batch only: one head at 128 takes up to a minute on a CPU
        runs = [head_cost(model, regions, mask, b, g, HEAD_VOCAB) for _ in range(a.get("repeats", 1) if key == "" else 1)]
        out[f"head_s{key}"], out[f"head_flops{key}"] = min(r[:2] for r in runs)
        out[f"head_peak{key}"] = max(r[2] for r in runs)
    return out


def similarity_child(a: dict) -> dict:
    """bench_coco5k's measurement of one block at the paper's shapes (GRM with one test_similarity level)."""

    from bench_coco5k import measure

    torch.set_num_threads(a["threads"])
    cfg = paper_config()
    from fga.models.registry import method_section

    options = {k: v for k, v in method_section(cfg, a["method"], a["backbone"]).items() if k != "arch"}
    if a["method"] == "grm":
        options["test_similarity"] = a["level"]
    setting = {"tokens": a["tokens"], "img_dim": a["img_dim"], "embed_dim": options["embed_dim"],
               "words": list(WORD_PIECES)}
    m = measure(a["backbone"], a["method"], a["images"], a["budget_mb"], setting=setting, options=options,
                n_captions=a["captions"])
    return {**a, **{k: m[k] for k in ("images", "captions", "sim_s", "peak_rss", "block", "image_bytes_per_image",
                                      "caption_bytes_per_caption", "finite")}}


CHILDREN = {"step": step_child, "head": head_child, "similarity": similarity_child}


def run_child(kind: str, args: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, json.dumps(args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(args["threads"])}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise SystemExit(f"bench_paper_scale: {kind} {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ projections


def compose_step(step: dict, head: dict | None, batch: int) -> dict:
    """A method's training step at `batch` from a full step measured on its backbone (`step`, any method) and the
    method's own head (`head`, head_child; None when `step` is that method's): seconds, FLOPs and how it was got.

    The encoders (backbone, BERT, AdamW: the step less its method's head) scale linearly in the batch; the head
    (the b x b all-pairs loss) is taken as measured at that batch.
    """
    if step["batch"] == batch and (head is None or head["method"] == step["method"]):
        return {"s": step["step_s"], "flops": step["flops"], "how": "measured"}
    if head is None or batch not in (head["batch"], head["project_batch"]):
        raise ValueError(f"no head measurement of {step['method']} at batch {batch}")
    key = "" if batch == head["batch"] else "_project"
    scale = batch / step["batch"]
    enc_s, enc_flops = step["step_s"] - step["head_s"], step["flops"] - step["head_flops"]
    return {"s": enc_s * scale + head[f"head_s{key}"], "flops": enc_flops * scale + head[f"head_flops{key}"],
            "how": "composed" if scale == 1 else "projected"}


def full_matrix_seconds(sim_s: float, images: int, captions: int, n_images: int = N_IMAGES,
                        n_captions: int = N_CAPTIONS) -> float:
    """A measured images x captions block's similarity time, projected to n_images x n_captions by pairs."""
    return sim_s * (n_images * n_captions) / (images * captions)


def evaluation_seconds(n_images: int, image_s: float, caption_s: float, pair_s: float, caps_per_image: int = 5) -> float:
    """One evaluation of a split of n_images (x caps_per_image captions): both encoders plus every pair's score."""
    n_caps = n_images * caps_per_image
    return n_images * image_s + n_caps * caption_s + n_images * n_caps * pair_s


def run_seconds(dataset: str, step_s: float, eval_s, epochs: int, batch: int) -> dict:
    """One training run: epochs x the full batches of the train captions, a validation per epoch (`eval_s(n_images)`),
    one test evaluation (the robustness stage reuses its saved matrix)."""
    splits = SPLITS[dataset]
    steps = epochs * ((splits["train"] * 5) // batch)
    train = steps * step_s
    evals = epochs * eval_s(splits["val"]) + eval_s(splits["test"])
    return {"steps": steps, "train_s": train, "eval_s": evals, "total_s": train + evals}


def gpu_hours_from_flops(flops: float, mfu: float, peak: float = GPU_PEAK_FLOPS) -> float:
    """An assumption, not a measurement: FLOPs at `mfu` of a GPU's peak, in hours."""
    return flops / (peak * mfu) / 3600


def backbone_ratios(cfg: dict, backbone: str, measured_as: str) -> tuple[float, float]:
    """(forward FLOPs, output tokens) of `backbone` over those of `measured_as`, each at its own input size (counted
    on the meta device: no memory, no time). The encoders' time scales with the first, token-level similarity
    with the second (the paper's 384-px variants: ~3x both)."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    def count(name: str) -> tuple[float, int]:
        with torch.device("meta"):
            model = timm.create_model(cfg["features"]["backbones"][name]["model"], pretrained=False, num_classes=0)
            size = model.pretrained_cfg["input_size"][-1]
            with FlopCounterMode(display=False) as fc:
                out = model.forward_features(torch.empty(1, 3, size, size))
        tokens = out.shape[1] * out.shape[2] if out.dim() == 4 else out.shape[1]  # Swin: [1, H, W, C]
        return float(fc.get_total_flops()), int(tokens)

    (f1, t1), (f0, t0) = count(backbone), count(measured_as)
    return f1 / f0, t1 / t0


# ----------------------------------------------------------------------------------------------- main


def fmt_bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def measure_all(a: argparse.Namespace, cfg: dict, batch: int, bert_dir: str) -> dict:
    """Every child measurement of the run, printed as it comes."""
    pb, threads, cuda = cfg["train"]["batch_size"], a.threads[0], a.device == "cuda"
    res: dict[str, list] = {"steps": [], "heads": [], "similarity": []}
    for backbone in a.backbones:
        # a CPU measures one full step per backbone (GRM) and composes the others from their heads; a GPU all
        for method in (a.methods if cuda else ["grm"]):
            for th in [threads] + ([] if cuda or backbone != a.backbones[0] else a.threads[1:]):
                m = run_child("step", {"method": method, "backbone": backbone, "batch": batch, "threads": th,
                                       "device": a.device, "bert_dir": bert_dir, "repeats": a.repeats})
                res["steps"].append(m)
                print(f"step   {backbone:<14} {method:<9} {th if not cuda else 'GPU'} thr batch {batch}: "
                      f"{m['step_s']:7.2f} s ({m['flops'] / 1e12:.2f} TFLOP, {m['tokens']} tokens), peak "
                      f"+{fmt_bytes(m['peak_bytes'])}; eval encoders {m['image_s'] * 1e3:.1f} ms/image, "
                      f"{m['caption_s'] * 1e3:.2f} ms/caption", flush=True)
        if not cuda:
            for method in a.methods:
                full = next(m for m in res["steps"] if m["backbone"] == backbone)
                h = run_child("head", {"method": method, "backbone": backbone, "batch": batch, "project_batch": pb,
                                       "threads": threads, "tokens": full["tokens"], "img_dim": full["feature_dim"],
                                       "repeats": a.repeats})
                res["heads"].append(h)
                print(f"head   {backbone:<14} {method:<9} batch {batch}: {h['head_s']:6.2f} s; batch {pb}: "
                      f"{h['head_s_project']:6.2f} s ({h['head_flops_project'] / 1e9:.0f} GFLOP), peak "
                      f"+{fmt_bytes(h['head_peak_project'])}", flush=True)
        tokens = next(m["tokens"] for m in res["steps"] if m["backbone"] == backbone)
        levels = LEVELS if backbone == a.backbones[0] else ("weighted",)
        sims = [("grm", lv) for lv in levels] + [(m, None) for m in TOKEN_METHODS if m != "grm" and m in a.methods]
        for method, level in sims:
            s = run_child("similarity", {"method": method, "level": level, "backbone": backbone, "tokens": tokens,
                                         "img_dim": next(m["feature_dim"] for m in res["steps"]
                                                         if m["backbone"] == backbone),
                                         "threads": threads, "device": a.device, "images": EVAL_BLOCK[0],
                                         "captions": EVAL_BLOCK[1], "budget_mb": a.budget_mb})
            s["full_s"] = full_matrix_seconds(s["sim_s"], s["images"], s["captions"])
            res["similarity"].append(s)
            print(f"sim    {backbone:<14} {method + ('/' + level if level else ''):<13} {s['images']} x "
                  f"{s['captions']}: {s['sim_s']:6.2f} s measured -> 5,000 x 25,000: {s['full_s']:8.0f} s projected, "
                  f"peak RSS {fmt_bytes(s['peak_rss'])}", flush=True)
    return res


def method_steps(res: dict, batch: int, pb: int) -> list[dict]:
    """Each (backbone, method, threads): its step at the measured batch and at the paper's, with how each was got.

    A GPU run measured every method's step; a CPU run composes them from GRM's full step and each method's head
    (compose_step), at the thread count the heads were measured with (other thread counts: GRM's step only)."""
    rows = []
    for st in res["steps"]:
        heads = [h for h in res["heads"] if h["backbone"] == st["backbone"] and h["threads"] == st["threads"]]
        for head in heads or [None]:
            method = head["method"] if head else st["method"]
            own = head is None or head["method"] == st["method"]
            paper = None
            if st["batch"] == pb or head is not None:
                paper = compose_step(st, head, pb)
            rows.append({"backbone": st["backbone"], "method": method, "threads": st["threads"],
                         "tokens": st["tokens"], "peak_bytes": st["peak_bytes"],
                         "head": head, "at_batch": compose_step(st, None if own else head, batch), "at_paper": paper})
    return rows


def grid_cost(cfg: dict, res: dict, steps: list[dict], device: str, mfu: float) -> dict:
    """The preset's whole grid from the measurements: seconds (CPU: at the first thread count) and FLOPs per run."""
    tc, grid = cfg["train"], cfg["grid"]
    batch, epochs, seeds = tc["batch_size"], tc["epochs"], len(grid["seeds"])
    threads = res["steps"][0]["threads"]
    measured = {r["backbone"] for r in steps}
    rows, total_s, total_flops, skipped = [], 0.0, 0.0, []
    for dataset in grid["datasets"]:
        for backbone in grid["backbones"]:
            base = backbone if backbone in measured else backbone.replace("384", "224")
            if base not in measured:
                skipped.append(f"{backbone}/*")  # neither it nor its 224-px sibling was measured (--backbones)
                continue
            ratio, token_ratio = (1.0, 1.0) if base == backbone else backbone_ratios(cfg, backbone, base)
            full = next(m for m in res["steps"] if m["backbone"] == base and m["threads"] == threads)
            for method in grid["methods"]:
                st = next((r for r in steps if (r["backbone"], r["method"], r["threads"]) == (base, method, threads)),
                          None)
                if st is None or st["at_paper"] is None:
                    skipped.append(f"{backbone}/{method}")  # not measured (--methods)
                    continue
                paper = st["at_paper"]
                head = next((h for h in res["heads"] if (h["backbone"], h["method"]) == (base, method)), None)
                head_s = head["head_s_project"] if head else 0.0
                head_f = head["head_flops_project"] if head else 0.0
                # a 384-px backbone: the encoders' share of the step scales with its FLOPs, the head stays
                step_s = (paper["s"] - head_s) * ratio + head_s
                step_f = (paper["flops"] - head_f) * ratio + head_f
                sim = next((s for s in res["similarity"] if s["backbone"] == base and s["method"] == method
                            and s.get("level") in (None, "weighted")), None)
                # global embeddings: see TOKEN_METHODS; a 384-px backbone's token-level scores scale with its tokens
                pair_s = sim["full_s"] / (N_IMAGES * N_CAPTIONS) * token_ratio if sim else 0.0
                r = run_seconds(dataset, step_s, lambda n: evaluation_seconds(n, full["image_s"] * ratio,
                                                                             full["caption_s"], pair_s), epochs, batch)
                rows.append({"dataset": dataset, "backbone": backbone, "method": method, "seeds": seeds, "from": base,
                             "step_s": step_s, "train_flops": r["steps"] * step_f, **r})
                total_s += seeds * r["total_s"]
                total_flops += seeds * r["steps"] * step_f
    return {"rows": rows, "total_s": total_s, "train_flops": total_flops, "threads": threads,
            "not_measured": sorted(set(skipped)),
            "cpu_core_hours": total_s * threads / 3600 if device == "cpu" else None,
            "gpu_hours": total_s / 3600 if device == "cuda" else None,
            "gpu_hours_assumed": gpu_hours_from_flops(total_flops, mfu)}


def tables(results: dict, mfu: float) -> str:
    """The measured and projected figures as markdown tables."""
    dev, b, pb = results["device"], results["batch"], results["project_batch"]
    cuda = dev == "cuda"
    lines = [f"Measured on {results['where']}; random weights, the paper's shapes (configs/paper.yaml).", "",
             f"| backbone | method | threads | tokens | step s, batch {b} | peak memory, batch {b} "
             f"| step s, batch {pb} | TFLOP/step, batch {pb} |", "|---|---|---|---|---|---|---|---|"]
    for r in results["method_steps"]:
        at, paper = r["at_batch"], r["at_paper"]
        peak = fmt_bytes(r["peak_bytes"]) + (" (GRM's step)" if at["how"] != "measured" else "")
        lines.append(f"| {r['backbone']} | {r['method']} | {'GPU' if cuda else r['threads']} | {r['tokens']} | "
                     f"{at['s']:.2f} ({at['how']}) | {peak} | "
                     + (f"{paper['s']:.2f} ({paper['how']}) | {paper['flops'] / 1e12:.2f} |" if paper else "- | - |"))
    lines += ["", "| backbone | encoders at evaluation (no_grad) | ms/image | ms/caption |", "|---|---|---|---|"]
    for m in results["steps"]:
        if m["threads"] == results["steps"][0]["threads"] and m["method"] == "grm":
            lines.append(f"| {m['backbone']} | ViT/Swin + BERT-base (measured) | {m['image_s'] * 1e3:.1f} | "
                         f"{m['caption_s'] * 1e3:.2f} |")
    lines += ["", "| backbone | similarity | block (measured) | s (measured) | 5,000 x 25,000 s (projected by pairs) "
              "| peak RSS of the block's process |", "|---|---|---|---|---|---|"]
    for s in results["similarity"]:
        name = s["method"] + (f" ({s['level']})" if s.get("level") else "")
        lines.append(f"| {s['backbone']} | {name} | {s['images']} x {s['captions']} | {s['sim_s']:.2f} | "
                     f"{s['full_s']:,.0f} | {fmt_bytes(s['peak_rss'])} |")
    g = results["grid"]
    unit = "GPU-h" if cuda else f"CPU core-h ({g['threads']} thread{'s' if g['threads'] > 1 else ''})"
    lines += ["", f"Grid (projected): 30 epochs of full batches of {pb}, a validation per epoch, one test evaluation "
              "per run; the robustness stage reuses the saved matrix.", "",
              f"| dataset | backbone | method | seeds | steps/run | train h/run | eval h/run | {unit}, all seeds |",
              "|---|---|---|---|---|---|---|---|"]
    for r in g["rows"]:
        note = "" if r["from"] == r["backbone"] else f" (from {r['from']}: x its FLOPs, similarity x its tokens)"
        lines.append(f"| {r['dataset']} | {r['backbone']}{note} | {r['method']} | {r['seeds']} | {r['steps']:,} | "
                     f"{r['train_s'] / 3600:,.1f} | {r['eval_s'] / 3600:,.1f} | "
                     f"{r['total_s'] * r['seeds'] * (1 if cuda else g['threads']) / 3600:,.0f} |")
    if g["not_measured"]:
        lines.append(f"\nNot in the totals (not measured, nor their 224-px sibling): "
                     f"{', '.join(g['not_measured'])}.")
    if cuda:
        lines.append(f"\n**Whole grid: {g['gpu_hours']:,.0f} GPU-hours**, projected from the GPU measurement.")
    else:
        lines.append(f"\n**Whole grid: {g['cpu_core_hours']:,.0f} CPU core-hours**, projected from the CPU "
                     f"measurement. GPU projection, an assumption and not a measurement: the training's "
                     f"{g['train_flops'] / 1e18:,.1f} EFLOP at {mfu:.0%} of an H100/H200's bf16 dense peak "
                     f"({GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s) = **~{g['gpu_hours_assumed']:,.0f} GPU-hours** "
                     "(training only: the evaluations' encoder FLOPs are under 1 % of it, and their token-level "
                     "similarity is bound by memory traffic, not FLOPs).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    # 1 thread first: on a shared machine a 2-thread OpenMP step slows down far more than a 1-thread one when
    # another process takes a core (measured: 6.9 s -> 30.6 s at 2 threads, 11.7 s -> 11.4 s at 1)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads: the first for every "
                    "measurement, the others for GRM's full step on the first backbone (default: 1 2)")
    ap.add_argument("--batch", type=int, default=None, help="measured batch (default: 8 on a CPU, the preset's 128 "
                    "on CUDA)")
    ap.add_argument("--backbones", nargs="+", default=["vit_base_224", "swin_base_224"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of each step and of each head at the "
                    "measured batch, best counts (default 2)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model-FLOP utilisation of the CPU run's GPU "
                    "projection (default 0.4)")
    ap.add_argument("--budget-mb", type=float, default=None, help="similarity block budget (default: the preset's "
                    "evaluate.memory_budget_mb)")
    ap.add_argument("--out", type=Path, help="also write the results: .json (every figure) or .md (the tables)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(CHILDREN[a.child[0]](json.loads(a.child[1]))))
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_paper_scale: --device cuda but no CUDA device is visible")
    cfg = paper_config()
    pb = cfg["train"]["batch_size"]
    batch = a.batch or (pb if a.device == "cuda" else 8)
    a.budget_mb = a.budget_mb or cfg["evaluate"].get("memory_budget_mb", 4096)
    where = (f"CUDA {torch.cuda.get_device_name(0)}, bf16 autocast" if a.device == "cuda"
             else f"{cpu_model()}, {os.cpu_count()} cores, {', '.join(map(str, a.threads))} torch thread(s)")
    print(f"paper scale on {where}; torch {torch.__version__}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fga-bench-paper-") as tmp:
        res = measure_all(a, cfg, batch, str(fake_bert(Path(tmp) / "bert")))
    steps = method_steps(res, batch, pb)
    results = {"where": where, "device": a.device, "batch": batch, "project_batch": pb, **res, "method_steps": steps,
               "grid": grid_cost(cfg, res, steps, a.device, a.mfu), "mfu": a.mfu}
    results["bench_s"] = time.perf_counter() - started
    text = tables(results, a.mfu)
    print(text + f"\n\n(bench wall time {results['bench_s']:.0f} s; load average after: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    if a.out:
        from fga.io import atomic_path, write_json

        if a.out.suffix == ".json":
            write_json(a.out, results)
        else:
            with atomic_path(a.out) as tmp_out:
                tmp_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
