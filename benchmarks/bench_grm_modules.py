"""Do GRM's modules do their jobs? Trains GRM variants on a finished project's frozen features and
prints, per variant x backbone, the test rSum and the module diagnostics of fga.models.grm.diagnostics.

Each variant is the project's own `methods.grm` section plus a few options, trained by fga.train.train
(the project's train section: epochs, batch, schedule) for each of `--seeds` (default 0), CPU, `train.threads` = 1,
one training at a time. With several seeds the table shows mean +- std over them. Test rSum
is the full-split rank_metrics of the weighted similarity (what validation computes, on the test split);
the diagnostics are taken on the first `--max-images` test images and their captions, in eval mode
and in train mode (noise on).

    python benchmarks/bench_grm_modules.py --project /path/to/project [--backbones lite0_grid lite0_roi]
        [--variants default mi_0.1 ...] [--seeds 0 1 2] [--max-images 200] [--json out.json]
        [--epochs N (a quick check)]

The project directory needs data/<dataset>/dataset.json, features/<dataset>/{<backbone>/, text_bigru/vocab.json}
and the params.yaml those features were extracted with. Runs are written to a temporary directory.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
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

# variant name -> options over methods.grm (the default section is today's behaviour). The defaults ent_form mi and
# sigma_max 0.25 were chosen with this script (docs/grm.md §10); the first four rows reproduce that comparison
# from today's params.yaml, the rest are relative to whatever the project's methods.grm says.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "previous_default": {"ent_form": "usage", "sigma_max": None},  # before the measured choice
    "ent_usage": {"ent_form": "usage"},  # the previous regulariser, sigma bounded
    "sigma_unbounded": {"sigma_max": None},  # mi, sigma unbounded
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
    "mi_0.1+sigma_max_0.25+pool_none": {"ent_form": "mi", "lambda_ent": 0.1, "sigma_max": 0.25,
                                        "saliency_pooling": "none"},
    # Fig. 4a: the number of region prompts K (5 = default)
    **{f"k{k}": {"num_prompts": k} for k in (1, 3, 10, 20, 50)},
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


def measure(cfg: dict[str, Any], dataset: str, backbone: str, name: str, runs: Path, max_images: int,
            seed: int = 0) -> dict[str, float]:
    """Train one variant for one seed, then its test rSum and diagnostics."""
    cfg = variant_cfg(cfg, name)
    run_dir = runs / backbone / name / f"seed{seed}"
    started = time.time()
    meta = train(cfg, dataset, backbone, name, seed, run_dir, quiet=True)
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


def _cell(key: str, values: list[float]) -> str:
    """One table cell: the value, or mean +- std (sample, n-1) over seeds."""
    if not values:
        return "-"
    digits = 1 if key == "rsum" or "_R1_" in key else 3
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: dict[tuple[str, str, int], dict[str, float]]) -> str:
    """Markdown: one row per backbone x variant, each cell over the seeds measured."""
    head = ["backbone", "variant", "seeds"] + [label for _, label in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    for (backbone, variant, _seed), row in results.items():
        groups.setdefault((backbone, variant), []).append(row)
    for (backbone, variant), rows in groups.items():
        cells = [_cell(key, [r[key] for r in rows if key in r]) for key, _ in COLUMNS]
        lines.append("| " + " | ".join([backbone, variant, str(len(rows))] + cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="a finished project directory")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--backbones", nargs="+", default=["lite0_grid", "lite0_roi"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
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
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_grm_") as runs:
        for backbone in args.backbones:
            for seed in args.seeds:
                for variant in args.variants:
                    row = measure(cfg, args.dataset, backbone, variant, Path(runs), args.max_images, seed)
                    results[backbone, variant, seed] = row
                    print(f"{backbone} {variant} seed{seed}: rsum={row['rsum']:.1f} ({row['seconds']:.0f} s)",
                          flush=True)
                    if json_path:  # after every run, so an interrupted sweep keeps what it measured
                        json_path.write_text(json.dumps({f"{b}/{v}/seed{s}": r for (b, v, s), r in results.items()},
                                                        indent=1))
    seeds = " ".join(str(s) for s in args.seeds)
    print(f"\nepochs={cfg['train']['epochs']} batch={cfg['train']['batch_size']} seeds={seeds} threads=1 "
          f"diagnostics on {args.max_images} test images; R@1 in %\n")
    print(table(results), flush=True)


if __name__ == "__main__":
    main()
