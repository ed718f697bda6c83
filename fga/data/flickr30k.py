"""Flickr30K with Karpathy splits (and optional Flickr30K Entities boxes) -> fga contracts.

The images come only from the owners' request form, so the user supplies them: a local archive
(``images_archive``: the ``flickr30k-images.tar.gz`` they were sent, or a folder of images), a
private URL (``images_url``), or a ``root`` folder already holding them. Captions and splits
come from Karpathy's ``dataset_flickr30k.json``; widths and heights from each image's header.

Flickr30K Entities (``Annotations/<id>.xml``: Pascal-VOC-like ``<object>`` elements whose
``<name>`` holds phrase chain ids and ``<bndbox>`` a 1-based inclusive box; ``Sentences/<id>.txt``
gives each chain's phrase type) become COCO instances with one category per phrase type.
Without them ``instances.json`` has the images and no annotations.
"""
from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping, Sequence

from fga.data.coco import check_images, extracted_karpathy, find_karpathy
from fga.data.disk import link_dir
from fga.data.sources import Fetcher, resolve_path
from fga.data.splits import convert_karpathy, load_karpathy
from fga.errors import UserError
from fga.io import write_json

log = logging.getLogger(__name__)

KARPATHY_NAME = "dataset_flickr30k.json"
ENTITY_TYPES = ("people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other")
IMAGE_DIR_NAMES = ("", "flickr30k-images", "flickr30k_images", "images", "flickr30k-images/flickr30k-images")
FORM_URL = "http://hockenmaier.cs.illinois.edu/DenotationGraph/"
_PHRASE_RE = re.compile(r"\[/EN#(\d+)((?:/[^\s/\]]+)+)\s")


def _walk(base: Path, max_depth: int):
    base_depth = len(base.parts)
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames.sort()
        if len(here.parts) - base_depth >= max_depth:
            dirnames[:] = []
        yield here, dirnames, filenames


def find_image_dir(base: Path, first_file: str, max_depth: int = 3) -> Path | None:
    """The folder below ``base`` that holds ``first_file`` (the first Karpathy image)."""
    for name in IMAGE_DIR_NAMES:
        candidate = base / name if name else base
        if (candidate / first_file).is_file():
            return candidate
    for here, _, filenames in _walk(base, max_depth):
        if first_file in filenames:
            return here
    return None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (PIL reads no pixels here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: not a readable image ({exc}); replace the file or re-extract the archive") from None


def find_entities_dir(base: Path, max_depth: int = 3) -> Path | None:
    """The folder holding ``Annotations/`` (Flickr30K Entities) below ``base``."""
    for here, dirnames, _ in _walk(base, max_depth):
        if "Annotations" in dirnames:
            return here
    return None


def parse_entities_xml(path: Path) -> list[dict[str, Any]]:
    """Boxed objects of one Entities xml: ``[{"phrase_ids": [str], "box": (xmin, ymin, xmax, ymax)}]``.

    Objects without ``<bndbox>`` (scene / no-box flags) are skipped; coordinates as in the file.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise UserError(f"{path}: not valid Flickr30K Entities xml ({exc}); re-extract the Entities archive") from None
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        try:
            coords = tuple(int(float(box.findtext(tag))) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise UserError(f"{path}: an <object> has an incomplete <bndbox>; re-extract the Entities archive") from None
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        objects.append({"phrase_ids": names, "box": coords})
    return objects


def parse_phrase_types(path: Path) -> dict[str, str]:
    """Chain id -> first phrase type, from an Entities ``Sentences/<id>.txt`` file."""
    types: dict[str, str] = {}
    if not path.is_file():
        return types
    for match in _PHRASE_RE.finditer(path.read_text(encoding="utf-8", errors="replace")):
        chain, kinds = match.group(1), match.group(2).strip("/").split("/")
        types.setdefault(chain, kinds[0] if kinds and kinds[0] else "other")
    return types


def entities_instances(dataset: Mapping[str, Any], entities_dir: Path | None) -> dict[str, Any]:
    """COCO instances for the images in ``dataset``; boxes from Entities when given."""
    categories = [{"id": i + 1, "name": name, "supercategory": "entity"} for i, name in enumerate(ENTITY_TYPES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for img in dataset["images"]:
        images.append({k: img[k] for k in ("id", "file_name", "width", "height")})
        if entities_dir is None:
            continue
        stem = Path(img["file_name"]).stem
        xml = entities_dir / "Annotations" / f"{stem}.xml"
        if not xml.is_file():
            continue
        types = parse_phrase_types(entities_dir / "Sentences" / f"{stem}.txt")
        for obj in parse_entities_xml(xml):
            xmin, ymin, xmax, ymax = obj["box"]
            x0, y0 = max(0, xmin - 1), max(0, ymin - 1)   # 1-based inclusive -> 0-based continuous
            x1, y1 = min(img["width"], xmax), min(img["height"], ymax)
            w, h = x1 - x0, y1 - y0
            if w <= 0 or h <= 0:
                continue
            kind = next((types[p] for p in obj["phrase_ids"] if p in types), "other")
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": img["id"],
                "category_id": cat_id.get(kind, cat_id["other"]),
                "bbox": [float(x0), float(y0), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": 0,
                "segmentation": [],
                "phrase_ids": obj["phrase_ids"],
            })
    return {
        "info": {"description": "Flickr30K (Karpathy splits)" + (" with Flickr30K Entities boxes" if entities_dir else "")},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def build_flickr30k(karpathy_json: Path, images_root: Path, out_dir: Path,
                    entities_dir: Path | None = None) -> dict[str, Any]:
    """Write ``out_dir/{instances,dataset}.json`` and link ``out_dir/images`` to ``images_root``."""
    karpathy = load_karpathy(karpathy_json)
    entries: Sequence[Mapping[str, Any]] = karpathy["images"]
    if not entries:
        raise UserError(f"{karpathy_json}: no images; use dataset_flickr30k.json from caption_datasets.zip")
    image_dir = find_image_dir(images_root, entries[0]["filename"])
    if image_dir is None:
        raise UserError(f"{images_root}: no Flickr30K image {entries[0]['filename']} found (looked in "
                        f"{', '.join(n + '/' for n in IMAGE_DIR_NAMES if n)} too); check images_archive / root")
    prefix = image_dir.relative_to(images_root).as_posix()
    prefix = "" if prefix == "." else prefix

    def file_name_of(entry: Mapping[str, Any]) -> str:
        return f"{prefix}/{entry['filename']}" if prefix else str(entry["filename"])

    check_images(images_root, [file_name_of(e) for e in entries], "Flickr30K")
    dataset = convert_karpathy(
        karpathy, dataset="flickr30k", file_name_of=file_name_of, source=str(karpathy_json),
        size_of=lambda _id, file_name: image_size(images_root / file_name),
    )
    instances = entities_instances(dataset, entities_dir)
    link_dir(out_dir / "images", images_root)
    write_json(out_dir / "instances.json", instances, indent=None)
    write_json(out_dir / "dataset.json", dataset, indent=None)
    log.info("flickr30k: %d images, %d boxes -> %s", len(dataset["images"]), len(instances["annotations"]), out_dir)
    return dataset


def _images_source(cfg: Mapping[str, Any]) -> tuple[Path | None, str | None]:
    archive = resolve_path(cfg.get("images_archive"))
    url = cfg.get("images_url") or None
    if archive is None and url is None:
        raise UserError(
            "flickr30k: set data.flickr30k.images_archive (path to the flickr30k-images.tar.gz obtained through the "
            f"owners' request form at {FORM_URL}) or data.flickr30k.images_url (a private URL to it), or "
            "data.flickr30k.root (a folder already holding the images)"
        )
    if archive is not None and not archive.exists():
        raise UserError(f"{archive}: file named by params key data.flickr30k.images_archive does not exist; fix the path")
    return archive, url


def prepare_flickr30k(cfg: Mapping[str, Any], out_dir: Path, *, dry_run: bool = False, progress: bool = True) -> None:
    """Flickr30K + Karpathy splits into ``out_dir`` (keys: see :func:`fga.data.prepare.prepare`)."""
    out_dir = Path(out_dir)
    root = resolve_path(cfg.get("root"))
    entities_archive = resolve_path(cfg.get("entities_archive"))
    entities_url = cfg.get("entities_url") or None
    want_entities = bool(entities_archive or entities_url or cfg.get("entities"))
    if root is not None:
        karpathy = find_karpathy(root, KARPATHY_NAME, cfg.get("karpathy_json"))
        missing = [] if karpathy is not None and karpathy.is_file() else [
            str(karpathy) if karpathy else f"{KARPATHY_NAME} (or karpathy/{KARPATHY_NAME})"]
        if missing:
            raise UserError(f"{root}: Flickr30K root lacks {', '.join(missing)}; put it there (or set karpathy_json), "
                            "or unset root to download")
        entities_dir = find_entities_dir(root, max_depth=2)
        if dry_run:
            print(f"[dry-run] flickr30k: root {root} holds the data; nothing to download; would index it into {out_dir}",
                  flush=True)
            return
        if entities_dir is None and entities_archive is not None:
            entities_dir = _entities_from(Fetcher("flickr30k", cfg, progress=progress), entities_archive, None)
        build_flickr30k(karpathy, root, out_dir, entities_dir)
        return
    images_archive, images_url = _images_source(cfg)  # fail before downloading anything else
    fetcher = Fetcher("flickr30k", cfg, dry_run=dry_run, progress=progress)
    try:
        cache = fetcher.cache_dir
        kdir = fetcher.extracted("karpathy_captions", cache / "karpathy")
        if images_archive is not None and images_archive.is_dir():
            images_root = images_archive
            if dry_run:
                fetcher.say(f"images: would use the folder {images_root}")
        else:
            images_root = fetcher.extracted("flickr30k_images", cache / "flickr30k", local=images_archive,
                                            url=None if images_archive else images_url,
                                            cfg_key="images_archive")
        entities_dir = None
        if want_entities:
            entities_dir = _entities_from(fetcher, entities_archive, entities_url)
        if dry_run:
            fetcher.summary()
            return
    finally:
        fetcher.close()
    karpathy = extracted_karpathy(kdir, KARPATHY_NAME)
    build_flickr30k(karpathy, images_root, out_dir, entities_dir)


def _entities_from(fetcher: Fetcher, archive: Path | None, url: str | None) -> Path | None:
    dest = fetcher.extracted("flickr30k_entities", fetcher.cache_dir / "flickr30k_entities", local=archive,
                             url=url, cfg_key="entities_archive")
    if fetcher.dry_run:
        return None
    found = find_entities_dir(dest)
    if found is None:
        raise UserError(f"{dest}: no Annotations/ folder in the Flickr30K Entities archive; use annotations.zip "
                        "from github.com/BryanPlummer/flickr30k_entities (entities_archive / entities_url)")
    return found
