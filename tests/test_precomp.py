"""BUTD precomputed features (SCAN/VSE npy layout and bottom-up-attention TSV) -> feature store + dataset.json."""
import base64
import json
from pathlib import Path

import numpy as np
import pytest

from fga.config import load_params
from fga.data import precomp
from fga.errors import UserError
from fga.features import store as store_mod
from fga.features.build import build_features
from fga.features.store import feature_hash, read_store
from fga.io import read_json

ROOT = Path(__file__).resolve().parent.parent
R, D = 36, 16


@pytest.fixture
def cfg():
    return load_params(ROOT / "params.yaml", ["features.batch_size=2"])


def caps(prefix: str, n_images: int) -> str:
    return "".join(f"{prefix} image {j} caption {k}\n" for j in range(n_images) for k in range(5))


def make_npy_layout(d: Path) -> dict[str, np.ndarray]:
    """train: 3 images, one id per image; dev: 2, one id per caption line; testall: 2 images stored once per
    caption (10 rows), no ids file; test (COCO 1K subset, must be ignored for testall)."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    feats = {s: rng.standard_normal((n, R, D)).astype(np.float32) for s, n in (("train", 3), ("dev", 2), ("testall", 2),
                                                                                ("test", 1))}
    for split, f in feats.items():
        np.save(d / f"{split}_ims.npy", np.repeat(f, 5, axis=0) if split == "testall" else f)
        (d / f"{split}_caps.txt").write_text(caps(split, len(f)))
    (d / "train_ids.txt").write_text("391895\n522418\n184613\n")
    (d / "dev_ids.txt").write_text("".join(f"{i}\n" for i in (7, 7, 7, 7, 7, 9, 9, 9, 9, 9)))
    (d / "test_ids.txt").write_text("5\n")
    return feats


def test_npy_layout_ingested_streamed_and_chunked(cfg, tmp_path, monkeypatch):
    data, out = tmp_path / "data" / "coco_precomp", tmp_path / "features" / "coco_precomp" / "butd"
    feats = make_npy_layout(data)
    loads, writes = [], []
    real_load, real_write = np.load, store_mod.StoreWriter.write
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(k.get("mmap_mode")) or real_load(*a, **k))
    monkeypatch.setattr(store_mod.StoreWriter, "write", lambda self, start, *a: writes.append(start) or real_write(self, start, *a))
    build_features(cfg, "coco_precomp", "butd", data, out, quiet=True)
    assert loads and set(loads) == {"r"}  # every read memory-mapped
    assert writes == [0, 2, 0, 0]  # chunks of features.batch_size rows: train 3 -> 2 chunks, val 2, test 2

    ds = read_json(data / "dataset.json")
    by_split = {s: [im for im in ds["images"] if im["split"] == s] for s in ("train", "val", "test")}
    assert [im["id"] for im in by_split["train"]] == [391895, 522418, 184613]
    assert [im["id"] for im in by_split["val"]] == [7, 9]
    assert [im["id"] for im in by_split["test"]] == [522419, 522420]  # no ids file: numbered after the others
    assert by_split["val"][1]["sentences"] == [f"dev image 1 caption {k}" for k in range(5)]
    assert all(im["file_name"] == "" and im["width"] == 0 for im in ds["images"])
    assert read_json(data / "instances.json")["annotations"] == []

    for split, source in (("train", "train"), ("val", "dev"), ("test", "testall")):
        s = read_store(out / f"{split}.h5", expect_hash=feature_hash(cfg, "coco_precomp", "butd"))
        assert s.regions.dtype == np.float16 and s.regions.shape == feats[source].shape
        np.testing.assert_array_equal(s.regions, feats[source].astype(np.float16))
        assert not s.boxes.any() and s.mask.all()
        assert s.image_id.tolist() == [im["id"] for im in by_split[split]]
        assert s.attrs["region_source"] == "precomp" and s.attrs["feature_dim"] == D
        assert "no boxes" in s.attrs["boxes_note"] and s.attrs["source_split"] == source
        assert s.attrs["weights_source"].startswith(f"precomp:{source}_ims.npy")


def test_precomp_store_feeds_the_rest_of_the_pipeline(cfg, tmp_path, monkeypatch):
    from fga.inputs import load_split
    from fga.features.text import build_vocab_file

    monkeypatch.chdir(tmp_path)
    data = Path("data/f30k_precomp")
    feats = make_npy_layout(data)
    build_features(cfg, "f30k_precomp", "butd", data, Path("features/f30k_precomp/butd"), splits=("test",), quiet=True)
    build_vocab_file(data / "dataset.json", Path("features/f30k_precomp/text_bigru/vocab.json"), 1)
    split = load_split(cfg, "f30k_precomp", "butd", "test")
    assert split.n_images == 2 and split.tokens.shape[0] == 10
    np.testing.assert_array_equal(split.regions.numpy(), feats["testall"].astype(np.float16))


@pytest.mark.parametrize("problem, message", [
    ("ids", "captions 5..9 name different images"),
    ("caps", "is not 5 per image"),
    ("rows", "fit neither 3 images nor 15 captions"),
    ("dup", "image id 7 appears in train and val"),
])
def test_npy_layout_errors(tmp_path, problem, message):
    d = tmp_path / "f30k_precomp"
    make_npy_layout(d)
    if problem == "ids":
        (d / "dev_ids.txt").write_text("7\n" * 6 + "9\n" * 4)
    elif problem == "caps":
        (d / "train_caps.txt").write_text(caps("train", 3) + "one more\n")
    elif problem == "rows":
        np.save(d / "train_ims.npy", np.zeros((4, R, D), np.float32))
    else:
        (d / "train_ids.txt").write_text("1\n2\n7\n")
    with pytest.raises(UserError, match=message):
        precomp.write_index(d, "f30k_precomp")
    assert not (d / "dataset.json").exists()


def tsv_row(image_id: int, w: int, h: int, boxes: np.ndarray, feats: np.ndarray) -> str:
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()  # noqa: E731
    return f"{image_id}\t{w}\t{h}\t{len(boxes)}\t{b64(boxes)}\t{b64(feats)}\n"


def make_tsv(tmp_path: Path):
    rng = np.random.default_rng(1)
    images = [{"id": 100 + i, "file_name": f"{100 + i}.jpg", "split": s, "width": 64 + i, "height": 48, "sentences": ["x"] * 5}
              for i, s in enumerate(["train", "train", "val", "test"])]
    data = tmp_path / "data" / "coco"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    rows = {}
    for im, n in zip(images + [{"id": 999, "width": 10, "height": 10}], (2, 5, 3, 4, 6)):
        xy = rng.uniform(0, 20, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2))], 1).astype(np.float32)
        rows[im["id"]] = (im["width"], im["height"], boxes, rng.standard_normal((n, D)).astype(np.float32))
    order = [103, 999, 100], [102, 101]  # two files, not in dataset order
    paths = []
    for k, ids in enumerate(order):
        paths.append(tmp_path / f"trainval_36.tsv.{k}")
        paths[-1].write_text("".join(tsv_row(i, *rows[i]) for i in ids))
    return data, [str(p) for p in paths], rows


def test_tsv_rows_streamed_in_dataset_order_with_masks(tmp_path):
    data, paths, rows = make_tsv(tmp_path)
    cfg = load_params(ROOT / "params.yaml", ["features.batch_size=2", "features.precomp.butd.format=tsv",
                                             f"features.precomp.butd.tsv={json.dumps(paths)}"])
    out = tmp_path / "features" / "coco" / "butd"
    build_features(cfg, "coco", "butd", data, out, quiet=True)
    s = read_store(out / "train.h5", expect_hash=feature_hash(cfg, "coco", "butd"))
    assert s.regions.shape == (2, 6, D) and s.image_id.tolist() == [100, 101]  # R = most boxes in the TSV
    for i, image_id in enumerate([100, 101]):
        w, h, boxes, feats = rows[image_id]
        n = len(boxes)
        assert s.mask[i].tolist() == [True] * n + [False] * (6 - n)
        np.testing.assert_array_equal(s.regions[i, :n], feats.astype(np.float16))
        np.testing.assert_allclose(s.boxes[i, :n], np.clip(boxes / [w, h, w, h], 0, 1), rtol=1e-6)
        assert not s.regions[i, n:].any() and not s.boxes[i, n:].any()
    assert s.attrs["region_source"] == "precomp" and "trainval_36.tsv.0" in s.attrs["weights_source"]
    assert read_store(out / "test.h5").image_id.tolist() == [103]

    capped = load_params(ROOT / "params.yaml", ["features.precomp.butd.format=tsv", "features.precomp.butd.max_regions=3",
                                                f"features.precomp.butd.tsv={json.dumps(paths)}"])
    assert feature_hash(capped, "coco", "butd") != feature_hash(cfg, "coco", "butd")
    build_features(capped, "coco", "butd", data, out, splits=("train",), quiet=True)
    s = read_store(out / "train.h5")
    assert s.regions.shape == (2, 3, D) and s.mask.sum(1).tolist() == [2, 3]


def test_tsv_missing_images_listed(tmp_path):
    data, paths, _ = make_tsv(tmp_path)
    cfg = load_params(ROOT / "params.yaml", ["features.precomp.butd.format=tsv", f"features.precomp.butd.tsv={paths[0]}"])
    with pytest.raises(UserError, match=r"no rows for 1 train image\(s\) of dataset.json \(ids 101\)"):
        build_features(cfg, "coco", "butd", data, tmp_path / "out", quiet=True)
    cfg = load_params(ROOT / "params.yaml", ["features.precomp.butd.format=tsv"])
    with pytest.raises(UserError, match=r"features\.precomp\.butd\.tsv is not set"):
        build_features(cfg, "coco", "butd", data, tmp_path / "out", quiet=True)
