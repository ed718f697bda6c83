"""Image backbones: one backbone, every split -> features/<dataset>/<backbone>/<split>.h5.

A backbone here is a `features.backbones` entry (timm CNN grid / ROI regions, ViT / Swin patch tokens); a
precomputed-feature source under `features.precomp` (BUTD regions) is ingested by fga.data.precomp instead
(fga.features.build picks one of the two). Images are read by a DataLoader (`features.num_workers` workers)
in batches of `features.batch_size`; each batch is one resumable chunk of the store (fga.features.store). A
progress bar shows images/s. Unreadable images are collected while the run goes on (the model stops running
after the first one), then every one of them - in this split and the ones still to do - is reported in one
error, and the split's partial file is removed. ROI (`regions: boxes`) stores record how many images had no
box (`images_without_boxes`: each is one whole-image region); a split where no image has one is refused
before the model is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fga.data import split_images
from fga.errors import UserError
from fga.features.store import (StoreWriter, data_hash, feature_hash, is_current, known_backbones,
                               stored_attrs)
from fga.features.visual import (BOXES_FILE_FORMAT, ImageBoxes, RegionExtractor, box_source, collate_checked,
                                 pixel_boxes)
from fga.io import read_json

SPLITS = ("train", "val", "test")


def stored_hash(path: Path) -> str | None:
    attrs = stored_attrs(path)
    return None if attrs is None else attrs.get("params_hash")


def unreadable_images(data_dir: Path, images: list[dict[str, Any]], num_workers: int = 0) -> list[str]:
    """Decode every image (no model): '<path> (image id N: reason)' for each one that fails."""
    ds = ImageBoxes(data_dir, images, None, lambda pil: torch.zeros(0), max_boxes=1, on_error="report")
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=num_workers, collate_fn=collate_checked)
    return [e for _, _, _, errors in loader for e in errors]


def check_boxes(name: str, split: str, images: list[dict[str, Any]], source: Any, path: Path) -> int:
    """How many of a split's images have no box (each becomes one whole-image region); none having one is a
    one-line error naming where the boxes were looked for."""
    missing = sum(not pixel_boxes(source, im["id"], 1) for im in images)
    if images and missing == len(images):
        where = "" if path.exists() else "not found, so "
        raise UserError(f"{path}: {where}none of the {len(images)} {split} images has a box (regions: boxes); add "
                        f"their boxes there, set features.backbones.{name}.boxes_file to a JSON file "
                        f"{BOXES_FILE_FORMAT}, or use regions: grid")
    return missing


def _bad_images_error(bad: list[str]) -> UserError:
    return UserError(f"{len(bad)} unreadable image(s): {'; '.join(bad)}; re-run `fga data prepare` or replace them "
                     "(nothing was written for the split)")


def extract(cfg: dict[str, Any], dataset: str, backbone: str, data_dir: Path, out_dir: Path,
            splits: tuple[str, ...] = SPLITS, quiet: bool = False) -> None:
    """Region features of the image backbone `backbone` for each of `splits` (current stores are kept)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if backbone not in cfg["features"]["backbones"]:
        raise UserError(f"params.yaml: backbone {backbone!r} not under features.backbones; "
                        f"known: {known_backbones(cfg)}")
    spec = cfg["features"]["backbones"][backbone]
    dataset_json = read_json(data_dir / "dataset.json", "dataset.json")
    key = {"params_hash": feature_hash(cfg, dataset, backbone), "data_hash": data_hash(data_dir / "dataset.json")}
    todo = [s for s in splits if not is_current(out_dir / f"{s}.h5", key)]
    if not todo:
        return  # idempotent rerun; a store of other params is rebuilt (the old file stays until the rename)
    source, missing = _checked_boxes(spec, backbone, data_dir, dataset_json, todo)
    torch.set_num_threads(cfg["features"].get("threads", 1))
    torch.manual_seed(0)  # random-init backbones are reproducible too
    extractor = RegionExtractor(spec, name=backbone)
    attrs = {
        "backbone": backbone,
        "model": spec["model"],
        "region_source": extractor.region_source,
        "weights_source": extractor.weights_source,
        "feature_dim": extractor.feature_dim,
        "params_hash": key["params_hash"],
        "dataset": dataset,
        "data_hash": key["data_hash"],
        **extractor.store_attrs(),
    }
    workers = cfg["features"].get("num_workers", 0)
    for k, split in enumerate(todo):
        images = ImageBoxes(data_dir, split_images(dataset_json, split), source, extractor.transform(),
                            max_boxes=extractor.n_regions, on_error="report")
        # only boxes stores get the count: grid and patch stores keep their attrs
        extra = {"images_without_boxes": missing[split]} if split in missing else {}
        bad = _extract_split(extractor, images, out_dir / f"{split}.h5", {**attrs, **extra},
                             cfg["features"]["batch_size"], workers, f"{backbone}/{split}", quiet)
        if bad:
            for later in todo[k + 1:]:
                bad += unreadable_images(data_dir, split_images(dataset_json, later), workers)
            raise _bad_images_error(bad)


def _checked_boxes(spec: dict[str, Any], backbone: str, data_dir: Path, dataset_json: dict[str, Any],
                   todo: list[str]) -> tuple[Any, dict[str, int]]:
    """The box source of a `regions: boxes` backbone and, per split, how many images have no box (checked
    before the model is built: a split without boxes fails the run up front); (None, {}) for other backbones."""
    if spec["regions"] != "boxes":
        return None, {}
    source, source_path = box_source(spec, data_dir)
    return source, {s: check_boxes(backbone, s, split_images(dataset_json, s), source, source_path) for s in todo}


def _extract_split(extractor: RegionExtractor, images: ImageBoxes, path: Path, attrs: dict[str, Any],
                   batch_size: int, workers: int, desc: str, quiet: bool) -> list[str]:
    """One split into the store at `path` (resuming a partial one); returns its unreadable images, in which
    case nothing is kept."""
    writer = StoreWriter(path, len(images), extractor.n_regions, extractor.feature_dim, attrs)
    start = writer.rows_done - writer.rows_done % batch_size  # resume at a batch boundary: same batches, same bytes
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(images, range(start, len(images))),
                                         batch_size=batch_size, num_workers=workers, collate_fn=collate_checked)
    bad: list[str] = []
    with tqdm(total=len(images), initial=start, desc=desc, unit="img", disable=quiet, dynamic_ncols=True) as bar:
        for batch, boxes, ids, errors in loader:
            bad += errors
            if not bad:  # after the first bad image only decode, to list every bad one
                regions, out_boxes, mask = extractor.extract_batch(batch, boxes)
                writer.write(start, regions, out_boxes, mask, ids.numpy())
            start += len(ids)
            bar.update(len(ids))
    if bad:
        writer.abort()
    else:
        writer.finish()
    return bad
