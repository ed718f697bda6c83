"""HDF5 feature stores: one file per (dataset, backbone or text encoder, split), written in resumable chunks.

Region store (DESIGN.md): `regions` float16 [N, R, D], `boxes` float32 [N, R, 4] (x1, y1, x2, y2 in 0..1),
`mask` bool [N, R], `image_id` int64 [N]; attrs: backbone, region_source, weights_source, feature_dim,
params_hash, data_hash (sha256 of dataset.json, first 16 hex digits like the MLflow `data_hash` tag).

Text store (`features/<dataset>/text_<encoder>/<split>.h5`): `tokens` float16 [N_caps, L, D], `mask` bool
[N_caps, L], `image_id` int64 [N_caps] (the image each caption describes); attrs: encoder, weights_source,
params_hash, data_hash, feature_dim, max_words.

Writing goes to `<name>.partial`. Every dataset is allocated in full when the file is created, so writing a
chunk only fills bytes at fixed offsets and never moves HDF5 metadata; the `rows_done` attr is advanced (and
the file flushed) only after a chunk's data is flushed. A process killed at any point (kill -9) thus leaves a
partial file whose first `rows_done` rows are complete: the next run resumes there, and recomputes the same
batches, so the final file holds the same bytes as an uninterrupted run. The final rename makes the file
appear only when it is whole. A partial file that cannot be opened, or was written with other params, is
discarded and started over.

Integrity: `finish()` records the `content_sha256` attr (fga.integrity): sha256 over every dataset's dtype, shape
and bytes and every other attr. Opening a finished store checks it once per process, so a byte flipped on disk
is a one-line UserError naming the file, never features silently used. Stores written before it have none.

Reading: `read_store` / `read_text_store` load a whole split; `RegionStoreDataset` and `TextStore` read one
item at a time (h5py per-item reads, the file opened lazily in each DataLoader worker).

`feature_hash` is a region store's `params_hash`: what its rows depend on (the backbone's spec under
`features.backbones`, or the precomputed source's under `features.precomp`, and the dataset's params).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from fga.config import params_hash
from fga.errors import UserError
from fga.integrity import CHUNK_BYTES, check_once, update_array
from fga.io import disk_full_error, is_disk_full

REQUIRED = ("regions", "boxes", "mask", "image_id")
TEXT_REQUIRED = ("tokens", "mask", "image_id")
RESUME_ATTRS = ("params_hash", "data_hash")  # a partial file is resumed only when these match
DIGEST_ATTR = "content_sha256"
DEFAULT_PRECOMP: dict[str, dict[str, Any]] = {"butd": {"format": "npy", "tsv": None, "max_regions": None}}

Layout = Mapping[str, tuple[tuple[int, ...], str]]


def data_hash(dataset_json: str | Path) -> str:
    """sha256 of dataset.json (16 hex digits): what a store's rows were computed from."""
    path = Path(dataset_json)
    if not path.exists():
        return "missing"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def precomp_specs(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`features.precomp` (name -> spec), or the default `butd` (npy layout) when params.yaml has none."""
    specs = cfg.get("features", {}).get("precomp")
    return {name: {**DEFAULT_PRECOMP["butd"], **(spec or {})} for name, spec in (specs or DEFAULT_PRECOMP).items()}


def known_backbones(cfg: dict[str, Any]) -> str:
    """The backbone names params.yaml defines (image backbones, then precomputed sources), for error messages."""
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
    specs = precomp_specs(cfg)
    if backbone in specs:
        return params_hash({"precomp": specs[backbone], "data": cfg["data"].get(dataset, {})})
    raise UserError(f"params.yaml: backbone {backbone!r} not under features.backbones or features.precomp; "
                    f"known: {known_backbones(cfg)}")


def content_digest(f: h5py.File) -> str:
    """sha256 of a store's content: every attr but the digest, every dataset (read in blocks of rows)."""
    digest = hashlib.sha256()
    for key in sorted(k for k in f.attrs if k != DIGEST_ATTR):
        update_array(digest, f"attr:{key}", np.asarray(f.attrs[key]))
    for name in sorted(f):
        data = f[name]
        row_bytes = data.dtype.itemsize * int(np.prod(data.shape[1:], dtype=np.int64))
        rows = max(1, CHUNK_BYTES // max(1, row_bytes))
        digest.update(f"{name}:{data.dtype.str}:{list(data.shape)};".encode())
        if not data.shape:
            update_array(digest, name, np.asarray(data[()]))
        for start in range(0, data.shape[0] if data.shape else 0, rows):
            update_array(digest, name, data[start:start + rows])
    return digest.hexdigest()


def _dcpl() -> Any:
    """Dataset creation properties: all space allocated up front, no fill pass (rows are always written)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


class ChunkedWriter:
    """Row-chunked HDF5 writer with resume: `write(start, name=array, ...)` in row order, then `finish()`.

    `layout` maps dataset name -> (shape, dtype); every shape starts with the same row count N.
    `rows_done` tells where a resumed run must continue. `abort()` removes the partial file.
    """

    def __init__(self, path: str | Path, layout: Layout, attrs: Mapping[str, Any], chunk_rows: int = 64):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.layout = {k: (tuple(int(s) for s in shape), np.dtype(dt)) for k, (shape, dt) in layout.items()}
        rows = {shape[0] for shape, _ in self.layout.values()}
        if len(rows) != 1:
            raise ValueError(f"every dataset needs the same number of rows, got {sorted(rows)}")
        self.n_rows = rows.pop()
        self.rows_done = 0
        self.file: h5py.File | None = None
        if self.partial.exists():
            self.file = self._try_resume(attrs)
            if self.file is None:
                self.partial.unlink()
        with self._unless_disk_full():
            if self.file is None:
                self.file = self._create(attrs, chunk_rows)
            self._reserve_space()

    def _reserve_space(self) -> None:
        """Allocate the file's blocks now (HDF5 only reserves addresses): a disk too small fails here, before any
        row is computed, and never mid-write, where HDF5 reports ENOSPC only while freeing handles (or crashes)."""
        fd = os.open(self.partial, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without fallocate write as before
                raise
        finally:
            os.close(fd)

    @property
    def nbytes(self) -> int:
        """The bytes of the datasets (what the finished file needs, bar a little HDF5 metadata)."""
        return sum(int(np.prod(shape, dtype=np.int64)) * dt.itemsize for shape, dt in self.layout.values())

    @contextlib.contextmanager
    def _unless_disk_full(self) -> Iterator[None]:
        """A write that fills the disk: delete the partial file (freeing its space) and say what the store needs."""
        try:
            yield
        except (OSError, RuntimeError) as exc:
            if not is_disk_full(exc, self.path.parent):
                raise
            self.abort()
            raise disk_full_error(self.path, self.nbytes, exact=True) from None

    def _try_resume(self, attrs: Mapping[str, Any]) -> h5py.File | None:
        try:
            f = h5py.File(self.partial, "r+")
        except OSError:
            return None  # cut mid-header: cannot be resumed, start over
        try:
            same = all(f.attrs.get(k) == attrs.get(k) for k in RESUME_ATTRS) and "rows_done" in f.attrs
            same = same and all(name in f and f[name].shape == shape and f[name].dtype == dt
                                for name, (shape, dt) in self.layout.items())
            if same:
                self.rows_done = min(int(f.attrs["rows_done"]), self.n_rows)
                return f
        except (OSError, KeyError, ValueError):
            pass
        f.close()
        return None

    def _create(self, attrs: Mapping[str, Any], chunk_rows: int) -> h5py.File:
        f = h5py.File(self.partial, "w")
        for name, (shape, dt) in self.layout.items():
            chunks = (min(chunk_rows, shape[0]), *shape[1:]) if shape[0] > 0 and all(shape[1:]) else None
            f.create_dataset(name, shape, dtype=dt, chunks=chunks, dcpl=_dcpl())
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["rows_done"] = 0
        f.flush()
        return f

    def write(self, start: int, **arrays: np.ndarray) -> None:
        """Rows [start, start + len) of every dataset; rows_done advances only once they are on disk."""
        assert self.file is not None, "writer already finished"
        if set(arrays) != set(self.layout):
            raise ValueError(f"write needs exactly {sorted(self.layout)}, got {sorted(arrays)}")
        stop = start + len(next(iter(arrays.values())))
        with self._unless_disk_full():
            for name, value in arrays.items():
                self.file[name][start:stop] = np.asarray(value).astype(self.layout[name][1], copy=False)
            self.file.flush()
            self.file.attrs["rows_done"] = stop
            self.file.flush()
        self.rows_done = stop

    def finish(self) -> None:
        """Close and rename the partial file into place (only when every row is written)."""
        assert self.file is not None, "writer already finished"
        if self.rows_done < self.n_rows:
            raise RuntimeError(f"{self.partial}: only {self.rows_done} of {self.n_rows} rows written")
        with self._unless_disk_full():
            self.file.attrs["rows_done"] = self.n_rows
            self.file.attrs[DIGEST_ATTR] = content_digest(self.file)
            self.file.close()
        self.file = None
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Close and delete the partial file: nothing of this run is left behind."""
        if self.file is not None:
            try:
                self.file.close()
            except (OSError, RuntimeError):  # its last flush fails too when the disk is full
                pass
            self.file = None
        self.partial.unlink(missing_ok=True)


class StoreWriter(ChunkedWriter):
    """The region store writer; use `write(start, regions, boxes, mask, image_id)`, then `finish()`."""

    def __init__(self, path: Path, n: int, r: int, d: int, attrs: dict[str, Any], chunk_rows: int = 64):
        layout = {"regions": ((n, r, d), "float16"), "boxes": ((n, r, 4), "float32"), "mask": ((n, r), "bool"),
                  "image_id": ((n,), "int64")}
        super().__init__(path, layout, attrs, chunk_rows)

    def write(self, start: int, regions: np.ndarray, boxes: np.ndarray, mask: np.ndarray,  # type: ignore[override]
              image_id: np.ndarray) -> None:
        super().write(start, regions=regions, boxes=boxes, mask=mask, image_id=image_id)


class TextStoreWriter(ChunkedWriter):
    """The text token store writer; use `write(start, tokens, mask, image_id)`, then `finish()`."""

    def __init__(self, path: Path, n: int, length: int, d: int, attrs: dict[str, Any], chunk_rows: int = 256):
        layout = {"tokens": ((n, length, d), "float16"), "mask": ((n, length), "bool"), "image_id": ((n,), "int64")}
        super().__init__(path, layout, attrs, chunk_rows)

    def write(self, start: int, tokens: np.ndarray, mask: np.ndarray, image_id: np.ndarray) -> None:  # type: ignore[override]
        super().write(start, tokens=tokens, mask=mask, image_id=image_id)


def stored_attrs(path: str | Path) -> dict[str, Any] | None:
    """A finished store's attrs, or None when it is missing or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return dict(f.attrs)
    except (OSError, FileNotFoundError):
        return None


def is_current(path: str | Path, attrs: Mapping[str, Any]) -> bool:
    """True when `path` is a finished store of the same params (and, if it records one, the same data)."""
    old = stored_attrs(path) if Path(path).exists() else None
    if old is None or old.get("params_hash") != attrs.get("params_hash"):
        return False
    return "data_hash" not in old or old.get("data_hash") == attrs.get("data_hash")


def _open_checked(path: Path, required: Sequence[str], expect_hash: str | None, what: str, fix: str) -> h5py.File:
    if not path.exists():
        raise UserError(f"{path}: {what} file not found; run `{fix}` for this dataset")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path}: unreadable HDF5 ({exc}); delete it and re-run `{fix}`") from None
    missing = [k for k in required if k not in f]
    if missing:
        f.close()
        raise UserError(f"{path}: not an fga {what} store (missing {', '.join(missing)}); delete it and re-run `{fix}`")
    if expect_hash is not None and f.attrs.get("params_hash") != expect_hash:
        stored = f.attrs.get("params_hash")
        f.close()
        raise UserError(f"{path}: extracted with other {what} params (hash {stored} != {expect_hash}); re-run `{fix}` "
                        "for this config")
    _verify_content(f, path, fix)
    return f


def _verify_content(f: h5py.File, path: Path, fix: str) -> None:
    """Check the recorded content digest (stores written before it existed have none); closes `f` on failure."""
    expected = f.attrs.get(DIGEST_ATTR)
    if expected is None:
        return
    try:
        check_once(path, str(expected), lambda: content_digest(f), fix)
    except OSError as exc:  # a flipped byte in a chunk's metadata fails the read itself
        f.close()
        raise UserError(f"{path}: unreadable HDF5 ({exc}); delete it and re-run `{fix}`") from None
    except UserError:
        f.close()
        raise


def open_store(path: str | Path, expect_hash: str | None = None) -> h5py.File:
    """Open a region store read-only after the same checks as `read_store` (the caller closes it)."""
    return _open_checked(Path(path), REQUIRED, expect_hash, "feature", "fga features extract")


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
    f = open_store(path, expect_hash)
    try:
        return RegionFeatures(f["regions"][:], f["boxes"][:], f["mask"][:], f["image_id"][:], dict(f.attrs))
    except OSError as exc:
        raise UserError(f"{path}: unreadable HDF5 ({exc}); delete it and re-run `fga features extract`") from None
    finally:
        f.close()


@dataclass
class TextFeatures:
    """A whole split's caption token features in memory."""

    tokens: np.ndarray  # float16 [N_caps, L, D]
    mask: np.ndarray  # bool [N_caps, L]
    image_id: np.ndarray  # int64 [N_caps]
    attrs: dict[str, Any]


def open_text_store(path: str | Path, expect_hash: str | None = None) -> h5py.File:
    return _open_checked(Path(path), TEXT_REQUIRED, expect_hash, "text feature", "fga features text-encode")


def read_text_store(path: str | Path, expect_hash: str | None = None) -> TextFeatures:
    """Load a text token store whole, with the same checks as `read_store`."""
    path = Path(path)
    f = open_text_store(path, expect_hash)
    try:
        return TextFeatures(f["tokens"][:], f["mask"][:], f["image_id"][:], dict(f.attrs))
    except OSError as exc:
        raise UserError(f"{path}: unreadable HDF5 ({exc}); delete it and re-run `fga features text-encode`") from None
    finally:
        f.close()


class _LazyH5:
    """An HDF5 file opened on first use in each process (DataLoader workers fork or spawn; handles don't travel)."""

    def __init__(self, path: str | Path, expect_hash: str | None = None):
        self.path = Path(path)
        self.expect_hash = expect_hash
        self._file: h5py.File | None = None
        self._pid: int | None = None
        with self._open() as f:  # check the file now, in the parent: errors surface before any worker starts
            self.attrs = dict(f.attrs)
            self._shapes = {k: f[k].shape for k in f}

    def _open(self) -> h5py.File:
        raise NotImplementedError

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = self._open()
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class TextStore(_LazyH5):
    """Per-caption reads of a text store: `store[k]` -> (tokens float32 [L, D], mask bool [L]) as tensors."""

    def _open(self) -> h5py.File:
        return open_text_store(self.path, self.expect_hash)

    def __len__(self) -> int:
        return self._shapes["image_id"][0]

    @property
    def image_id(self) -> np.ndarray:
        """The image each caption describes, int64 [N_caps] (read through a handle of its own, closed at once)."""
        with self._open() as f:
            return f["image_id"][:]

    def __getitem__(self, k: int):
        import torch

        f = self.file
        return torch.from_numpy(f["tokens"][k].astype(np.float32)), torch.from_numpy(f["mask"][k])


class RegionStoreDataset(_LazyH5):
    """A torch Dataset over a region store, read one item at a time (nothing is loaded up front).

    With `tokens` (anything indexable per caption: the [N_caps, L] int64 ids of `encode_captions`, or a
    `TextStore`), item k is caption k with its image k // caps_per_image:
    `(regions float32 [R, D], mask bool [R], tokens[k])`. Without, item i is image i:
    `(regions, mask, image_id)`. Tokens that carry `image_id` per caption (a `TextStore`) must pair caption k with
    the store's image k // caps_per_image, and a text store must come from the same dataset.json (`data_hash`).
    """

    def __init__(self, path: str | Path, tokens: Any = None, expect_hash: str | None = None, caps_per_image: int = 5):
        super().__init__(path, expect_hash)
        self.tokens = tokens
        self.caps_per_image = caps_per_image
        if tokens is not None:
            self._check_pairing(tokens)

    def _check_pairing(self, tokens: Any) -> None:
        """Refuse captions that do not line up with the store's images, in one line naming both files."""
        n_images = self.n_images
        what = getattr(tokens, "path", "the caption tokens")
        fix = "rebuild both from the same dataset.json (`fga features extract` and `fga features text-encode`)"
        if len(tokens) != n_images * self.caps_per_image:
            raise UserError(f"{self.path}: {n_images} images need {n_images * self.caps_per_image} captions "
                            f"({self.caps_per_image} each), got {len(tokens)} in {what}")
        ours, theirs = self.attrs.get("data_hash"), getattr(tokens, "attrs", {}).get("data_hash")
        if ours is not None and theirs is not None and ours != theirs:
            raise UserError(f"{self.path}: data_hash {ours} != {theirs} of {what} (another dataset.json); {fix}")
        caption_ids = getattr(tokens, "image_id", None)
        if caption_ids is None:
            return  # plain token ids carry no image ids: only the count can be checked
        with self._open() as f:
            expected = np.repeat(f["image_id"][:], self.caps_per_image)
        bad = np.flatnonzero(np.asarray(caption_ids) != expected)
        if len(bad):
            k = int(bad[0])
            raise UserError(f"{self.path}: caption {k} of {what} describes image {int(caption_ids[k])}, but the "
                            f"store's image {k // self.caps_per_image} is {int(expected[k])} ({len(bad)} captions off); "
                            f"{fix}")

    def _open(self) -> h5py.File:
        return open_store(self.path, self.expect_hash)

    @property
    def n_images(self) -> int:
        return self._shapes["image_id"][0]

    def __len__(self) -> int:
        return self.n_images if self.tokens is None else len(self.tokens)

    def __getitem__(self, k: int):
        import torch

        if not 0 <= k < len(self):
            raise IndexError(k)
        i = k if self.tokens is None else k // self.caps_per_image
        f = self.file
        regions = torch.from_numpy(f["regions"][i].astype(np.float32))
        mask = torch.from_numpy(f["mask"][i])
        if self.tokens is None:
            return regions, mask, int(f["image_id"][i])
        tok = self.tokens[k]
        return regions, mask, torch.from_numpy(np.asarray(tok)) if isinstance(tok, np.ndarray) else tok
