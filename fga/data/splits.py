"""Karpathy splits -> the fga ``dataset.json`` contract, and the COCO 1K folds.

Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json`` hold ``{"images": [entry, ...],
"dataset": name}`` where each entry has ``filename`` (COCO also ``filepath``, e.g.
``val2014``), ``split`` (train/val/test/restval), ``sentences: [{"raw", "tokens", ...}]`` and
``cocoid`` (COCO) or ``imgid`` (every dataset). The contract written by ``fga data prepare``::

    {"dataset": str, "images": [{"id": int, "file_name": str, "split": str,
                                 "width": int, "height": int, "sentences": [5 str]}]}

Images keep Karpathy's file order, which defines the COCO 1K folds (:func:`coco_1k_folds`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from fga.errors import UserError
from fga.io import read_json

SPLITS = ("train", "val", "test", "restval")
CAPTIONS_PER_IMAGE = 5

SizeOf = Callable[[int, str], "tuple[int, int]"]


def load_karpathy(path: str | Path) -> dict[str, Any]:
    """Read a Karpathy split file, checking it has an ``images`` list."""
    data = read_json(path, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: not a Karpathy split file (no 'images' list); use dataset_coco.json or "
                        "dataset_flickr30k.json from caption_datasets.zip")
    return data


def karpathy_image_id(entry: Mapping[str, Any]) -> int:
    """COCO image id (``cocoid``) when present, else Karpathy's ``imgid``."""
    value = entry.get("cocoid", entry.get("imgid"))
    if value is None:
        raise UserError(f"Karpathy entry {entry.get('filename')!r}: has neither 'cocoid' nor 'imgid'")
    return int(value)


def karpathy_file_name(entry: Mapping[str, Any], prefix: str = "") -> str:
    """``filepath/filename`` (COCO) or ``prefix/filename`` (Flickr30K), '/'-separated."""
    parts = [p.strip("/") for p in (entry.get("filepath") or prefix, entry["filename"]) if p]
    return "/".join(parts)


def karpathy_captions(entry: Mapping[str, Any], *, source: str = "Karpathy file") -> list[str]:
    """The first five captions in file order; fewer than five is an error naming the image."""
    sentences = []
    for sent in entry.get("sentences") or []:
        raw = sent.get("raw") if isinstance(sent, Mapping) else sent
        if raw is None and isinstance(sent, Mapping):
            raw = " ".join(sent.get("tokens") or [])
        raw = str(raw).strip()
        if raw:
            sentences.append(raw)
    if len(sentences) < CAPTIONS_PER_IMAGE:
        raise UserError(
            f"{source}: image {entry.get('filename')!r} (id {entry.get('cocoid', entry.get('imgid'))}) has "
            f"{len(sentences)} captions, {CAPTIONS_PER_IMAGE} are required; use the original Karpathy split file"
        )
    return sentences[:CAPTIONS_PER_IMAGE]


def convert_karpathy(
    karpathy: Mapping[str, Any],
    *,
    dataset: str,
    size_of: SizeOf,
    file_name_of: Callable[[Mapping[str, Any]], str] | None = None,
    source: str = "Karpathy file",
) -> dict[str, Any]:
    """Karpathy split data -> the ``dataset.json`` contract (file order kept).

    ``size_of(image_id, file_name) -> (width, height)`` supplies image sizes (COCO instances or
    the image header); ``file_name_of(entry)`` the path relative to the images dir (default
    :func:`karpathy_file_name`). Extra captions beyond five are dropped (first five kept).
    """
    file_name_of = file_name_of or karpathy_file_name
    images: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for entry in karpathy.get("images", []):
        image_id = karpathy_image_id(entry)
        file_name = file_name_of(entry)
        if image_id in seen:
            raise UserError(f"{source}: image id {image_id} appears twice ({seen[image_id]}, {file_name}); "
                            "use the original Karpathy split file")
        seen[image_id] = file_name
        split = entry.get("split")
        if split not in SPLITS:
            raise UserError(f"{source}: image {file_name!r} has split {split!r}, expected one of {', '.join(SPLITS)}")
        width, height = size_of(image_id, file_name)
        images.append({
            "id": image_id,
            "file_name": file_name,
            "split": split,
            "width": int(width),
            "height": int(height),
            "sentences": karpathy_captions(entry, source=source),
        })
    if not images:
        raise UserError(f"{source}: no images; use the original Karpathy split file")
    return {"dataset": dataset, "images": images}


def coco_1k_folds(n_test: int = 5000, n_folds: int = 5) -> list[slice]:
    """COCO 1K protocol: the test images in file order cut into ``n_folds`` consecutive blocks.

    With the Karpathy 5,000-image test split this gives ``[0:1000], [1000:2000], ... [4000:5000]``
    (index into ``fga.data.split_images(dataset, "test")``; caption ``j`` of image ``i`` is row
    ``5*i + j`` of the caption matrix, so caption folds are the same slices times five).
    """
    if n_folds <= 0 or n_test <= 0 or n_test % n_folds:
        raise UserError(f"COCO 1K folds: {n_test} test images cannot be cut into {n_folds} equal folds; "
                        "use the Karpathy test split (5,000 images)")
    size = n_test // n_folds
    return [slice(i * size, (i + 1) * size) for i in range(n_folds)]


def validate_dataset(obj: Any, path: str | Path = "dataset.json") -> None:
    """Check the ``dataset.json`` contract; raise a one-line UserError on the first violation."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("dataset"), str) or not isinstance(obj.get("images"), list):
        raise UserError(f"{path}: expected {{'dataset': str, 'images': [...]}}; rerun `fga data prepare`")
    ids = set()
    for i, img in enumerate(obj["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(img, Mapping):
            raise UserError(f"{where}: not an object; rerun `fga data prepare`")
        for key, kind in (("id", int), ("file_name", str), ("split", str), ("width", int), ("height", int),
                          ("sentences", list)):
            if not isinstance(img.get(key), kind) or isinstance(img.get(key), bool):
                raise UserError(f"{where}: {key!r} missing or not {kind.__name__}; rerun `fga data prepare`")
        if img["split"] not in SPLITS:
            raise UserError(f"{where}: split {img['split']!r} not one of {', '.join(SPLITS)}")
        if len(img["sentences"]) != CAPTIONS_PER_IMAGE or not all(isinstance(s, str) for s in img["sentences"]):
            raise UserError(f"{where}: needs exactly {CAPTIONS_PER_IMAGE} caption strings")
        if img["id"] in ids:
            raise UserError(f"{where}: duplicate id {img['id']}")
        ids.add(img["id"])
