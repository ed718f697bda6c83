"""`fga features extract`: one backbone, every split -> features/<dataset>/<backbone>/<split>.h5."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fga.config import params_hash
from fga.features.store import StoreWriter
from fga.data import split_images
from fga.features.visual import ImageBoxes, RegionExtractor, collate, load_instances
from fga.io import read_json

SPLITS = ("train", "val", "test")


def feature_hash(cfg: dict[str, Any], dataset: str, backbone: str) -> str:
    """What a store depends on: the backbone spec and the dataset's own params."""
    return params_hash({"backbone": cfg["features"]["backbones"][backbone], "data": cfg["data"].get(dataset, {})})


def stored_hash(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("params_hash")
    except OSError:
        return None


def extract(cfg: dict[str, Any], dataset: str, backbone: str, data_dir: Path, out_dir: Path,
            splits: tuple[str, ...] = SPLITS, quiet: bool = False) -> None:
    from fga.errors import UserError

    if backbone not in cfg["features"]["backbones"]:
        known = ", ".join(cfg["features"]["backbones"])
        raise UserError(f"params.yaml: backbone {backbone!r} not under features.backbones; known: {known}")
    spec = cfg["features"]["backbones"][backbone]
    torch.manual_seed(0)  # random-init backbones are reproducible too
    extractor = RegionExtractor(spec)
    n_regions = spec["grid_size"] ** 2 if spec["regions"] == "grid" else spec.get("max_regions", 36)
    attrs = {
        "backbone": backbone,
        "model": spec["model"],
        "region_source": "grid" if spec["regions"] == "grid" else "gt_boxes",
        "weights_source": extractor.weights_source,
        "feature_dim": extractor.feature_dim,
        "params_hash": feature_hash(cfg, dataset, backbone),
        "dataset": dataset,
    }
    dataset_json = read_json(data_dir / "dataset.json", "dataset.json")
    coco = load_instances(data_dir / "instances.json")
    for split in splits:
        images = ImageBoxes(data_dir, split_images(dataset_json, split), coco, extractor.transform(), max_boxes=n_regions)
        path = out_dir / f"{split}.h5"
        if path.exists() and stored_hash(path) == attrs["params_hash"]:
            continue  # idempotent rerun; a store of other params is rebuilt (the old file stays until the rename)
        images.check_readable()
        writer = StoreWriter(path, len(images), n_regions, extractor.feature_dim, attrs)
        bs = cfg["features"]["batch_size"]
        start = writer.rows_done - writer.rows_done % bs  # resume at a batch boundary
        subset = torch.utils.data.Subset(images, range(start, len(images)))
        loader = torch.utils.data.DataLoader(subset, batch_size=bs, num_workers=cfg["features"].get("num_workers", 0),
                                             collate_fn=collate)
        bar = tqdm(total=len(images), initial=start, desc=f"{backbone}/{split}", unit="img", disable=quiet)
        for batch_images, boxes, ids in loader:
            fmap = extractor.feature_map(batch_images)
            b = len(ids)
            regions = np.zeros((b, n_regions, extractor.feature_dim), np.float32)
            out_boxes = np.zeros((b, n_regions, 4), np.float32)
            mask = np.zeros((b, n_regions), bool)
            if spec["regions"] == "grid":
                tokens, grid_boxes = extractor.grid_regions(fmap, spec["grid_size"])
                regions[:] = tokens.numpy()
                out_boxes[:] = grid_boxes.numpy()
                mask[:] = True
            else:
                for i, feats in enumerate(extractor.roi_regions(fmap, boxes)):
                    n = len(feats)
                    regions[i, :n] = feats.numpy()
                    out_boxes[i, :n] = boxes[i].numpy()
                    mask[i, :n] = True
            writer.write(start, regions, out_boxes, mask, ids.numpy())
            start += b
            bar.update(b)
        bar.close()
        writer.finish()
