"""What each real dataset is made of: every file's URL, mirrors, size and sha256.

A size or sha256 of ``None`` means it is not published anywhere we can rely on: the first
successful download records it in ``<cache_dir>/fga-download.lock.json`` and every later use
is checked against that record (see :mod:`fga.data.fetch`).

Sources of the pinned values:

* COCO 2014 zips and Karpathy's ``caption_datasets.zip``: sizes and sha256 as published in
  TensorFlow Datasets' URL checksum registry (``url_checksums/coco.txt`` and
  ``coco_captions.txt``); the COCO sizes also match the servers' Content-Length.
* SCAN's precomputed BUTD features (``data.zip``), the Flickr30K Entities annotations and the
  Flickr30K images (request form only) have no published checksum: recorded on first use.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from fga.errors import UserError


@dataclass(frozen=True)
class FileSpec:
    """One downloadable file.

    ``key`` names it in configs (``urls``, ``mirrors``, ``checksums``) and in the lock file;
    ``filename`` is its name in the cache directory; ``url`` is ``None`` when the file can only
    come from the user (a local path or private URL named by ``config_keys``).
    """

    key: str
    filename: str
    url: str | None
    size: int | None = None
    sha256: str | None = None
    mirrors: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def urls(self) -> list[str]:
        return [u for u in (self.url, *self.mirrors) if u]

    def with_overrides(self, **changes: Any) -> "FileSpec":
        return replace(self, **changes)


KARPATHY_CAPTIONS = FileSpec(
    key="karpathy_captions",
    filename="caption_datasets.zip",
    url="https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
    size=36_745_453,
    sha256="4cfd70132527b80933105e5829dc9034eaab9573482e2e680abbab6130244817",
    mirrors=("https://huggingface.co/datasets/gpantaz/karpathy_split/resolve/main/caption_datasets.zip",),
    note="Karpathy & Fei-Fei splits: dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json",
)

COCO_TRAIN2014 = FileSpec(
    key="coco_train2014",
    filename="train2014.zip",
    url="http://images.cocodataset.org/zips/train2014.zip",
    size=13_510_573_713,
    sha256="ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
    mirrors=("https://s3.amazonaws.com/images.cocodataset.org/zips/train2014.zip",),
    note="82,783 images under train2014/",
)

COCO_VAL2014 = FileSpec(
    key="coco_val2014",
    filename="val2014.zip",
    url="http://images.cocodataset.org/zips/val2014.zip",
    size=6_645_013_297,
    sha256="fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
    mirrors=("https://s3.amazonaws.com/images.cocodataset.org/zips/val2014.zip",),
    note="40,504 images under val2014/",
)

COCO_ANNOTATIONS2014 = FileSpec(
    key="coco_annotations_trainval2014",
    filename="annotations_trainval2014.zip",
    url="http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    size=252_872_794,
    sha256="031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
    mirrors=("https://s3.amazonaws.com/images.cocodataset.org/annotations/annotations_trainval2014.zip",),
    note="annotations/instances_{train,val}2014.json (and captions, keypoints)",
)

FLICKR30K_IMAGES = FileSpec(
    key="flickr30k_images",
    filename="flickr30k-images.tar.gz",
    url=None,
    config_keys=("images_archive", "images_url"),
    note="owners' request form: http://hockenmaier.cs.illinois.edu/DenotationGraph/",
)

FLICKR30K_ENTITIES = FileSpec(
    key="flickr30k_entities",
    filename="flickr30k_entities_annotations.zip",
    url="https://github.com/BryanPlummer/flickr30k_entities/raw/master/annotations.zip",
    config_keys=("entities_archive", "entities_url"),
    note="optional boxes: Annotations/<id>.xml (Pascal-VOC-like) and Sentences/<id>.txt",
)

SCAN_PRECOMP = FileSpec(
    key="scan_precomp",
    filename="scan_data.zip",
    url="https://scanproject.blob.core.windows.net/scan-data/data.zip",
    note="SCAN's BUTD features: data/coco_precomp, data/f30k_precomp ({split}_ims.npy [N,36,2048], "
    "{split}_caps.txt, {split}_ids.txt)",
)

# Splits whose {split}_ims.npy / _caps.txt / _ids.txt must be present after extraction.
PRECOMP_SPLITS: dict[str, tuple[str, ...]] = {
    "coco_precomp": ("train", "dev", "testall"),
    "f30k_precomp": ("train", "dev", "test"),
}
PRECOMP_FILES: tuple[str, ...] = ("ims.npy", "caps.txt", "ids.txt")

MANIFESTS: dict[str, tuple[FileSpec, ...]] = {
    "coco": (KARPATHY_CAPTIONS, COCO_TRAIN2014, COCO_VAL2014, COCO_ANNOTATIONS2014),
    "flickr30k": (KARPATHY_CAPTIONS, FLICKR30K_IMAGES, FLICKR30K_ENTITIES),
    "coco_precomp": (SCAN_PRECOMP,),
    "f30k_precomp": (SCAN_PRECOMP,),
}

DATASETS: tuple[str, ...] = tuple(MANIFESTS)


def manifest(dataset: str) -> dict[str, FileSpec]:
    """The files of ``dataset`` by key, in manifest order."""
    if dataset not in MANIFESTS:
        raise UserError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    return {spec.key: spec for spec in MANIFESTS[dataset]}
