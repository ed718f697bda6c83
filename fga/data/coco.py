"""MS-COCO 2014 with Karpathy splits -> ``dataset.json``, ``instances.json`` and ``images/``.

Sources (see :mod:`fga.data.manifests`): ``caption_datasets.zip`` (``dataset_coco.json``),
``train2014.zip``, ``val2014.zip`` and ``annotations_trainval2014.zip``
(``annotations/instances_{train,val}2014.json``). Downloaded archives are extracted to::

    <cache_dir>/karpathy/                 dataset_coco.json, dataset_flickr30k.json, ...
    <cache_dir>/coco2014/train2014/       COCO_train2014_*.jpg
    <cache_dir>/coco2014/val2014/         COCO_val2014_*.jpg
    <cache_dir>/coco2014/annotations/     instances_{train,val}2014.json, ...

and ``<out_dir>/images`` links to ``<cache_dir>/coco2014`` (or to the user's ``root``), so
``file_name`` (``val2014/COCO_val2014_000000391895.jpg``) is relative to ``<out_dir>/images``.
Image ids are COCO image ids in both json files.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fga.data.disk import link_dir
from fga.data.sources import Fetcher, resolve_path
from fga.data.splits import convert_karpathy, load_karpathy
from fga.errors import UserError
from fga.io import read_json, write_json

log = logging.getLogger(__name__)

INSTANCE_FILES = ("instances_train2014.json", "instances_val2014.json")
KARPATHY_NAME = "dataset_coco.json"


def find_karpathy(base: Path, name: str, override: Any = None, *, search: bool = False) -> Path | None:
    """``name`` at ``base``, ``base/karpathy`` or ``base/caption_datasets`` (or ``override``).

    With ``search`` (an extracted caption_datasets.zip), any depth below ``base`` is looked at.
    """
    if override:
        return resolve_path(override)
    for candidate in (base / name, base / "karpathy" / name, base / "caption_datasets" / name):
        if candidate.is_file():
            return candidate
    if search and base.is_dir():
        return next((p for p in sorted(base.rglob(name)) if p.is_file()), None)
    return None


def extracted_karpathy(kdir: Path, name: str) -> Path:
    """``name`` inside an extracted caption_datasets.zip, or a one-line error saying how to recover."""
    karpathy = find_karpathy(kdir, name, search=True)
    if karpathy is None:
        raise UserError(f"{kdir}: caption_datasets.zip has no {name}; delete {kdir} and the zip, then rerun")
    return karpathy


def missing_files(images_root: Path, file_names: Iterable[str]) -> list[str]:
    return [f for f in file_names if not (images_root / f).is_file()]


def check_images(images_root: Path, file_names: Sequence[str], what: str) -> None:
    missing = missing_files(images_root, file_names)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{images_root}: {len(missing)} of {len(file_names)} {what} images missing ({shown}); "
                        "complete the image folder (or unset root to download it) and rerun")


def restrict_instances(sources: Sequence[Mapping[str, Any]], dataset: Mapping[str, Any],
                       source_names: Sequence[str] = ()) -> dict[str, Any]:
    """Merge COCO instance files, keeping only (and all of) the images in ``dataset``.

    Image ``file_name`` is replaced by dataset.json's (relative to ``images/``); annotations of
    the kept images and the union of categories are kept; ids stay the COCO ids.
    """
    wanted = {img["id"]: img for img in dataset["images"]}
    found: dict[int, dict[str, Any]] = {}
    categories: dict[int, Any] = {}
    annotations: list[Any] = []
    ann_ids: set[int] = set()
    for src in sources:
        for image in src.get("images", []):
            if image["id"] in wanted and image["id"] not in found:
                found[image["id"]] = {**image, "file_name": wanted[image["id"]]["file_name"]}
        for cat in src.get("categories", []):
            categories.setdefault(cat["id"], cat)
        for ann in src.get("annotations", []):
            if ann["image_id"] in wanted:
                if ann["id"] in ann_ids:
                    raise UserError(f"{', '.join(source_names) or 'instances'}: annotation id {ann['id']} "
                                    "appears twice; use the original COCO 2014 instance files")
                ann_ids.add(ann["id"])
                annotations.append(ann)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise UserError(f"{', '.join(source_names) or 'instances'}: {len(missing)} Karpathy images not in the "
                        f"COCO instance files (e.g. id {missing[0]}); use instances_{{train,val}}2014.json")
    first = sources[0] if sources else {}
    return {
        "info": first.get("info", {}),
        "licenses": first.get("licenses", []),
        "images": [found[i] for i in wanted],
        "annotations": annotations,
        "categories": [categories[k] for k in sorted(categories)],
    }


def build_coco(karpathy_json: Path, instance_jsons: Sequence[Path], images_root: Path,
               out_dir: Path, *, check_files: bool = True) -> dict[str, Any]:
    """Write ``out_dir/{instances,dataset}.json`` and link ``out_dir/images`` to ``images_root``."""
    karpathy = load_karpathy(karpathy_json)
    sources = [read_json(p, "COCO instances file") for p in instance_jsons]
    sizes: dict[int, tuple[int, int]] = {}
    for src in sources:
        for image in src.get("images", []):
            sizes.setdefault(int(image["id"]), (int(image["width"]), int(image["height"])))

    def size_of(image_id: int, file_name: str) -> tuple[int, int]:
        if image_id not in sizes:
            raise UserError(f"{', '.join(map(str, instance_jsons))}: no image {image_id} ({file_name}); "
                            "use the COCO 2014 instance files matching dataset_coco.json")
        return sizes[image_id]

    dataset = convert_karpathy(karpathy, dataset="coco", size_of=size_of, source=str(karpathy_json))
    if check_files:
        check_images(images_root, [img["file_name"] for img in dataset["images"]], "COCO")
    instances = restrict_instances(sources, dataset, [str(p) for p in instance_jsons])
    link_dir(out_dir / "images", images_root)
    write_json(out_dir / "instances.json", instances, indent=None)
    write_json(out_dir / "dataset.json", dataset, indent=None)
    log.info("coco: %d images, %d annotations -> %s", len(dataset["images"]), len(instances["annotations"]), out_dir)
    return dataset


def locate_root(root: Path, cfg: Mapping[str, Any]) -> tuple[Path, list[Path]]:
    """Karpathy json and instance files inside a user's COCO ``root``; lists what is missing."""
    karpathy = find_karpathy(root, KARPATHY_NAME, cfg.get("karpathy_json"))
    instances = [root / "annotations" / name for name in INSTANCE_FILES]
    missing = []
    if karpathy is None or not karpathy.is_file():
        missing.append(str(karpathy) if karpathy else f"{KARPATHY_NAME} (or karpathy/{KARPATHY_NAME})")
    missing += [f"annotations/{p.name}" for p in instances if not p.is_file()]
    missing += [d + "/" for d in ("train2014", "val2014") if not (root / d).is_dir()]
    if missing:
        raise UserError(f"{root}: COCO root lacks {', '.join(missing)}; point root at a folder holding them "
                        "(or set karpathy_json), or unset root to download")
    return karpathy, instances


def prepare_coco(cfg: Mapping[str, Any], out_dir: Path, *, dry_run: bool = False, progress: bool = True) -> None:
    """COCO 2014 + Karpathy splits into ``out_dir`` (keys: see :func:`fga.data.prepare.prepare`)."""
    out_dir = Path(out_dir)
    root = resolve_path(cfg.get("root"))
    if root is not None:
        karpathy, instances = locate_root(root, cfg)
        if dry_run:
            print(f"[dry-run] coco: root {root} holds the data; nothing to download; would index it into {out_dir}",
                  flush=True)
            return
        build_coco(karpathy, instances, root, out_dir)
        return
    fetcher = Fetcher("coco", cfg, dry_run=dry_run, progress=progress)
    try:
        cache = fetcher.cache_dir
        kdir = fetcher.extracted("karpathy_captions", cache / "karpathy")
        images_root = cache / "coco2014"
        fetcher.extracted("coco_train2014", images_root / "train2014", subdir="train2014")
        fetcher.extracted("coco_val2014", images_root / "val2014", subdir="val2014")
        adir = fetcher.extracted("coco_annotations_trainval2014", images_root / "annotations", subdir="annotations")
        if dry_run:
            fetcher.summary()
            return
    finally:
        fetcher.close()
    karpathy = extracted_karpathy(kdir, KARPATHY_NAME)
    instances = [adir / name for name in INSTANCE_FILES]
    build_coco(karpathy, instances, images_root, out_dir)
