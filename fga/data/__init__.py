"""Datasets: preparation into the dataset.json / instances.json contracts (DESIGN.md)."""
from __future__ import annotations

from typing import Any

# Karpathy's "restval" images are training images (COCO's 113,287-image train set).
SPLIT_MEMBERS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def split_images(dataset: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The dataset.json image entries of one split, in file order."""
    members = SPLIT_MEMBERS.get(split, (split,))
    return [im for im in dataset["images"] if im["split"] in members]
