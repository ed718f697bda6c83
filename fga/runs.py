"""A training run, (dataset, backbone, method, seed): the params it depends on, their hash, and its model."""
from __future__ import annotations

from typing import Any

from fga.config import params_hash
from fga.features.store import feature_hash
from fga.inputs import vocab_size
from fga.models.base import RetrievalModel
from fga.models.registry import build_model, method_section

# settings of *how* a run computes, not *what* it learns: changing them keeps its checkpoint
EXECUTION_ONLY = ("device", "num_workers")


def run_params(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int) -> dict[str, Any]:
    """Everything a trained model depends on (recorded in its checkpoint)."""
    return {"train": {k: v for k, v in cfg["train"].items() if k not in EXECUTION_ONLY},
            "method": cfg["methods"].get(method, {}), "features": feature_hash(cfg, dataset, backbone),
            "text": cfg["features"]["text"], "data": cfg["data"].get(dataset, {}),
            "key": [dataset, backbone, method, seed]}


def run_hash(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int) -> str:
    """Hash of `run_params`; a checkpoint with another hash is never resumed or reused."""
    return params_hash(run_params(cfg, dataset, backbone, method, seed))


def build_for(cfg: dict[str, Any], method: str, dataset: str, backbone: str, img_dim: int) -> RetrievalModel:
    """A freshly initialised model of `method` for regions of `img_dim` and the dataset's vocabulary."""
    return build_model(method, method_section(cfg, method, backbone), img_dim=img_dim,
                       vocab_size=vocab_size(dataset, backbone))
