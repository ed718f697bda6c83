"""`fga features extract`: every listed backbone on a few tiny images, kill -9 resume, bad images, idempotence."""
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fga.config import load_params, params_hash
from fga.data import split_images
from fga.data.synthetic import generate
from fga.errors import UserError
from fga.features import extract as extract_mod
from fga.features.extract import extract
from fga.features.store import data_hash, feature_hash, read_store
from fga.features.visual import RegionExtractor
from fga.io import read_json

ROOT = Path(__file__).resolve().parent.parent
ROI_RAND = {"model": "tf_efficientnet_lite0", "weights": "random", "regions": "boxes", "max_regions": 4, "input_size": 64}


@pytest.fixture(scope="module")
def cfg():
    c = load_params(ROOT / "params.yaml", ["features.batch_size=2"])
    c["features"]["backbones"]["roi_rand"] = dict(ROI_RAND)
    return c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic") / "synthetic"
    generate(d, n_train=8, n_val=1, n_test=2, image_size=64, progress=False)
    return d


def datasets_of(path: Path) -> dict:
    with h5py.File(path) as f:
        return {k: (f[k].dtype.str, f[k].shape, f[k][:].tobytes()) for k in f}, dict(f.attrs)


@pytest.mark.parametrize("backbone, n_regions, dim, cls", [
    ("vit_tiny_random", 1 + 14 * 14, 192, 0),
    ("swin_tiny_random", 7 * 7, 768, -1),
])
def test_patch_backbones_from_params(cfg, data, tmp_path, backbone, n_regions, dim, cls):
    """The CPU-sized ViT / Swin entries of params.yaml, through extract, on the 2 test images."""
    extract(cfg, "synthetic", backbone, data, tmp_path, splits=("test",), quiet=True)
    ds = read_json(data / "dataset.json")
    s = read_store(tmp_path / "test.h5", expect_hash=feature_hash(cfg, "synthetic", backbone))
    assert s.regions.shape == (2, n_regions, dim) and s.regions.dtype == np.float16
    assert s.mask.all() and np.isfinite(s.regions).all() and s.regions.astype(np.float32).std() > 0
    assert s.image_id.tolist() == [im["id"] for im in split_images(ds, "test")]
    assert s.attrs["region_source"] == "patches" and s.attrs["cls_index"] == cls
    assert s.attrs["weights_source"] == "random-init" and s.attrs["feature_dim"] == dim
    assert s.attrs["input_size"] == 224 and s.attrs["data_hash"] == data_hash(data / "dataset.json")
    grid = int(np.sqrt(n_regions - (cls == 0)))
    assert s.attrs["patch_grid"].tolist() == [grid, grid]
    cells = s.boxes[0, (cls == 0):]
    assert np.allclose(cells[0], [0, 0, 1 / grid, 1 / grid]) and np.allclose(cells[-1], [1 - 1 / grid, 1 - 1 / grid, 1, 1])
    if cls == 0:
        assert s.boxes[0, 0].tolist() == [0, 0, 1, 1]


PAPER = [("vit_base_224", 1 + 14 * 14, 768), ("vit_base_384", 1 + 24 * 24, 768), ("swin_base_224", 7 * 7, 1024),
         ("swin_base_384", 12 * 12, 1024)]


def test_paper_backbones_random_init_through_extract(data, tmp_path, monkeypatch):
    """The paper's four as params.yaml registers them, `--set ...weights=random`, through extract at their native
    input sizes on the 2 test images (~25 s on 2 CPU cores): token counts [N, L(+CLS), D] and the weights recorded.

    timm's truncated-normal init (erfinv over ~88M weights) is 80% of building a base model on this CPU: the test
    draws a clamped normal instead - the weights are random either way, and only shapes and the path are checked.
    """
    import timm.layers.weight_init as weight_init

    monkeypatch.setattr(weight_init, "_trunc_normal_", lambda t, mean, std, a, b: t.normal_(mean, std).clamp_(a, b))
    c = load_params(ROOT / "params.yaml", ["features.batch_size=2", *(f"features.backbones.{b}.weights=random"
                                                                       for b, _, _ in PAPER)])
    for backbone, n_regions, dim in PAPER:
        extract(c, "synthetic", backbone, data, tmp_path / backbone, splits=("test",), quiet=True)
        s = read_store(tmp_path / backbone / "test.h5", expect_hash=feature_hash(c, "synthetic", backbone))
        assert s.regions.shape == (2, n_regions, dim) and s.mask.all() and np.isfinite(s.regions).all(), backbone
        assert s.attrs["weights_source"] == "random-init" and s.attrs["region_source"] == "patches"
        assert s.attrs["input_size"] == int(backbone[-3:]) and s.attrs["cls_index"] == (0 if "vit" in backbone else -1)


def test_lite0_grid_packaged_through_extract(data, tmp_path):
    """The default DAG's grid backbone, packaged weights as params.yaml has them: 36 tokens of 432 dims."""
    c = load_params(ROOT / "params.yaml", ["features.batch_size=2"])
    extract(c, "synthetic", "lite0_grid", data, tmp_path, splits=("test",), quiet=True)
    s = read_store(tmp_path / "test.h5", expect_hash=feature_hash(c, "synthetic", "lite0_grid"))
    assert s.regions.shape == (2, 36, 432) and s.mask.all() and s.attrs["region_source"] == "grid"
    assert s.attrs["weights_source"].startswith("packaged:") and "images_without_boxes" not in s.attrs
    assert np.allclose(s.boxes[0, 7], [1 / 6, 1 / 6, 2 / 6, 2 / 6])  # row-major 6 x 6 cells


@pytest.mark.parametrize("backbone", ["lite0_grid", "lite0_roi"])
def test_store_bytes_do_not_depend_on_features_threads(tmp_path, backbone):
    """features.threads sets the job's torch threads (the workflow runs its extraction jobs side by side, 1 thread
    each). At batches of 16 or more (params.yaml: 64) the store is byte for byte the same with 1 or 2 threads, so
    the thread count is no store parameter (at batch 8 oneDNN picks other kernels: the last fp16 bit may differ)."""
    data = tmp_path / "synthetic"
    generate(data, n_train=16, n_val=1, n_test=1, image_size=64, progress=False)
    before = torch.get_num_threads()
    stores = {}
    try:
        for threads in (1, 2):
            c = load_params(ROOT / "params.yaml", ["features.batch_size=16", f"features.threads={threads}"])
            extract(c, "synthetic", backbone, data, tmp_path / str(threads), splits=("train",), quiet=True)
            assert torch.get_num_threads() == threads
            stores[threads] = datasets_of(tmp_path / str(threads) / "train.h5")
    finally:
        torch.set_num_threads(before)
    assert stores[1] == stores[2]


def test_boxes_file_regions_and_count_of_images_without_boxes(cfg, data, tmp_path):
    """ROI regions on a boxes file: its boxes in file order, an image it lacks is one whole-image region (counted)."""
    test = split_images(read_json(data / "dataset.json"), "test")
    w, h = test[0]["width"], test[0]["height"]
    boxes = [[8, 4, 16, 32], [0, 0, 64, 64], [32, 32, 8, 8]]  # x, y, w, h pixels; the last is cut by max_regions 2
    (tmp_path / "boxes.json").write_text(json.dumps({str(test[0]["id"]): boxes, "999999": [[1, 1, 2, 2]]}))
    c = copy.deepcopy(cfg)
    c["features"]["backbones"]["roi_rand"].update(boxes_file=str(tmp_path / "boxes.json"), max_regions=2)
    extract(c, "synthetic", "roi_rand", data, tmp_path / "out", splits=("test",), quiet=True)
    s = read_store(tmp_path / "out" / "test.h5", expect_hash=feature_hash(c, "synthetic", "roi_rand"))
    assert s.attrs["region_source"] == "boxes_file:boxes.json" and s.attrs["images_without_boxes"] == 1
    assert s.mask.sum(1).tolist() == [2, 1]
    expect = np.array([[x / w, y / h, (x + bw) / w, (y + bh) / h] for x, y, bw, bh in boxes[:2]], np.float32)
    np.testing.assert_allclose(s.boxes[0], expect)
    assert s.boxes[1, 0].tolist() == [0, 0, 1, 1]

    # the hash covers the file's contents when set, and is the unchanged spec hash when not
    before = feature_hash(c, "synthetic", "roi_rand")
    (tmp_path / "boxes.json").write_text(json.dumps({str(test[0]["id"]): boxes[:1]}))
    assert feature_hash(c, "synthetic", "roi_rand") != before
    assert feature_hash(cfg, "synthetic", "lite0_roi") == params_hash(
        {"backbone": cfg["features"]["backbones"]["lite0_roi"], "data": cfg["data"]["synthetic"]})
    extract(cfg, "synthetic", "roi_rand", data, tmp_path / "gt", splits=("test",), quiet=True)  # instances.json
    default = read_store(tmp_path / "gt" / "test.h5")
    assert default.attrs["region_source"] == "gt_boxes" and default.attrs["images_without_boxes"] == 0


def test_split_without_any_box_is_one_line_error(cfg, data, tmp_path):
    train = split_images(read_json(data / "dataset.json"), "train")
    (tmp_path / "boxes.json").write_text(json.dumps({str(train[0]["id"]): [[0, 0, 8, 8]]}))
    c = copy.deepcopy(cfg)
    c["features"]["backbones"]["roi_rand"]["boxes_file"] = str(tmp_path / "boxes.json")
    with pytest.raises(UserError, match=r"boxes\.json: none of the 1 val images has a box.*regions: grid") as exc:
        extract(c, "synthetic", "roi_rand", data, tmp_path / "out", quiet=True)  # train is fine, val is refused
    assert "\n" not in str(exc.value) and not (tmp_path / "out").exists()

    bare = tmp_path / "bare"
    shutil.copytree(data, bare, ignore=shutil.ignore_patterns("instances.json"))
    with pytest.raises(UserError, match=r"instances\.json: not found, so none of the 2 test images .*boxes_file"):
        extract(cfg, "synthetic", "roi_rand", bare, tmp_path / "out", splits=("test",), quiet=True)
    (tmp_path / "bad.json").write_text(json.dumps({"7": [[0, 0, 0, 5]]}))
    c["features"]["backbones"]["roi_rand"]["boxes_file"] = str(tmp_path / "bad.json")
    with pytest.raises(UserError, match=r"bad\.json: entry '7' .*w, h > 0"):
        extract(c, "synthetic", "roi_rand", data, tmp_path / "out", splits=("test",), quiet=True)
    with pytest.raises(UserError, match="boxes_file is only read with regions: boxes"):
        RegionExtractor({**ROI_RAND, "regions": "grid", "grid_size": 2, "boxes_file": str(tmp_path / "boxes.json")})


def test_checkpoint_backbone_without_path_is_one_line_error(cfg, data, tmp_path):
    with pytest.raises(UserError, match=r"features\.backbones\.vit_base_224\.checkpoint is not set") as exc:
        extract(cfg, "synthetic", "vit_base_224", data, tmp_path, quiet=True)
    assert "\n" not in str(exc.value)
    c = copy.deepcopy(cfg)
    c["features"]["backbones"]["vit_base_224"]["checkpoint"] = str(tmp_path / "vit_b16.pth")
    with pytest.raises(UserError, match="vit_b16.pth"):
        extract(c, "synthetic", "vit_base_224", data, tmp_path, quiet=True)
    with pytest.raises(UserError, match="no packaged weights for vit_tiny"):
        RegionExtractor({"model": "vit_tiny_patch16_224", "weights": "packaged", "regions": "patches"}, name="v")
    with pytest.raises(UserError, match="gives patches regions, not 'grid'"):
        RegionExtractor({"model": "vit_tiny_patch16_224", "weights": "random", "regions": "grid"}, name="v")
    with pytest.raises(UserError, match="not a timm model"):
        RegionExtractor({"model": "vit_enormous", "weights": "random", "regions": "patches"}, name="v")
    with pytest.raises(UserError, match="not under features.backbones or features.precomp"):
        feature_hash(cfg, "synthetic", "nope")
    assert not list(tmp_path.glob("*.h5*"))


def test_checkpoint_weights_load_through_timm_filter(tmp_path):
    """A user's timm checkpoint (classifier head included, trained at 224) loads into a 112-px extractor."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "vit_tiny.pth")
    save_file(state, str(tmp_path / "vit_tiny.safetensors"))
    for path in (tmp_path / "vit_tiny.pth", tmp_path / "vit_tiny.safetensors"):
        spec = {"model": "vit_tiny_patch16_224", "weights": "checkpoint", "checkpoint": str(path), "regions": "patches",
                "input_size": 112}
        ext = RegionExtractor(spec, name="vit_ckpt")
        assert ext.weights_source == f"checkpoint:{path}" and ext.n_regions == 1 + 7 * 7
        assert torch.equal(ext.backbone.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
        assert ext.backbone.pos_embed.shape[1] == 50  # resampled from 197 by timm's checkpoint_filter_fn
    assert ext.extract_batch(torch.zeros(1, 3, 112, 112))[0].shape == (1, 50, 192)
    with pytest.raises(UserError, match="checkpoint lacks|do not fit"):
        RegionExtractor({**spec, "model": "swin_tiny_patch4_window7_224", "input_size": 64}, name="wrong")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        RegionExtractor({**spec, "checkpoint": str(tmp_path / "junk.pth")}, name="junk")


CHILD = """
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[4]))  # the parent's: CPU kernels may sum in another order with other thread counts
import fga.features.visual as visual
slow = visual.RegionExtractor.extract_batch
def extract_batch(self, *a, **k):
    out = slow(self, *a, **k)
    time.sleep(0.5)  # stretch each batch so the parent can kill -9 between flushed chunks
    return out
visual.RegionExtractor.extract_batch = extract_batch
from fga.features.extract import extract
cfg = json.loads(Path(sys.argv[1]).read_text())
extract(cfg, "synthetic", "roi_rand", Path(sys.argv[2]), Path(sys.argv[3]), splits=("train",), quiet=True)
"""


def rows_done(partial: Path) -> int:
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(f.attrs["rows_done"])
    except (OSError, KeyError):
        return -1


def test_kill_9_resumes_from_last_chunk_and_matches_uninterrupted_run(cfg, data, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    partial = out / "train.h5.partial"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "child.py").write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "cfg.json"), str(data), str(out),
                              str(torch.get_num_threads())],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while rows_done(partial) < 2:  # the first chunk (a batch of 2) is flushed
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no chunk flushed in time"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stderr.close()
    done = rows_done(partial)
    assert 2 <= done < 8 and not (out / "train.h5").exists()

    calls = []
    real = RegionExtractor.extract_batch
    monkeypatch.setattr(RegionExtractor, "extract_batch", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    extract(cfg, "synthetic", "roi_rand", data, out, splits=("train",), quiet=True)
    assert len(calls) == (8 - done + 1) // 2  # only the batches after the last complete chunk
    assert not partial.exists()

    extract(cfg, "synthetic", "roi_rand", data, tmp_path / "straight", splits=("train",), quiet=True)
    resumed, straight = datasets_of(out / "train.h5"), datasets_of(tmp_path / "straight" / "train.h5")
    assert resumed[0].keys() == straight[0].keys() == {"regions", "boxes", "mask", "image_id"}
    for k in straight[0]:
        assert resumed[0][k] == straight[0][k], k  # dtype, shape and every byte
    assert {k: str(v) for k, v in resumed[1].items()} == {k: str(v) for k, v in straight[1].items()}
    s = read_store(out / "train.h5")
    assert s.mask.sum(1).min() >= 1 and s.mask.sum(1).max() <= 4 and s.attrs["region_source"] == "gt_boxes"

    # a rerun with the same params and data builds nothing
    mtime = (out / "train.h5").stat().st_mtime_ns
    monkeypatch.setattr(extract_mod, "RegionExtractor", lambda *a, **k: pytest.fail("the backbone was built again"))
    extract(cfg, "synthetic", "roi_rand", data, out, splits=("train",), quiet=True)
    assert (out / "train.h5").stat().st_mtime_ns == mtime


def test_bad_images_listed_at_once_and_nothing_left_behind(cfg, data, tmp_path):
    copy_dir = tmp_path / "synthetic"
    shutil.copytree(data, copy_dir)
    ds = read_json(copy_dir / "dataset.json")
    train, test = split_images(ds, "train"), split_images(ds, "test")
    victims = [train[5], test[1]]  # the train one comes after two flushed chunks
    for im in victims:
        p = copy_dir / "images" / im["file_name"]
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    out = tmp_path / "features"
    with pytest.raises(UserError) as exc:
        extract(cfg, "synthetic", "roi_rand", copy_dir, out, quiet=True)
    msg = str(exc.value)
    assert msg.startswith("2 unreadable image(s)") and "\n" not in msg
    for im in victims:
        assert im["file_name"] in msg and f"image id {im['id']}" in msg
    assert not out.exists() or not any(out.iterdir())
