"""MLflow params of a run: the resolved options it ran with, flattened to ``section.key`` names and cut to
MLflow's limits (a value of at most ``MAX_PARAM_VAL_LENGTH`` characters, 100 params a call)."""
from __future__ import annotations

from typing import Any, Iterator

TRUNCATED_MARK = "...[truncated]"


def resolved_run_params(cfg: dict[str, Any], backbone: str, method: str) -> dict[str, Any]:
    """What a run ran with: its method options (``per_backbone`` applied), the training options, and the
    feature options of its backbone (an image backbone's, or a precomputed source's) and of the text side;
    logged as ``method.*``, ``train.*``, ``features.<backbone>.*`` and ``features.text.*``."""
    from fga.features.store import precomp_specs
    from fga.models.registry import method_section

    features = cfg.get("features", {})
    spec = features.get("backbones", {}).get(backbone) or precomp_specs(cfg).get(backbone, {})
    return {"method": method_section(cfg, method, backbone),
            "train": cfg.get("train", {}),
            "features": {backbone: spec, "text": features.get("text", {})}}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def param_value(value: Any, limit: int) -> str:
    """``str(value)``, cut to `limit` characters with a visible mark when longer (MLflow refuses longer values)."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - len(TRUNCATED_MARK)] + TRUNCATED_MARK


def param_batches(params: dict[str, Any]) -> Iterator[list[Any]]:
    """The flattened params as lists of ``mlflow.entities.Param``, each list one ``log_batch`` call."""
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    rows = [Param(k, param_value(v, MAX_PARAM_VAL_LENGTH)) for k, v in flatten(params).items()]
    for i in range(0, len(rows), MAX_PARAMS_TAGS_PER_BATCH):
        yield rows[i : i + MAX_PARAMS_TAGS_PER_BATCH]
