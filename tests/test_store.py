"""The HDF5 stores: resumable chunked writing, checked reading, per-item torch Datasets (no models run here)."""
import pickle

import h5py
import numpy as np
import pytest
import torch

from fga.errors import UserError
from fga.features.store import (ChunkedWriter, RegionStoreDataset, StoreWriter, TextStore, TextStoreWriter, data_hash,
                                is_current, read_store, read_text_store)

N, R, D = 7, 3, 5


def attrs(h="h1", dh="d1"):
    return {"backbone": "b", "region_source": "grid", "weights_source": "random-init", "feature_dim": D,
            "params_hash": h, "data_hash": dh}


def rows(a, b, seed=0):
    rng = np.random.default_rng(seed)
    n = b - a
    return (rng.standard_normal((n, R, D)).astype(np.float32), rng.random((n, R, 4)).astype(np.float32),
            rng.random((n, R)) > 0.3, np.arange(a, b, dtype=np.int64) + 100)


def write_store(path, chunk=3, h="h1"):
    w = StoreWriter(path, N, R, D, attrs(h), chunk_rows=chunk)
    for a in range(w.rows_done, N, chunk):
        w.write(a, *rows(a, min(a + chunk, N), seed=a))
    w.finish()


def test_written_store_reads_back_exactly(tmp_path):
    path = tmp_path / "s.h5"
    write_store(path)
    assert not (tmp_path / "s.h5.partial").exists()
    s = read_store(path, expect_hash="h1")
    expect = [np.concatenate(x) for x in zip(*(rows(a, min(a + 3, N), seed=a) for a in range(0, N, 3)))]
    assert s.regions.dtype == np.float16 and s.regions.shape == (N, R, D)
    np.testing.assert_array_equal(s.regions, expect[0].astype(np.float16))
    np.testing.assert_array_equal(s.boxes, expect[1])
    np.testing.assert_array_equal(s.mask, expect[2])
    np.testing.assert_array_equal(s.image_id, expect[3])
    assert s.attrs["rows_done"] == N and s.attrs["data_hash"] == "d1"
    with h5py.File(path) as f:
        assert f["regions"].chunks == (3, R, D)


def test_resume_continues_after_last_flushed_chunk_and_matches(tmp_path):
    ref, path = tmp_path / "ref.h5", tmp_path / "s.h5"
    write_store(ref)
    w = StoreWriter(path, N, R, D, attrs(), chunk_rows=3)
    w.write(0, *rows(0, 3, seed=0))
    del w  # dropped without finish (as after a crash)
    w = StoreWriter(path, N, R, D, attrs(), chunk_rows=3)
    assert w.rows_done == 3
    for a in range(3, N, 3):
        w.write(a, *rows(a, min(a + 3, N), seed=a))
    w.finish()
    a, b = read_store(ref), read_store(path)
    for k in ("regions", "boxes", "mask", "image_id"):
        assert getattr(a, k).tobytes() == getattr(b, k).tobytes()


@pytest.mark.parametrize("change", ["params", "data", "shape", "garbage"])
def test_partial_of_other_params_or_corrupt_starts_over(tmp_path, change):
    path = tmp_path / "s.h5"
    w = StoreWriter(path, N, R, D, attrs(), chunk_rows=3)
    w.write(0, *rows(0, 3))
    w.file.close()
    if change == "garbage":
        (tmp_path / "s.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    new = {"params": attrs(h="h2"), "data": attrs(dh="d2")}.get(change, attrs())
    w = StoreWriter(path, N + (change == "shape"), R, D, new, chunk_rows=3)
    assert w.rows_done == 0
    w.abort()
    assert not (tmp_path / "s.h5.partial").exists()


def test_finish_refuses_incomplete_store(tmp_path):
    w = StoreWriter(tmp_path / "s.h5", N, R, D, attrs())
    w.write(0, *rows(0, 3))
    with pytest.raises(RuntimeError, match="3 of 7"):
        w.finish()


def test_empty_split_store(tmp_path):
    w = StoreWriter(tmp_path / "e.h5", 0, R, D, attrs())
    w.finish()
    assert read_store(tmp_path / "e.h5").regions.shape == (0, R, D)


def test_generic_writer_checks_layout(tmp_path):
    with pytest.raises(ValueError, match="same number of rows"):
        ChunkedWriter(tmp_path / "x.h5", {"a": ((2,), "f4"), "b": ((3,), "f4")}, {"params_hash": "h"})


def test_read_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_store(tmp_path / "nope.h5")
    write_store(tmp_path / "s.h5")
    with pytest.raises(UserError, match="other feature params"):
        read_store(tmp_path / "s.h5", expect_hash="zzz")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="unreadable HDF5"):
        read_store(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["regions"] = np.zeros(1)
    with pytest.raises(UserError, match="missing boxes, mask, image_id"):
        read_store(tmp_path / "other.h5")


def test_is_current_and_data_hash(tmp_path):
    write_store(tmp_path / "s.h5")
    assert is_current(tmp_path / "s.h5", {"params_hash": "h1", "data_hash": "d1"})
    assert not is_current(tmp_path / "s.h5", {"params_hash": "h1", "data_hash": "d2"})
    assert not is_current(tmp_path / "missing.h5", {"params_hash": "h1"})
    (tmp_path / "dataset.json").write_text("{}")
    assert data_hash(tmp_path / "dataset.json") == "44136fa355b3678a"  # sha256("{}")[:16]
    assert data_hash(tmp_path / "none.json") == "missing"


def test_region_store_dataset_reads_items_lazily(tmp_path):
    path = tmp_path / "s.h5"
    write_store(path)
    whole = read_store(path)
    tokens = np.arange(N * 5 * 4).reshape(N * 5, 4)
    ds = RegionStoreDataset(path, tokens, expect_hash="h1")
    assert len(ds) == N * 5 and ds._file is None  # nothing opened (or loaded) until an item is read
    regions, mask, tok = ds[13]
    assert regions.dtype == torch.float32 and torch.equal(regions, torch.from_numpy(whole.regions[2].astype(np.float32)))
    assert torch.equal(mask, torch.from_numpy(whole.mask[2])) and tok.tolist() == tokens[13].tolist()
    ds2 = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets: no open handle
    assert ds2._file is None and torch.equal(ds2[13][0], regions)
    per_image = RegionStoreDataset(path)
    assert len(per_image) == N and per_image[4][2] == whole.image_id[4]
    with pytest.raises(UserError, match="other feature params"):
        RegionStoreDataset(path, expect_hash="zzz")
    with pytest.raises(UserError, match="35 captions"):
        RegionStoreDataset(path, tokens[:10])


def test_region_store_dataset_in_dataloader_workers(tmp_path):
    path = tmp_path / "s.h5"
    write_store(path)
    loader = torch.utils.data.DataLoader(RegionStoreDataset(path), batch_size=3, num_workers=2)
    ids = torch.cat([b[2] for b in loader])
    assert ids.tolist() == read_store(path).image_id.tolist()


def test_text_store_roundtrip_and_pairing(tmp_path):
    n_caps, L, Dt = N * 5, 6, 4
    rng = np.random.default_rng(1)
    tok = rng.standard_normal((n_caps, L, Dt)).astype(np.float32)
    mask = np.arange(L)[None] < rng.integers(1, L + 1, n_caps)[:, None]
    ids = np.repeat(np.arange(N) + 100, 5)
    w = TextStoreWriter(tmp_path / "t.h5", n_caps, L, Dt, {"encoder": "e", "params_hash": "t1"}, chunk_rows=8)
    for a in range(0, n_caps, 8):
        w.write(a, tok[a:a + 8], mask[a:a + 8], ids[a:a + 8])
    w.finish()
    t = read_text_store(tmp_path / "t.h5", expect_hash="t1")
    assert t.tokens.dtype == np.float16 and t.tokens.shape == (n_caps, L, Dt)
    np.testing.assert_array_equal(t.mask, mask)
    with pytest.raises(UserError, match="other text feature params"):
        read_text_store(tmp_path / "t.h5", expect_hash="x")
    write_store(tmp_path / "s.h5")
    ds = RegionStoreDataset(tmp_path / "s.h5", TextStore(tmp_path / "t.h5"))
    regions, rmask, (feats, tmask) = ds[11]
    assert feats.shape == (L, Dt) and torch.equal(tmask, torch.from_numpy(mask[11]))
    assert torch.allclose(feats, torch.from_numpy(tok[11].astype(np.float16).astype(np.float32)))


def write_text_store(path, ids, data="d1"):
    n_caps = len(ids)
    w = TextStoreWriter(path, n_caps, 3, 2, {"encoder": "e", "params_hash": "t1", "data_hash": data})
    w.write(0, np.zeros((n_caps, 3, 2), np.float32), np.ones((n_caps, 3), bool), np.asarray(ids, np.int64))
    w.finish()
    return TextStore(path)


def test_region_store_dataset_refuses_text_store_of_other_images(tmp_path):
    """Caption k must describe store image k // 5, from the same dataset.json; else one line naming both files."""
    write_store(tmp_path / "s.h5")
    ids = np.repeat(np.arange(N) + 100, 5)  # write_store's image ids
    ok = RegionStoreDataset(tmp_path / "s.h5", write_text_store(tmp_path / "ok.h5", ids))
    assert len(ok) == N * 5 and ok._file is None
    swapped = ids.copy()
    swapped[[10, 15]] = swapped[[15, 10]]  # images 2 and 3 exchange a caption
    with pytest.raises(UserError, match=r"s\.h5: caption 10 of .*swapped\.h5 describes image 103, but the store's "
                                        r"image 2 is 102 \(2 captions off\).*fga features text-encode") as exc:
        RegionStoreDataset(tmp_path / "s.h5", write_text_store(tmp_path / "swapped.h5", swapped))
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match=r"data_hash d1 != d2 of .*other\.h5"):
        RegionStoreDataset(tmp_path / "s.h5", write_text_store(tmp_path / "other.h5", ids, data="d2"))
    with pytest.raises(UserError, match=r"35 captions \(5 each\), got 30 in .*short\.h5"):
        RegionStoreDataset(tmp_path / "s.h5", write_text_store(tmp_path / "short.h5", ids[:30]))


def test_text_store_errors_name_the_command_that_writes_it(tmp_path):
    with pytest.raises(UserError, match="run `fga features text-encode`"):
        read_text_store(tmp_path / "nope.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="re-run `fga features text-encode`"):
        TextStore(tmp_path / "bad.h5")
