"""`fga evaluate`: score a trained run on `evaluate.split` -> metrics.json, ranks.npz (+ MLflow).

One pass: the run's best model encodes every test image and caption once, the full similarity
matrix is computed block by block (fga.evaluate.similarity), and everything else is derived from
it without re-scoring:

* recall under each protocol of `evaluate.protocol` (one name or a list; the first is the
  primary one, written at the top level of metrics.json as before);
* percentile-bootstrap 95% CIs of every recall and rSum (images resampled with their captions,
  fga.evaluate.stats.bootstrap_ci);
* a hubness-corrected column: QB-Norm (DIS) with a query bank of TRAIN images and captions,
  a fixed seeded subset of `evaluate.qbnorm.bank_size` of each (never test queries);
* per-query ranks (ranks.npz) for paired tests across methods (fga.evaluate.stats.paired_test);
* optionally the matrix itself (`evaluate.save_matrix`: float16 | float32 -> sim_<split>.npy);
* attention.json: GRM's region-word alignment of the first `evaluate.attention_maps` images with their
  first caption (fga.evaluate.attention); other methods write it with an empty `maps` and a `reason`.
* GRM-arch runs: `diagnostics` in metrics.json (MLflow `diag/<name>`), what GRM's modules do on the first
  `DIAGNOSTIC_IMAGES` images of the split (fga.models.grm.diagnostics: attention entropy, region distinctness,
  keep ratios, sigma, each level's own R@1 in eval and train mode); other methods' metrics.json has no such key.

COCO 1K ranks are within-fold ranks (each image ranked in its own 1K fold); because the folds have
equal sizes, recalls computed from the concatenated fold ranks equal the 5-fold means, so the
bootstrap CI of coco1k resamples them directly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from fga.config import evaluation_section, for_dataset, merged
from fga.data import split_images
from fga.encoding import encode_images, encode_split, encode_texts
from fga.errors import UserError
from fga.evaluate.hubness import qb_norm_both
from fga.evaluate.recall import (COCO_FOLD_IMAGES, PROTOCOLS, _ranks, evaluate_protocol, mean_metrics,
                                 metrics_from_ranks, tie_rule_of)
from fga.evaluate.scene_graphs import scene_graph_metrics, scene_graph_mlflow
from fga.evaluate.similarity import matrix_path, matrix_sha256, plan_blocks, save_matrix, similarity_matrix
from fga.evaluate.stats import BOOTSTRAP_DEFAULTS, bootstrap_ci, bootstrap_options
from fga.features.store import feature_hash
from fga.features.text import split_captions
from fga.finetune import finetuned_regions
from fga.grid import run_text_encoder
from fga.integrity import check_zip
from fga.inputs import SplitInputs, caps_per_image, is_finetune, load_split, paths, split_texts, store_rows
from fga.io import atomic_path, read_json, write_json
from fga.models.base import RetrievalModel

TIES = "pessimistic"
DIAGNOSTIC_IMAGES = 200  # the review's sample size; diagnostics cost two encodings and three level matrices of these
MLFLOW_NAMES = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "rsum")
DEFAULTS: dict[str, Any] = {
    "split": "test",
    "protocol": "full",
    "memory_budget_mb": 4096,
    "block_images": None,
    "block_captions": None,
    "save_matrix": "none",
    "attention_maps": 4,
    "bootstrap": BOOTSTRAP_DEFAULTS,  # owned by fga.evaluate.stats (bootstrap_options)
    "qbnorm": {"enabled": True, "bank_size": {"images": 200, "captions": 1000}, "beta": 20.0, "k": 1,
               "mode": "dis", "seed": 0},
}


def settings(cfg: dict[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """`evaluate` params with the defaults filled in (older params files lack the newer keys) and, for a dataset,
    its `evaluate.per_dataset` entry merged in (the stages pass `for_dataset(cfg, dataset)`, which does that)."""
    return merged(DEFAULTS, evaluation_section(cfg, dataset))


def protocols(ec: dict[str, Any]) -> list[str]:
    """`evaluate.protocol` as a list without duplicates; the first is the primary protocol."""
    raw = ec["protocol"]
    names = [raw] if isinstance(raw, str) else list(raw)
    out: list[str] = []
    for p in names:
        if p not in PROTOCOLS:
            raise UserError(f"evaluate.protocol: unknown protocol {p!r}; use {', '.join(PROTOCOLS)} or a list of them")
        if p not in out:
            out.append(p)
    if not out:
        raise UserError("evaluate.protocol is an empty list; name at least one protocol")
    return out


def sanitize(name: str) -> str:
    """An MLflow-safe key part: '16+' -> '16plus'; only [A-Za-z0-9_.-/ ] is kept."""
    name = str(name).replace("+", "plus").replace("@", "")
    return "".join(c if c.isalnum() or c in "_.-/ " else "_" for c in name)


def flat_metrics(block: dict[str, Any], prefix: str, extra_keys: bool = True) -> dict[str, float]:
    """`{prefix}/i2t_R1 ... {prefix}/rsum` (+ medr/meanr) of a metric dict."""
    out: dict[str, float] = {}
    for d in ("i2t", "t2i"):
        for k, v in block[d].items():
            name = f"{d}_{sanitize(k)}"
            if extra_keys or name in MLFLOW_NAMES:
                out[f"{prefix}/{name}"] = float(v)
    out[f"{prefix}/rsum"] = float(block["rsum"])
    return out


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The evaluate run's MLflow metrics (the contract the report reads).

    For every protocol p: ``p/<name>`` (name in i2t_R1, i2t_R5, i2t_R10, t2i_R1, t2i_R5, t2i_R10,
    rsum, plus i2t_medr, i2t_meanr, t2i_medr, t2i_meanr), ``p/ci/<name>_lo`` and ``p/ci/<name>_hi``
    for the seven recall names, ``qbnorm/p/<name>`` when QB-Norm ran, and ``diag/<name>`` for GRM's diagnostics.
    """
    flat: dict[str, float] = {}
    for p, block in metrics["protocols"].items():
        flat.update(flat_metrics(block, p))
        ci = block.get("ci")
        if ci:
            for d in ("i2t", "t2i"):
                for k, (lo, hi) in ci[d].items():
                    flat[f"{p}/ci/{d}_{sanitize(k)}_lo"] = float(lo)
                    flat[f"{p}/ci/{d}_{sanitize(k)}_hi"] = float(hi)
            flat[f"{p}/ci/rsum_lo"], flat[f"{p}/ci/rsum_hi"] = (float(x) for x in ci["rsum"])
        if block.get("qbnorm"):
            flat.update(flat_metrics(block["qbnorm"], f"qbnorm/{p}"))
    flat.update({f"diag/{k}": float(v) for k, v in (metrics.get("diagnostics") or {}).items()})
    flat.update(scene_graph_mlflow(metrics))  # positives/..., binding/... for datasets with scene graphs
    return flat


# ------------------------------------------------------------------------------------------ loading


def load_state(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int,
               checkpoint: Path) -> dict[str, Any]:
    """The checkpoint, after checking that it was trained with these params."""
    from fga.checkpoint import check_text_encoder, load_checkpoint
    from fga.runs import run_hash

    state = load_checkpoint(checkpoint)
    check_text_encoder(checkpoint, state["meta"], run_text_encoder(cfg))
    if state["meta"].get("run_hash") != run_hash(cfg, dataset, backbone, method, seed):
        raise UserError(f"{checkpoint}: trained with other params than the current config; re-run `fga train`")
    return state


def load_model(cfg: dict[str, Any], dataset: str, backbone: str, method: str, state: dict[str, Any], img_dim: int,
               device: torch.device) -> RetrievalModel:
    """The checkpoint's best model on `device`, in eval mode."""
    from fga.runs import build_for

    model = build_for(cfg, method, dataset, backbone, img_dim).to(device)
    model.load_state_dict(state["model"])
    return model.eval()


def device_of(cfg: dict[str, Any]) -> torch.device:
    from fga.device import pick_device

    return pick_device(cfg["train"].get("device", "auto"))


def split_inputs(cfg: dict[str, Any], dataset: str, backbone: str, split: str, state: dict[str, Any],
                 device: torch.device) -> SplitInputs:
    """The split's regions (store or fine-tuned backbone) and captions."""
    if not is_finetune(cfg):
        return load_split(cfg, dataset, backbone, split)
    p = paths(dataset, backbone)
    ds = read_json(p["dataset_json"], "dataset.json")
    images = split_images(ds, split)
    if not images:
        raise UserError(f"{p['dataset_json']}: no {split!r} images")
    regions, mask, attrs = finetuned_regions(cfg, backbone, state.get("region_source") or {}, p["dataset_json"].parent,
                                             images, device)
    tokens, lengths = split_texts(cfg, dataset, backbone, split, ds)
    return SplitInputs(regions, mask, tokens, lengths, [im["id"] for im in images],
                       {"dataset": dataset, **attrs})


def query_bank(cfg: dict[str, Any], dataset: str, backbone: str, qb: dict[str, Any], state: dict[str, Any],
               device: torch.device, exclude_ids: set[int]) -> dict[str, Any]:
    """A fixed, seeded subset of TRAIN images (regions) and TRAIN captions (tokens) for QB-Norm."""
    p = paths(dataset, backbone)
    ds = read_json(p["dataset_json"], "dataset.json")
    train = split_images(ds, "train")
    if not train:
        raise UserError(f"{p['dataset_json']}: no train images for the QB-Norm query bank; "
                        "set evaluate.qbnorm.enabled: false")
    _, captions = split_captions(ds, "train")
    size = qb["bank_size"]
    rng = np.random.default_rng(int(qb.get("seed", 0)))
    img_rows = np.sort(rng.choice(len(train), size=min(int(size["images"]), len(train)), replace=False))
    cap_rows = np.sort(rng.choice(len(captions), size=min(int(size["captions"]), len(captions)), replace=False))
    if is_finetune(cfg):
        regions, mask, _ = finetuned_regions(cfg, backbone, state.get("region_source") or {}, p["dataset_json"].parent,
                                             [train[i] for i in img_rows], device)
        ids = [int(train[i]["id"]) for i in img_rows]
    else:
        regions, mask, ids, _ = store_rows(p["features"] / "train.h5", feature_hash(cfg, dataset, backbone),
                                           img_rows.tolist())
        if ids != [int(train[i]["id"]) for i in img_rows]:
            raise UserError(f"{p['features'] / 'train.h5'}: image ids differ from {p['dataset_json']}; "
                            "re-run `fga features extract`")
    caption_image = [int(im["id"]) for im in train for _ in im["sentences"][:5]]  # split_captions' order
    caption_ids = {caption_image[j] for j in cap_rows}
    if exclude_ids & (set(ids) | caption_ids):
        raise UserError("the QB-Norm query bank overlaps the evaluated split; check the dataset's splits")
    tokens, lengths = split_texts(cfg, dataset, backbone, "train", ds, cap_rows.tolist())
    return {"regions": regions, "mask": mask, "tokens": tokens, "lengths": lengths,
            "n_images": len(ids), "n_captions": len(cap_rows)}


# ------------------------------------------------------------------------------------------ scoring


def _folds(n_img: int, protocol: str) -> list[slice]:
    if protocol == "coco1k":
        size = COCO_FOLD_IMAGES
        return [slice(f * size, (f + 1) * size) for f in range(n_img // size)]
    return [slice(0, n_img)]


def protocol_ranks(sim: np.ndarray, protocol: str, cpi: int, ties: str = TIES) -> tuple[np.ndarray, np.ndarray]:
    """Per-query ranks under a protocol, in image / caption order (coco1k: ranks within each fold)."""
    i2t, t2i = [], []
    for f in _folds(sim.shape[0], protocol):
        sub = sim[f, f.start * cpi : f.stop * cpi]
        a, b = _ranks(sub, cpi, ties, True, True)
        i2t.append(a)
        t2i.append(b)
    return np.concatenate(i2t), np.concatenate(t2i)


def qbnorm_protocol(sim: np.ndarray, bank_t2i: np.ndarray, bank_i2t: np.ndarray, protocol: str, cpi: int,
                    qb: dict[str, Any], ties: str = TIES) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """QB-Norm metrics under a protocol (coco1k: the bank normalises each fold's own gallery)."""
    i2t_all, t2i_all, folds = [], [], []
    for f in _folds(sim.shape[0], protocol):
        caps = slice(f.start * cpi, f.stop * cpi)
        s_i2t, s_t2i = qb_norm_both(sim[f, caps], np.ascontiguousarray(bank_t2i[:, f]),
                                    np.ascontiguousarray(bank_i2t[:, caps]),
                                    beta=float(qb["beta"]), k=int(qb["k"]), mode=qb["mode"])
        i2t, _ = _ranks(s_i2t, cpi, ties, True, False)
        _, t2i = _ranks(s_t2i, cpi, ties, False, True)
        i2t_all.append(i2t)
        t2i_all.append(t2i)
        folds.append(metrics_from_ranks(i2t, t2i))
    out = mean_metrics(folds) if len(folds) > 1 else folds[0]
    return out, (np.concatenate(i2t_all), np.concatenate(t2i_all))


def timed_matrix(model: RetrievalModel, img: Any, txt: Any, ec: dict[str, Any], quiet: bool,
                 desc: str) -> tuple[np.ndarray, dict[str, Any]]:
    """(matrix, its block plan and wall time); the time is for the log only, never for a results file."""
    plan = plan_blocks(model, img, txt, ec["memory_budget_mb"], ec["block_images"], ec["block_captions"])
    t0 = time.perf_counter()
    sim = similarity_matrix(model, img, txt, plan.block_images, plan.block_captions, quiet=quiet,
                            memory_budget_mb=ec["memory_budget_mb"], desc=desc)
    dt = max(time.perf_counter() - t0, 1e-9)
    return sim, {"block_images": plan.block_images, "block_captions": plan.block_captions,
                 "pairs": int(sim.size), "seconds": round(dt, 3), "pairs_per_s": round(sim.size / dt, 1)}


def score_split(cfg: dict[str, Any], model: RetrievalModel, data: SplitInputs, device: torch.device,
                quiet: bool = True) -> tuple[np.ndarray, dict[str, Any], Any, Any]:
    """(matrix, timing, encoded images, encoded captions) of a split."""
    ec = settings(cfg)
    img, txt = encode_split(model, data, device)
    sim, timing = timed_matrix(model, img, txt, ec, quiet, "similarity")
    return sim, timing, img, txt


@dataclass
class LoadedRun:
    """A trained run ready to score: its checkpoint, device, split inputs and best model."""

    state: dict[str, Any]
    device: torch.device
    data: SplitInputs
    model: RetrievalModel

    @property
    def cpi(self) -> int:
        return caps_per_image(self.data)


def load_run(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int, checkpoint: Path,
             split: str) -> LoadedRun:
    """The checkpoint (checked against the params), its best model and the split's inputs, on the params' device."""
    torch.set_num_threads(cfg["train"].get("threads", 1))
    state = load_state(cfg, dataset, backbone, method, seed, checkpoint)
    device = device_of(cfg)
    data = split_inputs(cfg, dataset, backbone, split, state, device)
    model = load_model(cfg, dataset, backbone, method, state, int(data.regions.shape[-1]), device)
    return LoadedRun(state, device, data, model)


def score_query_bank(cfg: dict[str, Any], dataset: str, backbone: str, run: LoadedRun, img: Any, txt: Any,
                     quiet: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """QB-Norm's TRAIN query bank against the test gallery: (bank captions x test images, bank images x test
    captions, the bank's description for metrics.json); None when `evaluate.qbnorm` is off."""
    ec = settings(cfg)
    qb = ec["qbnorm"]
    if not qb["enabled"]:
        return None
    bank = query_bank(cfg, dataset, backbone, qb, run.state, run.device, set(run.data.image_ids))
    bank_img = encode_images(run.model, bank["regions"], bank["mask"], run.device)
    bank_txt = encode_texts(run.model, bank["tokens"], bank["lengths"], run.device)
    bank_i2t, _ = timed_matrix(run.model, bank_img, txt, ec, quiet, "QB-Norm bank (train images)")
    bank_t2i, _ = timed_matrix(run.model, img, bank_txt, ec, quiet, "QB-Norm bank (train captions)")
    info = {"split": "train", "n_images": bank["n_images"], "n_captions": bank["n_captions"],
            "beta": float(qb["beta"]), "k": int(qb["k"]), "mode": qb["mode"], "seed": int(qb.get("seed", 0))}
    return np.ascontiguousarray(bank_t2i.T), bank_i2t, info


def rank_protocols(cfg: dict[str, Any], sim: np.ndarray, names: list[str], cpi: int,
                   bank: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Per protocol: its metrics block (recalls, bootstrap `ci`, `qbnorm` with a bank) and its per-query ranks
    (`<protocol>_i2t`/`_t2i`, `qbnorm_<protocol>_*`)."""
    bs = bootstrap_options(cfg)
    ties = tie_rule_of(settings(cfg))  # evaluate.tie_rule; every block records it under "ties"
    blocks: dict[str, dict[str, Any]] = {}
    ranks: dict[str, np.ndarray] = {}
    for p in names:
        block = evaluate_protocol(sim, p, cpi, ties)
        i2t, t2i = protocol_ranks(sim, p, cpi, ties)
        ranks[f"{p}_i2t"], ranks[f"{p}_t2i"] = i2t, t2i
        block["ci"] = bootstrap_ci(i2t, t2i, cpi, **bs)
        if bank is not None:
            bank_t2i, bank_i2t, _ = bank
            block["qbnorm"], (q_i2t, q_t2i) = qbnorm_protocol(sim, bank_t2i, bank_i2t, p, cpi, settings(cfg)["qbnorm"],
                                                                ties)
            ranks[f"qbnorm_{p}_i2t"], ranks[f"qbnorm_{p}_t2i"] = q_i2t, q_t2i
        blocks[p] = block
    return blocks, ranks


def write_outputs(out_dir: Path, cfg: dict[str, Any], dataset: str, backbone: str, method: str, run: LoadedRun,
                  sim: np.ndarray, ranks: dict[str, np.ndarray], primary: str, n_attention: int) -> dict[str, Any] | None:
    """ranks.npz, attention.json and (`evaluate.save_matrix`) sim_<split>.npy; the saved matrix's metrics.json entry."""
    ec = settings(cfg)
    out_dir = Path(out_dir)
    ranks = {**ranks, "i2t": ranks[f"{primary}_i2t"], "t2i": ranks[f"{primary}_t2i"]}
    write_ranks(out_dir / "ranks.npz", ranks, run.data.image_ids, run.cpi, primary)
    write_attention(out_dir / "attention.json", cfg, dataset, backbone, method, run.model, run.data, n_attention,
                    ec["split"])
    saved = save_matrix(matrix_path(out_dir, ec["split"]), sim, ec["save_matrix"])
    if saved is None:
        return None
    return {"file": saved.name, "dtype": ec["save_matrix"], "shape": list(sim.shape),
            "checkpoint": weights_digest(run.state), "sha256": matrix_sha256(saved)}


def module_diagnostics(run: LoadedRun) -> dict[str, float] | None:
    """GRM's module diagnostics on the run's split (names without the `grm/` prefix); None for other models."""
    from fga.models.grm import GRM
    from fga.models.grm.diagnostics import PREFIX, grm_diagnostics

    if not isinstance(run.model, GRM):
        return None
    d = run.data
    out = grm_diagnostics(run.model, d.regions, d.mask, d.tokens, d.lengths, run.cpi, max_images=DIAGNOSTIC_IMAGES)
    return {k.removeprefix(PREFIX): v for k, v in out.items()}


def evaluate(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int, checkpoint: Path,
             quiet: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    """Metrics of the checkpoint's best model (the metrics.json dict).

    With `out_dir`, ranks.npz, attention.json (and sim_<split>.npy when `evaluate.save_matrix` is set)
    are written there, atomically.
    """
    from fga.evaluate.attention import n_maps

    cfg = for_dataset(cfg, dataset)  # every helper below then reads this dataset's evaluate settings
    ec = settings(cfg)
    names = protocols(ec)
    n_attention = n_maps(ec)
    run = load_run(cfg, dataset, backbone, method, seed, checkpoint, ec["split"])
    sim, timing, img, txt = score_split(cfg, run.model, run.data, run.device, quiet)
    bank = score_query_bank(cfg, dataset, backbone, run, img, txt, quiet)
    blocks, ranks = rank_protocols(cfg, sim, names, run.cpi, bank)
    primary = names[0]
    metrics: dict[str, Any] = dict(blocks[primary])
    metrics.update({
        "protocol": primary,
        "protocols": blocks,
        "split": ec["split"],
        "n_images": run.data.n_images,
        "caps_per_image": run.cpi,
        "best_epoch": run.state["meta"]["best"]["epoch"],
        "weights_source": str(run.data.attrs.get("weights_source", "unknown")),
        "qbnorm_bank": None if bank is None else bank[2],
        "similarity": {"block_images": timing["block_images"], "block_captions": timing["block_captions"],
                       "memory_budget_mb": ec["memory_budget_mb"]},
    })
    print(f"similarity: {timing['pairs']} pairs in {timing['seconds']} s ({timing['pairs_per_s']:.3g} pairs/s, "
          f"blocks {timing['block_images']} x {timing['block_captions']})", flush=True)
    diagnostics = module_diagnostics(run)
    if diagnostics is not None:
        metrics["diagnostics"] = diagnostics
    metrics.update(scene_graph_metrics(cfg, dataset, backbone, run.model, run.device, run.data.image_ids, sim, img))
    if out_dir is not None:
        matrix = write_outputs(out_dir, cfg, dataset, backbone, method, run, sim, ranks, primary, n_attention)
        if matrix is not None:
            metrics["matrix"] = matrix
    return metrics


def write_attention(path: Path, cfg: dict[str, Any], dataset: str, backbone: str, method: str,
                    model: RetrievalModel, data: SplitInputs, n: int, split: str) -> dict[str, Any]:
    """attention.json of a run (fga.evaluate.attention.attention_record), written atomically; returns it."""
    from fga.evaluate.attention import attention_record

    store = None if is_finetune(cfg) else paths(dataset, backbone)["features"] / f"{split}.h5"
    record = attention_record(cfg, dataset, method, model, data, n, split, store)
    write_json(path, record)
    return record


def weights_digest(state: dict[str, Any]) -> str:
    """sha256 (first 16 hex digits) of a checkpoint's best weights: ties a saved matrix to the model that scored it.
    The weights, not the file: a checkpoint also records each epoch's wall time, which differs on every rerun."""
    import hashlib

    digest = hashlib.sha256()
    for part in ("model", "region_source"):
        for name, tensor in sorted((state.get(part) or {}).items()):
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{part}.{name}:{flat.dtype}:{list(tensor.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def write_ranks(path: Path, ranks: dict[str, np.ndarray], image_ids: list[int], cpi: int, primary: str) -> None:
    """ranks.npz: `i2t`/`t2i` (primary protocol), `<protocol>_i2t`/`_t2i`, `qbnorm_<protocol>_*`, image ids."""
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in ranks.items()}
    arrays["image_ids"] = np.asarray(image_ids, dtype=np.int64)
    arrays["caps_per_image"] = np.asarray(cpi, dtype=np.int64)
    arrays["protocol"] = np.asarray(primary)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


class RanksFile(NamedTuple):
    """One protocol's per-query ranks from ranks.npz, with the test images they rank."""

    i2t: np.ndarray
    t2i: np.ndarray
    caps_per_image: int
    image_ids: np.ndarray


def load_ranks(path: Path, protocol: str | None = None) -> RanksFile:
    """A protocol's ranks (None = the primary one) and the image ids from ranks.npz, in one read."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: ranks not found; run `fga evaluate` first")
    check_zip(path, "fga evaluate")
    with np.load(path) as z:
        prefix = "" if protocol is None else f"{protocol}_"
        if f"{prefix}i2t" not in z:
            raise UserError(f"{path}: no ranks for protocol {protocol!r}; add it to evaluate.protocol and re-run")
        return RanksFile(z[f"{prefix}i2t"], z[f"{prefix}t2i"], int(z["caps_per_image"]), z["image_ids"])


def read_ranks(path: Path, protocol: str | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(i2t ranks, t2i ranks, caps_per_image) from ranks.npz; `protocol` None = the primary one."""
    ranks = load_ranks(path, protocol)
    return ranks.i2t, ranks.t2i, ranks.caps_per_image
