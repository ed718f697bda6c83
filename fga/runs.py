"""A training run, (dataset, backbone, method, seed): the params it depends on, their hash, and its model."""
from __future__ import annotations

from typing import Any

from fga.config import params_hash
from fga.features.store import feature_hash
from fga.features.text import encoder_spec
from fga.grid import run_text_encoder
from fga.inputs import text_encoder_spec, vocab_size
from fga.models.base import RetrievalModel
from fga.models.registry import build_model, method_section
from fga.models.text_encoder import BIGRU

# settings of *how* a run computes, not *what* it learns: changing them keeps its checkpoint
EXECUTION_ONLY = ("device", "num_workers")


def text_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """The caption settings a run depends on: the vocabulary's, plus the spec of its transformer encoder if any (a
    BiGRU run's params, and hash, are what they were before transformer encoders existed)."""
    text = {k: v for k, v in cfg["features"]["text"].items() if k != "encoders"}
    name = run_text_encoder(cfg)
    return text if name == BIGRU else {**text, "encoder": {name: encoder_spec(cfg, name)}}


def run_params(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int) -> dict[str, Any]:
    """Everything a trained model depends on (recorded in its checkpoint)."""
    return {"train": {k: v for k, v in cfg["train"].items()
                      if k not in EXECUTION_ONLY and not (k == "text_encoder" and v == BIGRU)},
            "method": cfg["methods"].get(method, {}), "features": feature_hash(cfg, dataset, backbone),
            "text": text_params(cfg), "data": cfg["data"].get(dataset, {}),
            "key": [dataset, backbone, method, seed]}


def run_hash(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int) -> str:
    """Hash of `run_params`; a checkpoint with another hash is never resumed or reused."""
    return params_hash(run_params(cfg, dataset, backbone, method, seed))


def build_for(cfg: dict[str, Any], method: str, dataset: str, backbone: str, img_dim: int) -> RetrievalModel:
    """A freshly initialised model of `method` for regions of `img_dim` and the run's text encoder
    (`train.text_encoder`; the BiGRU over the dataset's vocabulary by default)."""
    spec = text_encoder_spec(cfg)
    return build_model(method, method_section(cfg, method, backbone), img_dim=img_dim,
                       vocab_size=0 if spec.is_transformer else vocab_size(dataset, backbone), text_encoder=spec)
