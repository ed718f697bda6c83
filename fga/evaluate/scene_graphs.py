"""The evaluate stage's metrics that need the split's scene graphs: recall and mAP@R over exhaustive positives
(fga.evaluate.positives) and the near-miss binding probes (fga.evaluate.probes). A dataset without scene
graphs (COCO, Flickr30K, precomputed features) gets neither, and its metrics.json is unchanged."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fga.evaluate.positives import mlflow_positives, positives_metrics, split_positives
from fga.evaluate.probes import binding_metrics, mlflow_binding
from fga.evaluate.recall import tie_rule_of
from fga.inputs import paths
from fga.models.base import Encoded, RetrievalModel


def scene_graph_metrics(cfg: dict[str, Any], dataset: str, backbone: str, model: RetrievalModel, device: torch.device,
                        image_ids: list[int], sim: np.ndarray, img: Encoded) -> dict[str, Any]:
    """`positives` and `binding` blocks for metrics.json (`cfg` already narrowed to the dataset); {} without
    scene graphs. `sim` is the split's whole matrix and `img` its encoded images."""
    from fga.config import evaluation_section

    ec = evaluation_section(cfg, dataset)
    split = ec.get("split", "test")
    p = paths(dataset, backbone)
    positives = split_positives(p["dataset_json"], split, image_ids)
    if positives is None:
        return {}
    return {"positives": positives_metrics(sim, positives, tie_rule_of(ec)),
            "binding": binding_metrics(cfg, p["dataset_json"], p["vocab"], split, image_ids, model, img, device)}


def scene_graph_mlflow(metrics: dict[str, Any]) -> dict[str, float]:
    """Their MLflow metrics: ``positives/...`` and ``binding/<kind>/...`` (none without the blocks)."""
    return {**mlflow_positives(metrics), **mlflow_binding(metrics)}
