"""`fga features extract`: one backbone, every split -> features/<dataset>/<backbone>/<split>.h5.

A backbone is a `features.backbones` entry (timm CNN grid / ROI regions, ViT / Swin patch tokens) or a
precomputed-feature source under `features.precomp` (BUTD regions, see fga.data.precomp). Images are read
by a DataLoader (`features.num_workers` workers) in batches of `features.batch_size`; each batch is one
resumable chunk of the store (fga.features.store). A progress bar shows images/s. Unreadable images are
collected while the run goes on (the model stops running after the first one), then every one of them - in
this split and the ones still to do - is reported in one error, and the split's partial file is removed.
ROI (`regions: boxes`) stores record how many images had no box (`images_without_boxes`: each is one
whole-image region); a split where no image has one is refused before the model is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fga.config import params_hash
from fga.data import split_images
from fga.errors import UserError
from fga.features.store import StoreWriter, data_hash, is_current, stored_attrs
from fga.features.visual import (BOXES_FILE_FORMAT, ImageBoxes, RegionExtractor, box_source, collate_checked,
                                 pixel_boxes)
from fga.io import read_json

SPLITS = ("train", "val", "test")


def _known(cfg: dict[str, Any]) -> str:
    from fga.data.precomp import precomp_specs

    return ", ".join([*cfg["features"]["backbones"], *precomp_specs(cfg)])


def feature_hash(cfg: dict[str, Any], dataset: str, backbone: str) -> str:
    """What a store depends on: the backbone spec (or precomputed-feature spec), the dataset's own params and,
    when the backbone names one, the boxes file's contents."""
    if backbone in cfg["features"]["backbones"]:
        spec = cfg["features"]["backbones"][backbone]
        key = {"backbone": spec, "data": cfg["data"].get(dataset, {})}
        if spec.get("boxes_file"):  # only when set: stores without one keep their hash
            key["boxes_file"] = data_hash(Path(spec["boxes_file"]).expanduser())
        return params_hash(key)
    from fga.data.precomp import precomp_specs

    specs = precomp_specs(cfg)
    if backbone in specs:
        return params_hash({"precomp": specs[backbone], "data": cfg["data"].get(dataset, {})})
    raise UserError(f"params.yaml: backbone {backbone!r} not under features.backbones or features.precomp; "
                    f"known: {_known(cfg)}")


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
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if backbone not in cfg["features"]["backbones"]:
        from fga.data.precomp import ingest, precomp_specs

        if backbone in precomp_specs(cfg):
            ingest(cfg, dataset, backbone, data_dir, out_dir, splits=splits, quiet=quiet)
            return
        raise UserError(f"params.yaml: backbone {backbone!r} not under features.backbones; known: {_known(cfg)}")
    spec = cfg["features"]["backbones"][backbone]
    dataset_json = read_json(data_dir / "dataset.json", "dataset.json")
    key = {"params_hash": feature_hash(cfg, dataset, backbone), "data_hash": data_hash(data_dir / "dataset.json")}
    todo = [s for s in splits if not is_current(out_dir / f"{s}.h5", key)]
    if not todo:
        return  # idempotent rerun; a store of other params is rebuilt (the old file stays until the rename)
    missing: dict[str, int] = {}
    source = None
    if spec["regions"] == "boxes":  # checked before the model is built: a split without boxes fails the run up front
        source, source_path = box_source(spec, data_dir)
        missing = {s: check_boxes(backbone, s, split_images(dataset_json, s), source, source_path) for s in todo}
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
    bs = cfg["features"]["batch_size"]
    workers = cfg["features"].get("num_workers", 0)
    for k, split in enumerate(todo):
        images = ImageBoxes(data_dir, split_images(dataset_json, split), source, extractor.transform(),
                            max_boxes=extractor.n_regions, on_error="report")
        # only boxes stores get the count: grid and patch stores keep their attrs
        extra = {"images_without_boxes": missing[split]} if split in missing else {}
        writer = StoreWriter(out_dir / f"{split}.h5", len(images), extractor.n_regions, extractor.feature_dim,
                             {**attrs, **extra})
        start = writer.rows_done - writer.rows_done % bs  # resume at a batch boundary: same batches, same bytes
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(images, range(start, len(images))), batch_size=bs,
                                             num_workers=workers, collate_fn=collate_checked)
        bad: list[str] = []
        with tqdm(total=len(images), initial=start, desc=f"{backbone}/{split}", unit="img", disable=quiet,
                  dynamic_ncols=True) as bar:
            for batch, boxes, ids, errors in loader:
                bad += errors
                if not bad:  # after the first bad image only decode, to list every bad one
                    regions, out_boxes, mask = extractor.extract_batch(batch, boxes)
                    writer.write(start, regions, out_boxes, mask, ids.numpy())
                start += len(ids)
                bar.update(len(ids))
        if bad:
            writer.abort()
            for later in todo[k + 1:]:
                bad += unreadable_images(data_dir, split_images(dataset_json, later), workers)
            raise _bad_images_error(bad)
        writer.finish()
