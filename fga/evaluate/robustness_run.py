"""`fga robustness`: recall per clutter bin and against added distractors -> results/.../robustness.json.

Clutter of a test image = its number of non-crowd instances in ``data/<dataset>/instances.json``
(pycocotools, fga.data.synthetic.clutter_counts). Bins come from ``robustness.bins`` (default
``{equal_count: 3}``: three bins of about equal image counts) or a per-dataset override in
``robustness.bins_by_dataset`` (default COCO: ``[[1, 3], [4, 7], [8, 15], [16, null]]``); the
"cluttered" subset is the top tertile of clutter (``robustness.cluttered_quantile``). Every bin's
queries are ranked against the FULL test gallery (fga.evaluate.robustness.per_bin_metrics), so
bins differ only in their queries.

Distractor curve (synthetic only): the test images re-rendered with n extra, never-mentioned
objects (fga.data.synthetic.add_distractors) for n in ``robustness.distractors`` (params.yaml:
4, 8; the code default 2, 4, 8). Level 0 is the test set itself, scored by the same matrix as the
clutter bins, and always starts the curve. Each other level is a dataset of its own, ``data/synthetic_distract<n>/``, with features
``features/synthetic_distract<n>/<backbone>/test.h5`` shared by every method and seed (the
`distractors` action of `fga robustness`; Snakemake rules distractor_data / distractor_features).
The same test captions are then scored against each level's images (full gallery).

Every recall block (each bin, the cluttered subset, all test images, each distractor level) carries
a percentile-bootstrap ``ci`` with the evaluate stage's ``evaluate.bootstrap`` options (images
resampled with their captions; a bin resamples its own images), as metrics.json does.

Feature hash of a level: `fga.features.store.feature_hash` of the config returned by
:func:`distractor_cfg`, whose ``data.synthetic_distract<n>`` entry is the synthetic dataset's
params plus ``n_extra`` and ``distractor_seed``, so the store goes stale exactly when the
synthetic data, the level or the backbone changes.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fga.config import for_dataset, merged
from fga.data import split_images
from fga.encoding import encode_images, encode_texts
from fga.errors import UserError
from fga.evaluate.recall import query_ranks, tie_rule_of
from fga.evaluate.robustness import cluttered_bin, make_bins, per_bin_metrics, recall_block
from fga.evaluate.run import (LoadedRun, load_run, mlflow_metrics as evaluate_mlflow_metrics, sanitize,
                              score_split, settings as eval_settings, timed_matrix, weights_digest)
from fga.evaluate.similarity import load_matrix, matrix_path
from fga.evaluate.stats import bootstrap_options
from fga.features.store import feature_hash
from fga.finetune import finetuned_regions
from fga.inputs import SplitInputs, is_finetune, store_rows
from fga.io import read_json, write_json

COCO_BINS = [[1, 3], [4, 7], [8, 15], [16, None]]
DEFAULTS: dict[str, Any] = {
    "bins": {"equal_count": 3},
    "bins_by_dataset": {"coco": COCO_BINS},
    "cluttered_quantile": 2.0 / 3.0,
    "distractors": [2, 4, 8],
    "distractor_seed": 0,
}
SOURCE = "synthetic"


def settings(cfg: dict[str, Any]) -> dict[str, Any]:
    rc = merged(DEFAULTS, cfg.get("robustness", {}))
    levels = rc["distractors"]
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in levels) or len(set(levels)) != len(levels):
        raise UserError(f"robustness.distractors must be distinct positive integers (level 0, the test set, is always "
                        f"in the curve), got {levels!r}")
    return rc


def bin_spec(rc: dict[str, Any], dataset: str) -> Any:
    """The dataset's bin spec: `bins_by_dataset[dataset]`, else the COCO entry for coco* datasets, else `bins`."""
    by = rc.get("bins_by_dataset") or {}
    if dataset in by:
        return by[dataset]
    if dataset.startswith("coco") and "coco" in by:
        return by["coco"]
    return rc["bins"]


# ------------------------------------------------------------------------------------- distractor sets


def distractor_name(n: int) -> str:
    return f"{SOURCE}_distract{int(n)}"


def distractor_cfg(cfg: dict[str, Any], n: int) -> dict[str, Any]:
    """`cfg` with a data entry for level n: what its images (and so its features) depend on."""
    rc = settings(cfg)
    out = copy.copy(cfg)
    out["data"] = {**cfg["data"], distractor_name(n): {**cfg["data"].get(SOURCE, {}), "n_extra": int(n),
                                                      "distractor_seed": int(rc["distractor_seed"])}}
    return out


def _source_stamp(cfg: dict[str, Any], n: int) -> dict[str, Any]:
    from fga.features.store import data_hash

    return {"source_data_hash": data_hash(Path("data") / SOURCE / "dataset.json"),
            "params": distractor_cfg(cfg, n)["data"][distractor_name(n)]}


def make_distractor_data(cfg: dict[str, Any], n: int, quiet: bool = True, force: bool = True) -> Path:
    """data/synthetic_distract<n>/: the synthetic test images with n extra distractors (atomically)."""
    from fga.data.synthetic import add_distractors

    if int(n) < 0:
        raise UserError(f"--n must be a non-negative number of distractors, got {n}")
    src, out = Path("data") / SOURCE, Path("data") / distractor_name(n)
    if not (src / "dataset.json").exists():
        raise UserError(f"{src / 'dataset.json'} not found; run `fga data prepare --dataset {SOURCE}` first")
    stamp = _source_stamp(cfg, n)
    stamp_path = out / "source.json"
    if not force and (out / "dataset.json").exists() and stamp_path.exists() and read_json(stamp_path) == stamp:
        return out
    add_distractors(src, out, int(n), seed=int(settings(cfg)["distractor_seed"]), split="test")
    write_json(stamp_path, stamp)
    if not quiet:
        print(f"{out}: test images with {n} extra distractors")
    return out


def make_distractor_features(cfg: dict[str, Any], n: int, backbone: str, quiet: bool = True) -> Path:
    """features/synthetic_distract<n>/<backbone>/test.h5 (the data level is (re)made first when missing or stale)."""
    from fga.features.build import build_features

    data_dir = make_distractor_data(cfg, n, quiet=quiet, force=False)
    name = distractor_name(n)
    out_dir = Path("features") / name / backbone
    build_features(distractor_cfg(cfg, n), name, backbone, data_dir, out_dir, splits=("test",), quiet=quiet)
    return out_dir / "test.h5"


# ------------------------------------------------------------------------------------------- the stage


def _saved_matrix(results_dir: Path | None, split: str, shape: tuple[int, int],
                  state: dict[str, Any]) -> np.ndarray | None:
    """The evaluate stage's saved matrix when it is there and was computed by these weights."""
    if results_dir is None:
        return None
    path, meta_path = matrix_path(results_dir, split), Path(results_dir) / "metrics.json"
    if not path.exists() or not meta_path.exists():
        return None
    meta = read_json(meta_path, "metrics.json").get("matrix") or {}
    if meta.get("checkpoint") != weights_digest(state) or tuple(meta.get("shape", ())) != tuple(shape):
        return None
    return load_matrix(path, shape)


def split_matrix(cfg: dict[str, Any], run: LoadedRun, results_dir: Path | None, split: str,
                quiet: bool) -> tuple[np.ndarray, Any, bool]:
    """(the split's matrix, its encoded captions, whether the evaluate stage's saved matrix was reused)."""
    sim = _saved_matrix(results_dir, split, (run.data.n_images, len(run.data.tokens)), run.state)
    if sim is None:
        sim, _, _, txt = score_split(cfg, run.model, run.data, run.device, quiet)
        return sim, txt, False
    return sim, encode_texts(run.model, run.data.tokens, run.data.lengths, run.device), True


def clutter_breakdown(rc: dict[str, Any], dataset: str, split: str, data: SplitInputs, sim: np.ndarray,
                      ranks: tuple[np.ndarray, np.ndarray], cpi: int, bs: dict[str, Any]) -> dict[str, Any]:
    """robustness.json's clutter entries: `bin_spec` (as applied), `bin_spec_requested`, `bins`, `cluttered` and
    `clutter_note` (why there are no bins, when the split's images have no instances)."""
    from fga.data.synthetic import clutter_counts

    instances = Path("data") / dataset / "instances.json"
    all_counts = clutter_counts(instances)
    counts = {i: int(all_counts.get(i, 0)) for i in data.image_ids}
    requested = bin_spec(rc, dataset)
    if not any(counts.values()):
        # no instance boxes for these images (precomputed features, Flickr30K without Entities): nothing to bin
        return {"bin_spec": None, "bin_spec_requested": requested, "bins": {}, "cluttered": None,
                "clutter_note": f"{instances}: no instances for the {split} images, so clutter bins do not apply"}
    spec = requested
    distinct = len(set(counts.values()))
    if isinstance(spec, dict) and "equal_count" in spec and spec["equal_count"] > distinct:
        spec = {"equal_count": distinct}  # a tiny test split may not have k distinct clutter levels
    per_bin = per_bin_metrics(sim, data.image_ids, counts, make_bins(counts, spec), cpi, ranks=ranks, bootstrap=bs)
    clut = cluttered_bin(counts, float(rc["cluttered_quantile"]))
    cluttered = per_bin_metrics(sim, data.image_ids, counts, [clut], cpi, ranks=ranks, bootstrap=bs)[clut.label]
    return {"bin_spec": spec, "bin_spec_requested": requested, "bins": per_bin, "cluttered": cluttered,
            "clutter_note": None}


def distractor_levels(cfg: dict[str, Any], rc: dict[str, Any], run: LoadedRun, backbone: str, txt: Any,
                      overall: dict[str, Any], quiet: bool, bs: dict[str, Any], ties: str) -> list[dict[str, Any]]:
    """The distractor curve of the synthetic test split: level 0 (the test set itself), then each level n, ranked
    with tie rule `ties`."""
    # level 0 is the test set itself: the same ranks as `overall`, so the same block
    curve = [{"n_extra": 0, "n_images": run.data.n_images, **overall}]
    for n in sorted(rc["distractors"]):
        curve.append({"n_extra": int(n), **distractor_metrics(cfg, run.model, run.state, backbone, n,
                                                               run.data.image_ids, txt, run.cpi, run.device, quiet,
                                                               ties, bs)})
    return curve


def robustness(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int, checkpoint: Path,
               quiet: bool = False, results_dir: Path | None = None) -> dict[str, Any]:
    """The robustness.json dict of one run (see the module docstring)."""
    cfg = for_dataset(cfg, dataset)  # the dataset's own evaluate settings (evaluate.per_dataset), everywhere below
    ec, rc, bs = eval_settings(cfg), settings(cfg), bootstrap_options(cfg)
    split = ec["split"]
    run = load_run(cfg, dataset, backbone, method, seed, checkpoint, split)
    n_img, cpi = run.data.n_images, run.cpi
    sim, txt, reused = split_matrix(cfg, run, results_dir, split, quiet)
    ties = tie_rule_of(ec)  # the evaluate stage's rule, so both files rank alike
    ranks = query_ranks(sim, cpi, ties)
    clutter = clutter_breakdown(rc, dataset, split, run.data, sim, ranks, cpi, bs)
    overall = recall_block(*ranks, cpi, bs)
    curve = []
    if dataset == SOURCE and split == "test":
        curve = distractor_levels(cfg, rc, run, backbone, txt, overall, quiet, bs, ties)
    return {
        "protocol": "coco5k" if dataset.startswith("coco") and n_img == 5000 else "full",
        "split": split,
        "ties": ties,
        "n_images": n_img,
        "caps_per_image": cpi,
        "weights_source": str(run.data.attrs.get("weights_source", "unknown")),
        "bin_spec": clutter["bin_spec"],
        "bin_spec_requested": clutter["bin_spec_requested"],
        "bins": clutter["bins"],
        "n_unbinned": n_img - sum(b["n_images"] for b in clutter["bins"].values()),
        "cluttered": clutter["cluttered"],
        "clutter_note": clutter["clutter_note"],
        "overall": overall,
        "distractors": curve,
        "matrix_reused": reused,
    }


def distractor_metrics(cfg: dict[str, Any], model, state: dict[str, Any], backbone: str, n: int,
                       image_ids: list[int], txt, cpi: int, device: torch.device, quiet: bool, ties: str,
                       bootstrap: dict[str, Any] | None = None) -> dict[str, Any]:
    """Full-gallery recall (+ bootstrap `ci`) of the test captions against the level-n re-rendered test images,
    ranked with tie rule `ties` (the evaluate stage's, resolved once by :func:`robustness`)."""
    name = distractor_name(n)
    if is_finetune(cfg):
        data_dir = Path("data") / name
        ds = read_json(data_dir / "dataset.json", f"{name} dataset.json")
        images = split_images(ds, "test")
        regions, mask, _ = finetuned_regions(cfg, backbone, state.get("region_source") or {}, data_dir, images, device)
        ids = [int(im["id"]) for im in images]
    else:
        path = Path("features") / name / backbone / "test.h5"
        if not path.exists():
            raise UserError(f"{path} not found; run `fga robustness distractors --n {n} --backbone {backbone}` first")
        regions, mask, ids, _ = store_rows(path, feature_hash(distractor_cfg(cfg, n), name, backbone))
    if ids != list(image_ids):
        raise UserError(f"{name}: its test images differ from the synthetic test split; re-run "
                        f"`fga robustness distractors --n {n} --backbone {backbone}`")
    img = encode_images(model, regions, mask, device)
    sim, _ = timed_matrix(model, img, txt, eval_settings(cfg), quiet, f"distractors {n}")
    return {"n_images": len(ids), **recall_block(*query_ranks(sim, cpi, ties), cpi, bootstrap)}


def mlflow_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The robustness run's MLflow metrics (the contract the report reads), all under the protocol p.

    ``p/clutter/<bin>/<name>`` and ``p/clutter/<bin>/n_images`` for every bin, the ``cluttered``
    subset and ``all`` (every test image); ``p/distractors/<n>/<name>`` per distractor level;
    bin labels sanitised (``16+`` -> ``16plus``); names i2t_R1 ... t2i_R10, rsum (+ medr, meanr);
    CI bounds as ``<block>/ci/<name>_lo`` and ``_hi``, as the evaluate stage logs them.
    """
    p = result["protocol"]
    rows = {f"{p}/clutter/{sanitize(label)}": row for label, row in result["bins"].items()}
    if result["cluttered"] is not None:  # None: no instances, no clutter bins
        rows[f"{p}/clutter/cluttered"] = result["cluttered"]
    rows[f"{p}/clutter/all"] = {**result["overall"], "n_images": result["n_images"]}
    rows.update({f"{p}/distractors/{row['n_extra']}": row for row in result["distractors"]})
    flat = {f"{key}/n_images": float(row["n_images"]) for key, row in rows.items() if key.startswith(f"{p}/clutter/")}
    # the evaluate stage's flattening (recalls + ci/<name>_lo/_hi), with each block's key prefix as its "protocol"
    flat.update(evaluate_mlflow_metrics({"protocols": {k: r for k, r in rows.items() if r.get("i2t") is not None}}))
    return flat
