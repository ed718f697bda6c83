"""Do GRM's modules do their jobs? Trains GRM variants on a finished project's frozen features and
prints, per variant x backbone, the test rSum and the module diagnostics of fga.models.grm.diagnostics.

Each variant is the project's own `methods.grm` section plus a few options, trained by fga.train.train
(the project's train section: epochs, batch, schedule) for one seed, CPU, `train.threads` = 1. Test rSum
is the full-split rank_metrics of the weighted similarity (what validation computes, on the test split);
the diagnostics are taken on the first `--max-images` test images and their captions, in eval mode
and in train mode (noise on).

    python benchmarks/bench_grm_modules.py --project /path/to/project [--backbones lite0_grid lite0_roi]
        [--variants default mi_0.1 ...] [--max-images 200] [--json out.json] [--epochs N (a quick check)]

The project directory needs data/<dataset>/dataset.json, features/<dataset>/{<backbone>/, vocab.json}
and the params.yaml those features were extracted with. Runs are written to a temporary directory.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fga.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fga.config import load_params
from fga.inputs import caps_per_image, load_split
from fga.models.grm.diagnostics import grm_diagnostics
from fga.runs import build_for
from fga.train import train, validation_rsum

# variant name -> options over methods.grm (the default section is today's behaviour)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "mi_0.1": {"ent_form": "mi", "lambda_ent": 0.1},
    "mi_1": {"ent_form": "mi", "lambda_ent": 1.0},
    "div_0.1": {"lambda_div": 0.1},
    "mi_1+div_0.1": {"ent_form": "mi", "lambda_ent": 1.0, "lambda_div": 0.1},
    "mi_1+scale_5": {"ent_form": "mi", "lambda_ent": 1.0, "prompt_logit_scale": 5.0},  # room for peaked sigmoids
    "kl_sum": {"kl_reduction": "sum"},
    "sigma_max_0.25": {"sigma_max": 0.25},
    "pool_none": {"saliency_pooling": "none"},
    "no_rp": {"use_region_prompt": False},
    # candidate defaults and the -RP ablation next to them
    "mi_0.1+sigma_max_0.25": {"ent_form": "mi", "lambda_ent": 0.1, "sigma_max": 0.25},
    "div_0.1+sigma_max_0.25": {"lambda_div": 0.1, "sigma_max": 0.25},
    "no_rp+sigma_max_0.25": {"use_region_prompt": False, "sigma_max": 0.25},
}

COLUMNS = [("rsum", "rSum"), ("prompt_entropy", "H_att"), ("usage_entropy", "H_use"), ("region_cos", "cos_kk"),
           ("region_to_mean_cos", "cos_km"), ("keep_visual", "keepV"), ("keep_text", "keepT"),
           ("sigma_mean", "sigma"), ("noise_to_signal", "noise/mu"),
           ("unc_i2t_R1_eval", "unc_i2t@1 ev"), ("unc_i2t_R1_train", "unc_i2t@1 tr"),
           ("unc_t2i_R1_eval", "unc_t2i@1 ev"), ("unc_t2i_R1_train", "unc_t2i@1 tr"),
           ("key_i2t_R1_eval", "key_i2t@1 ev"), ("key_i2t_R1_train", "key_i2t@1 tr")]


def variant_cfg(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """cfg with methods.<name> = methods.grm + the variant's options, on the CPU with one thread."""
    out = copy.deepcopy(cfg)
    out["methods"][name] = {"arch": "grm", **VARIANTS[name]}
    out["train"].update(device="cpu", threads=1)
    return out


def measure(cfg: dict[str, Any], dataset: str, backbone: str, name: str, runs: Path, max_images: int) -> dict[str, float]:
    """Train one variant (seed 0), then its test rSum and diagnostics."""
    cfg = variant_cfg(cfg, name)
    run_dir = runs / backbone / name
    started = time.time()
    meta = train(cfg, dataset, backbone, name, 0, run_dir, quiet=True)
    model = build_for(cfg, name, dataset, backbone, meta["img_dim"])
    model.load_state_dict(load_checkpoint(run_dir / CHECKPOINT_FILE)["model"])
    model.eval()
    test = load_split(cfg, dataset, backbone, "test")
    metrics = validation_rsum(model, test, torch.device("cpu"), cfg)
    row = {"rsum": metrics["rsum"], **{f"test_{d}_{k}": metrics[d][k] for d in ("i2t", "t2i") for k in ("R@1", "R@5", "R@10")}}
    diag = grm_diagnostics(model, test.regions, test.mask, test.tokens, test.lengths, caps_per_image(test),
                           max_images=max_images)
    row.update({k.removeprefix("grm/"): v for k, v in diag.items()})
    row["seconds"] = time.time() - started
    return row


def table(results: dict[tuple[str, str], dict[str, float]]) -> str:
    head = ["backbone", "variant"] + [label for _, label in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (backbone, variant), row in results.items():
        cells = [f"{row[key]:.1f}" if key == "rsum" or "_R1_" in key else f"{row[key]:.3f}" if key in row else "-"
                 for key, _ in COLUMNS]
        lines.append("| " + " | ".join([backbone, variant] + cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="a finished project directory")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--backbones", nargs="+", default=["lite0_grid", "lite0_roi"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-images", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write every measured value here")
    parser.add_argument("--epochs", type=int, help="override train.epochs (default: the project's budget)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    json_path = args.json.resolve() if args.json else None
    os.chdir(args.project)  # the stages read data/ and features/ relative to the project root
    cfg = load_params(Path("params.yaml"))
    if args.epochs is not None:
        cfg["train"]["epochs"] = args.epochs
    results: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_grm_") as runs:
        for backbone in args.backbones:
            for variant in args.variants:
                results[backbone, variant] = measure(cfg, args.dataset, backbone, variant, Path(runs), args.max_images)
                print(f"{backbone} {variant}: rsum={results[backbone, variant]['rsum']:.1f} "
                      f"({results[backbone, variant]['seconds']:.0f} s)", flush=True)
    print(f"\nepochs={cfg['train']['epochs']} batch={cfg['train']['batch_size']} seed=0 threads=1 "
          f"diagnostics on {args.max_images} test images; R@1 in %\n")
    print(table(results), flush=True)
    if json_path:
        json_path.write_text(json.dumps({f"{b}/{v}": row for (b, v), row in results.items()}, indent=1))


if __name__ == "__main__":
    main()
