"""`fga evaluate`: score a trained run on the test split -> metrics.json (+ MLflow)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fga.evaluate.encode import caps_per_image, encode_split, load_split
from fga.evaluate.recall import evaluate_protocol
from fga.evaluate.similarity import similarity_matrix
from fga.train import build, load_checkpoint, pick_device, run_hash
from fga.errors import UserError


def evaluate(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int, checkpoint: Path,
             quiet: bool = False) -> dict[str, Any]:
    """Recall of the checkpoint's best model on `evaluate.split` under `evaluate.protocol`."""
    ec = cfg["evaluate"]
    torch.set_num_threads(cfg["train"].get("threads", 1))
    state = load_checkpoint(checkpoint)
    if state["meta"].get("run_hash") != run_hash(cfg, dataset, backbone, method, seed):
        raise UserError(f"{checkpoint}: trained with other params than the current config; re-run `fga train`")
    data = load_split(cfg, dataset, backbone, ec["split"])
    device = pick_device(cfg["train"].get("device", "auto"))
    model = build(cfg, method, data).to(device)
    model.load_state_dict(state["model"])
    img, txt = encode_split(model, data, device)
    sim = similarity_matrix(model, img, txt, ec["block_images"], ec["block_captions"], quiet=quiet)
    metrics = evaluate_protocol(sim, ec["protocol"], caps_per_image(data))
    metrics["split"] = ec["split"]
    metrics["n_images"] = data.n_images
    metrics["best_epoch"] = state["meta"]["best"]["epoch"]
    metrics["weights_source"] = str(data.attrs.get("weights_source", "unknown"))
    return metrics
