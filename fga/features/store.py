"""The HDF5 feature store: one file per (dataset, backbone, split), written in resumable chunks.

Layout (DESIGN.md): `regions` float16 [N, R, D], `boxes` float32 [N, R, 4] (x1, y1, x2, y2 in 0..1),
`mask` bool [N, R], `image_id` int64 [N]; attrs: backbone, region_source, weights_source,
feature_dim, params_hash, data_hash. Writing goes to `<name>.partial`; the `rows_done` attr is
advanced only after a chunk is flushed, so a killed extraction resumes from the last complete
chunk, and the final rename makes the file appear only when it is whole.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fga.errors import UserError

REQUIRED = ("regions", "boxes", "mask", "image_id")


class StoreWriter:
    """Append-by-chunk writer with resume; use `open_or_resume`, `write(start, ...)`, `finish()`."""

    def __init__(self, path: Path, n: int, r: int, d: int, attrs: dict[str, Any], chunk_rows: int = 64):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows_done = 0
        if self.partial.exists():
            try:
                f = h5py.File(self.partial, "r+")
                same = f.attrs.get("params_hash") == attrs["params_hash"] and f["regions"].shape == (n, r, d)
                if same:
                    self.rows_done = int(f.attrs["rows_done"])
                    self.file = f
                    return
                f.close()
            except OSError:
                pass  # a partial file cut mid-header cannot be resumed: start over
            self.partial.unlink()
        f = h5py.File(self.partial, "w")
        chunk = (min(chunk_rows, n), r, d)
        f.create_dataset("regions", (n, r, d), dtype="float16", chunks=chunk)
        f.create_dataset("boxes", (n, r, 4), dtype="float32", chunks=(min(chunk_rows, n), r, 4))
        f.create_dataset("mask", (n, r), dtype="bool")
        f.create_dataset("image_id", (n,), dtype="int64")
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["rows_done"] = 0
        f.flush()
        self.file = f

    def write(self, start: int, regions: np.ndarray, boxes: np.ndarray, mask: np.ndarray, image_id: np.ndarray) -> None:
        stop = start + len(regions)
        self.file["regions"][start:stop] = regions.astype(np.float16)
        self.file["boxes"][start:stop] = boxes.astype(np.float32)
        self.file["mask"][start:stop] = mask
        self.file["image_id"][start:stop] = image_id
        self.file.flush()
        self.file.attrs["rows_done"] = stop
        self.file.flush()
        self.rows_done = stop

    def finish(self) -> None:
        self.file.attrs["rows_done"] = self.file["regions"].shape[0]
        self.file.close()
        os.replace(self.partial, self.path)


@dataclass
class RegionFeatures:
    """A whole split's features in memory (float16 regions), with the file's attrs."""

    regions: np.ndarray
    boxes: np.ndarray
    mask: np.ndarray
    image_id: np.ndarray
    attrs: dict[str, Any]


def read_store(path: str | Path, expect_hash: str | None = None) -> RegionFeatures:
    """Load a store, refusing a missing, truncated or stale file with a one-line error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: feature file not found; run `fga features extract` for this dataset/backbone")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED if k not in f]
            if missing:
                raise UserError(f"{path}: not an fga feature store (missing {', '.join(missing)}); delete it and re-extract")
            attrs = dict(f.attrs)
            if expect_hash is not None and attrs.get("params_hash") != expect_hash:
                raise UserError(
                    f"{path}: extracted with other feature params (hash {attrs.get('params_hash')} != {expect_hash}); "
                    "re-run `fga features extract` for this config"
                )
            return RegionFeatures(f["regions"][:], f["boxes"][:], f["mask"][:], f["image_id"][:], attrs)
    except OSError as exc:
        raise UserError(f"{path}: unreadable HDF5 ({exc}); delete it and re-run `fga features extract`") from None
