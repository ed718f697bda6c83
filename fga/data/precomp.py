"""Precomputed BUTD region features -> the fga feature store and dataset.json contracts.

Two layouts are read, both streamed (nothing holds a whole split's features in memory):

* SCAN / VSE∞ (`coco_precomp`, `f30k_precomp`, as `fga data prepare` lays them out in data/<dataset>/):
  `{split}_ims.npy` float32 [N, 36, 2048] opened with `np.load(mmap_mode="r")`, `{split}_caps.txt` with 5
  captions per image (5N lines, image j owns lines 5j..5j+4), `{split}_ids.txt` with N ids, or 5N (one per
  caption line, as in some releases; each run of 5 must agree). A release whose ims.npy repeats every image
  once per caption (5N rows) is read with stride 5. Splits: train <- train, val <- dev, test <- testall
  (COCO 5K; the 1K protocol takes its folds) or test. The npy layout has no boxes: they are stored as
  zeros and the `boxes_note` attr says so.
* bottom-up-attention TSV (`image_id, image_w, image_h, num_boxes, boxes, features`; boxes and features
  base64 float32 [n, 4] / [n, D]): one pass records each row's byte offset, then the rows of each split are
  read in dataset.json order, one at a time. Boxes are normalised by image_w / image_h; a row with fewer
  boxes than the store's width is padded and masked. Captions come from the dataset's dataset.json (COCO /
  Flickr30K Karpathy splits), so a TSV is ingested for a dataset that already has one.

A precomputed source is selected like a backbone: `fga features extract --backbone butd` (fga.features.build
picks `ingest` here for it), with its spec under `features.precomp.<name>` (default `butd: {format: npy}`,
fga.features.store.precomp_specs); `fga.features.store.feature_hash` covers that spec.
`write_index` writes dataset.json (file_name "", width/height 0 for the npy layout) and an
instances.json without annotations, so the rest of the pipeline (vocabulary, training, evaluation) runs.
"""
from __future__ import annotations

import base64
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from fga.data import split_images
from fga.errors import UserError
from fga.io import read_json, write_json

SPLIT_SOURCES = {"train": ("train",), "val": ("dev", "val"), "test": ("testall", "test")}
CAPS_PER_IMAGE = 5
TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
NPY_BOX_NOTE = "unknown: the SCAN/VSE npy layout has no boxes; stored as zeros"


def _raise_csv_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


# --------------------------------------------------------------------------- SCAN / VSE npy layout


@dataclass
class NpySplit:
    """One precomputed split: where its files are and how its rows map to images."""

    split: str  # fga split (train / val / test)
    source: str  # file prefix (train / dev / testall / test)
    ims: Path
    caps: Path
    ids: Path | None
    n_images: int
    stride: int  # 1, or 5 when ims.npy repeats each image once per caption

    def features(self) -> np.ndarray:
        """The memory-mapped [rows, R, D] array (read lazily, never whole)."""
        return np.load(self.ims, mmap_mode="r")


def _read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def locate_split(src_dir: Path, split: str) -> NpySplit | None:
    """The npy-layout files of one fga split in `src_dir`, checked for consistent sizes (None if absent)."""
    src_dir = Path(src_dir)
    for source in SPLIT_SOURCES[split]:
        ims, caps, ids = (src_dir / f"{source}_{s}" for s in ("ims.npy", "caps.txt", "ids.txt"))
        if not ims.exists():
            continue
        if not caps.exists():
            raise UserError(f"{caps}: missing; the {source} split needs its captions next to {ims.name}")
        try:
            shape = np.load(ims, mmap_mode="r").shape
        except (OSError, ValueError) as exc:
            raise UserError(f"{ims}: unreadable .npy ({exc}); re-run `fga data prepare`") from None
        if len(shape) != 3:
            raise UserError(f"{ims}: expected [N, regions, dim] features, got shape {shape}")
        n_caps = sum(1 for _ in _read_lines(caps))
        if n_caps % CAPS_PER_IMAGE:
            raise UserError(f"{caps}: {n_caps} captions is not {CAPS_PER_IMAGE} per image")
        n_images = n_caps // CAPS_PER_IMAGE
        if shape[0] == n_images:
            stride = 1
        elif shape[0] == n_caps:
            stride = CAPS_PER_IMAGE
        else:
            raise UserError(f"{ims}: {shape[0]} rows fit neither {n_images} images nor {n_caps} captions of {caps.name}")
        return NpySplit(split, source, ims, caps, ids if ids.exists() else None, n_images, stride)
    return None


def read_ids(path: Path, n_images: int) -> np.ndarray:
    """Image ids from an ids file with one id per image, or one per caption line (runs of 5 must agree)."""
    try:
        ids = np.array([int(float(x)) for x in _read_lines(path)], np.int64)
    except ValueError as exc:
        raise UserError(f"{path}: not a list of integer ids ({exc})") from None
    if len(ids) == n_images:
        return ids
    if len(ids) == n_images * CAPS_PER_IMAGE:
        runs = ids.reshape(n_images, CAPS_PER_IMAGE)
        bad = np.flatnonzero((runs != runs[:, :1]).any(axis=1))
        if len(bad):
            raise UserError(f"{path}: one id per caption, but captions {5 * bad[0]}..{5 * bad[0] + 4} name different "
                            f"images ({sorted(set(runs[bad[0]].tolist()))})")
        return runs[:, 0].copy()
    raise UserError(f"{path}: {len(ids)} ids fit neither {n_images} images nor {n_images * CAPS_PER_IMAGE} captions")


def index_entries(src_dir: Path, dataset: str) -> list[dict[str, Any]]:
    """dataset.json image entries of the npy layout in `src_dir` (train, val, test in file order)."""
    entries: list[dict[str, Any]] = []
    for split in SPLIT_SOURCES:
        ps = locate_split(src_dir, split)
        if ps is None:
            continue
        caps = _read_lines(ps.caps)
        if ps.ids is not None:
            ids = read_ids(ps.ids, ps.n_images)
        else:  # no ids file: number the images after the previous splits'
            first = max((e["id"] for e in entries), default=-1) + 1
            ids = np.arange(first, first + ps.n_images)
        for j, image_id in enumerate(ids.tolist()):
            entries.append({"id": int(image_id), "file_name": "", "split": split, "width": 0, "height": 0,
                            "sentences": caps[CAPS_PER_IMAGE * j: CAPS_PER_IMAGE * (j + 1)]})
    if not entries:
        raise UserError(f"{src_dir}: no precomputed split found (expected e.g. train_ims.npy, dev_ims.npy, "
                        "test_ims.npy / testall_ims.npy); run `fga data prepare` for this dataset")
    seen: dict[int, str] = {}
    for e in entries:
        if e["id"] in seen:
            raise UserError(f"{src_dir}: image id {e['id']} appears in {seen[e['id']]} and {e['split']}; "
                            "fix the *_ids.txt files (ids must be unique)")
        seen[e["id"]] = e["split"]
    return entries


def write_index(data_dir: Path, dataset: str, *, instances: bool = True) -> dict[str, Any]:
    """Write data_dir/dataset.json (and an instances.json without annotations) for the npy layout."""
    data_dir = Path(data_dir)
    ds = {"dataset": dataset, "images": index_entries(data_dir, dataset)}
    write_json(data_dir / "dataset.json", ds)
    if instances:
        write_json(data_dir / "instances.json",
                   {"images": [{"id": e["id"], "file_name": e["file_name"], "width": e["width"], "height": e["height"]}
                               for e in ds["images"]],
                    "annotations": [], "categories": []}, indent=None)
    return ds


# --------------------------------------------------------------------------- bottom-up-attention TSV


@dataclass
class TsvIndex:
    paths: list[Path]
    where: dict[int, tuple[int, int]]  # image_id -> (file index, byte offset)
    max_boxes: int

    def row(self, image_id: int, handles: list[Any]) -> dict[str, Any]:
        fi, offset = self.where[image_id]
        f = handles[fi]
        f.seek(offset)
        line = f.readline().decode("ascii").rstrip("\r\n")
        values = next(csv.reader([line], delimiter="\t"))
        if len(values) != len(TSV_FIELDS):
            raise UserError(f"{self.paths[fi]}: row of image {image_id} has {len(values)} fields, expected "
                            f"{len(TSV_FIELDS)} ({', '.join(TSV_FIELDS)})")
        row = dict(zip(TSV_FIELDS, values))
        n = int(row["num_boxes"])
        try:
            boxes = np.frombuffer(base64.b64decode(row["boxes"]), np.float32).reshape(n, 4)
            feats = np.frombuffer(base64.b64decode(row["features"]), np.float32).reshape(n, -1)
        except ValueError as exc:
            raise UserError(f"{self.paths[fi]}: image {image_id}: boxes/features do not decode to {n} rows ({exc})") from None
        return {"image_id": int(row["image_id"]), "w": float(row["image_w"]), "h": float(row["image_h"]),
                "boxes": boxes, "features": feats}


def index_tsv(paths: list[Path], quiet: bool = True) -> TsvIndex:
    """One streaming pass over the TSV file(s): byte offset and box count of every image row."""
    _raise_csv_limit()
    where: dict[int, tuple[int, int]] = {}
    max_boxes = 0
    for fi, path in enumerate(paths):
        if not path.is_file():
            raise UserError(f"features.precomp: TSV {path} not found")
        with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                        desc=f"index {path.name}", disable=quiet) as bar:
            while True:
                offset = f.tell()
                line = f.readline()
                if not line:
                    break
                bar.update(len(line))
                if not line.strip():
                    continue
                head = line.split(b"\t", 4)
                try:
                    image_id, n = int(head[0]), int(head[3])
                except (ValueError, IndexError):
                    raise UserError(f"{path}: line at byte {offset} is not a bottom-up-attention row "
                                    f"({', '.join(TSV_FIELDS)})") from None
                where[image_id] = (fi, offset)
                max_boxes = max(max_boxes, n)
    return TsvIndex(list(paths), where, max_boxes)


# --------------------------------------------------------------------------- ingestion


def _spec_paths(spec: dict[str, Any], name: str) -> list[Path]:
    tsv = spec.get("tsv")
    if not tsv:
        raise UserError(f"features.precomp.{name}.tsv is not set (format: tsv); give the bottom-up-attention TSV path(s)")
    return [Path(p) for p in ([tsv] if isinstance(tsv, str) else tsv)]


def _chunks(n: int, size: int, start: int) -> Iterator[tuple[int, int]]:
    for a in range(start, n, size):
        yield a, min(a + size, n)


def ingest(cfg: dict[str, Any], dataset: str, name: str, data_dir: Path, out_dir: Path,
           splits: tuple[str, ...] = ("train", "val", "test"), quiet: bool = False) -> None:
    """Precomputed features of every split -> out_dir/<split>.h5 (resumable, chunk by chunk, like extract)."""
    # imported here: `fga data prepare` loads this module for write_index and needs no HDF5
    from fga.features.store import StoreWriter, data_hash, feature_hash, is_current, precomp_specs

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    spec = precomp_specs(cfg)[name]
    fmt = spec.get("format", "npy")
    if fmt not in ("npy", "tsv"):
        raise UserError(f"features.precomp.{name}.format = {fmt!r}; allowed values: npy, tsv")
    if fmt == "npy" and not (data_dir / "dataset.json").exists():
        write_index(data_dir, dataset)
    ds = read_json(data_dir / "dataset.json", "dataset.json")
    key = {"params_hash": feature_hash(cfg, dataset, name), "data_hash": data_hash(data_dir / "dataset.json")}
    todo = [s for s in splits if not is_current(out_dir / f"{s}.h5", key)]
    if not todo:
        return
    chunk = cfg["features"]["batch_size"]
    base = {"backbone": name, "model": "butd_faster_rcnn_resnet101_vg", "region_source": "precomp",
            "dataset": dataset, **key}
    tsv = None
    if fmt == "tsv":
        tsv = index_tsv(_spec_paths(spec, name), quiet=quiet)
    for split in todo:
        images = split_images(ds, split)
        path = out_dir / f"{split}.h5"
        if fmt == "npy":
            _ingest_npy(data_dir, split, images, path, base, chunk, quiet, StoreWriter)
        else:
            assert tsv is not None
            _ingest_tsv(tsv, spec, split, images, path, base, chunk, quiet, StoreWriter)


def _ingest_npy(data_dir: Path, split: str, images: list[dict[str, Any]], path: Path, base: dict[str, Any],
                chunk: int, quiet: bool, writer_cls: Any) -> None:
    ps = locate_split(data_dir, split)
    if ps is None:
        if not images:
            return
        raise UserError(f"{data_dir}: no {'/'.join(SPLIT_SOURCES[split])}_ims.npy for the {split} split")
    if ps.n_images != len(images):
        raise UserError(f"{ps.ims}: {ps.n_images} images, but dataset.json has {len(images)} in {split}; "
                        f"delete {data_dir / 'dataset.json'} to rebuild it")
    feats = ps.features()
    _, r, d = feats.shape
    attrs = {**base, "weights_source": f"precomp:{ps.ims.name} (SCAN/VSE BUTD release)", "feature_dim": d,
             "boxes_note": NPY_BOX_NOTE, "source_split": ps.source}
    writer = writer_cls(path, len(images), r, d, attrs)
    ids = np.array([im["id"] for im in images], np.int64)
    with tqdm(total=len(images), initial=writer.rows_done, desc=f"{base['backbone']}/{split}", unit="img",
              disable=quiet) as bar:
        for a, b in _chunks(len(images), chunk, writer.rows_done):
            rows = np.asarray(feats[a * ps.stride: b * ps.stride: ps.stride], dtype=np.float16)
            writer.write(a, rows, np.zeros((b - a, r, 4), np.float32), np.ones((b - a, r), bool), ids[a:b])
            bar.update(b - a)
    del feats
    writer.finish()


def _ingest_tsv(tsv: TsvIndex, spec: dict[str, Any], split: str, images: list[dict[str, Any]], path: Path,
                base: dict[str, Any], chunk: int, quiet: bool, writer_cls: Any) -> None:
    missing = [im["id"] for im in images if im["id"] not in tsv.where]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise UserError(f"{', '.join(map(str, tsv.paths))}: no rows for {len(missing)} {split} image(s) of "
                        f"dataset.json (ids {shown}); give the TSV files of every split")
    r = int(spec.get("max_regions") or tsv.max_boxes)
    handles = [open(p, "rb") for p in tsv.paths]
    try:
        first = tsv.row(images[0]["id"], handles) if images else None
        d = first["features"].shape[1] if first else 0
        attrs = {**base, "weights_source": f"precomp:{','.join(p.name for p in tsv.paths)} (bottom-up-attention TSV)",
                 "feature_dim": d, "max_regions": r}
        writer = writer_cls(path, len(images), r, d, attrs)
        with tqdm(total=len(images), initial=writer.rows_done, desc=f"{base['backbone']}/{split}", unit="img",
                  disable=quiet) as bar:
            for a, b in _chunks(len(images), chunk, writer.rows_done):
                regions = np.zeros((b - a, r, d), np.float16)
                boxes = np.zeros((b - a, r, 4), np.float32)
                mask = np.zeros((b - a, r), bool)
                for i, im in enumerate(images[a:b]):
                    row = tsv.row(im["id"], handles)
                    if row["features"].shape[1] != d:
                        raise UserError(f"image {im['id']}: {row['features'].shape[1]}-d features, others are {d}-d")
                    n = min(len(row["boxes"]), r)
                    regions[i, :n] = row["features"][:n]
                    scale = np.array([row["w"], row["h"], row["w"], row["h"]], np.float32)
                    boxes[i, :n] = np.clip(row["boxes"][:n] / scale, 0.0, 1.0)
                    mask[i, :n] = True
                writer.write(a, regions, boxes, mask, np.array([im["id"] for im in images[a:b]], np.int64))
                bar.update(b - a)
        writer.finish()
    finally:
        for h in handles:
            h.close()
