"""Corruption is detected, not used: a byte flipped on disk in a feature store, a text-feature store, a checkpoint,
a resume state or a saved similarity matrix is a one-line UserError naming the file and the fix (fga.integrity)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from fga import integrity
from fga.checkpoint import load_checkpoint, load_resume_state, save_checkpoint, save_resume_state
from fga.errors import UserError
from fga.evaluate.similarity import load_matrix, matrix_sha256, save_matrix
from fga.features.store import (DIGEST_ATTR, RegionStoreDataset, StoreWriter, TextStoreWriter, content_digest,
                                read_store, read_text_store)
from fga.io import write_json


@pytest.fixture(autouse=True)
def _fresh_cache():
    integrity.forget_verified()
    yield
    integrity.forget_verified()


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def assert_corrupt_error(exc_info, path, fix: str) -> None:
    message = str(exc_info.value)
    assert "\n" not in message and str(path) in message and "corrupted" in message and fix in message


def region_store(path, n=6, r=3, d=4):
    rng = np.random.default_rng(0)
    writer = StoreWriter(path, n, r, d, {"params_hash": "h", "data_hash": "d"}, chunk_rows=2)
    writer.write(0, rng.standard_normal((n, r, d)), rng.random((n, r, 4)), np.ones((n, r), bool), np.arange(n))
    writer.finish()
    return path


def chunk_offset(path, name: str) -> int:
    """The file offset of the first stored chunk of dataset `name` (where a flipped byte changes its values)."""
    with h5py.File(path, "r") as f:
        return f[name].id.get_chunk_info(0).byte_offset


def test_feature_store_records_a_digest_of_its_content(tmp_path):
    a, b = region_store(tmp_path / "a.h5"), region_store(tmp_path / "b.h5")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa.attrs[DIGEST_ATTR] == fb.attrs[DIGEST_ATTR] == content_digest(fa)  # deterministic, no times
    assert read_store(a).regions.shape == (6, 3, 4)


def test_flipped_byte_in_a_feature_store_is_refused(tmp_path):
    path = region_store(tmp_path / "test.h5")
    flip_byte(path, chunk_offset(path, "regions") + 5)
    with pytest.raises(UserError) as exc:
        read_store(path)
    assert_corrupt_error(exc, path, "fga features extract")
    with pytest.raises(UserError):
        RegionStoreDataset(path)


def test_flipped_byte_in_a_text_feature_store_is_refused(tmp_path):
    path = tmp_path / "text_minilm" / "test.h5"
    writer = TextStoreWriter(path, 10, 5, 8, {"params_hash": "t", "data_hash": "d"})
    writer.write(0, np.random.default_rng(1).standard_normal((10, 5, 8)), np.ones((10, 5), bool), np.arange(10) // 5)
    writer.finish()
    assert read_text_store(path).tokens.shape == (10, 5, 8)
    integrity.forget_verified()
    flip_byte(path, chunk_offset(path, "tokens") + 3)
    with pytest.raises(UserError) as exc:
        read_text_store(path)
    assert_corrupt_error(exc, path, "fga features text-encode")


def test_store_without_a_digest_still_reads(tmp_path):
    """Stores written before the digest existed load unchecked."""
    path = region_store(tmp_path / "old.h5")
    with h5py.File(path, "r+") as f:
        del f.attrs[DIGEST_ATTR]
    assert read_store(path).image_id.tolist() == list(range(6))


def checkpoint_parts():
    gen = torch.Generator().manual_seed(0)
    return {"w": torch.randn(8, 8, generator=gen)}, {}, {"run_hash": "abc", "epoch": 1}


def test_flipped_byte_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, *checkpoint_parts())
    state = load_checkpoint(path)
    assert state["meta"] == {"run_hash": "abc", "epoch": 1}  # the digest is not part of what callers see
    flip_byte(path, path.stat().st_size - 7)  # inside the tensor bytes
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    assert_corrupt_error(exc, path, "fga train")


def test_flipped_byte_in_a_checkpoints_metadata_is_refused(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, *checkpoint_parts())
    data = path.read_bytes()
    path.write_bytes(data.replace(b'\\"epoch\\":1', b'\\"epoch\\":7'))
    assert path.read_bytes() != data
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    assert_corrupt_error(exc, path, "fga train")


def test_flipped_byte_in_the_resume_state_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    marker = torch.arange(64, dtype=torch.float32) + 0.25
    save_resume_state(path, {"model": {"w": marker}, "optimizer": {}, "scheduler": {}, "rng": {"torch": [1, 2]},
                             "meta": {"run_hash": "abc", "epoch": 0}})
    state = load_resume_state(path, "abc")
    assert torch.equal(state["model"]["w"], marker) and "integrity_sha256" not in state
    integrity.forget_verified()
    flip_byte(path, path.read_bytes().index(marker.numpy().tobytes()) + 17)
    with pytest.raises(UserError) as exc:
        load_resume_state(path, "abc")
    assert_corrupt_error(exc, path, "fga train")


def saved_matrix(tmp_path):
    sim = np.random.default_rng(2).standard_normal((4, 20)).astype(np.float32)
    path = save_matrix(tmp_path / "sim_test.npy", sim, "float32")
    write_json(tmp_path / "metrics.json", {"matrix": {"file": path.name, "sha256": matrix_sha256(path)}})
    return path, sim


def test_flipped_byte_in_a_saved_matrix_is_refused(tmp_path):
    path, sim = saved_matrix(tmp_path)
    assert np.array_equal(load_matrix(path, (4, 20)), sim)
    flip_byte(path, path.stat().st_size - 1)
    with pytest.raises(UserError) as exc:
        load_matrix(path, (4, 20))
    assert_corrupt_error(exc, path, "fga evaluate")


def test_a_file_is_hashed_once_per_process_until_it_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    calls = []

    def compute() -> str:
        calls.append(1)
        return integrity.file_sha256(path)

    expected = integrity.file_sha256(path)
    integrity.check_once(path, expected, compute, "x")
    integrity.check_once(path, expected, compute, "x")
    assert len(calls) == 1
    path.write_bytes(b"abd")  # a new mtime: checked again, and refused
    with pytest.raises(UserError):
        integrity.check_once(path, expected, compute, "x")
    assert len(calls) == 2


def test_flipped_byte_in_a_ranks_file_is_refused(tmp_path):
    from fga.evaluate.run import load_ranks, write_ranks

    path = tmp_path / "ranks.npz"
    ranks = {"i2t": np.arange(4), "t2i": np.arange(20), "coco1k_i2t": np.arange(4), "coco1k_t2i": np.arange(20)}
    write_ranks(path, ranks, [10, 11, 12, 13], 5, "coco1k")
    assert load_ranks(path).t2i.tolist() == list(range(20))
    integrity.forget_verified()
    flip_byte(path, path.read_bytes().index(np.arange(20, dtype=np.int64).tobytes()) + 9)
    with pytest.raises(UserError) as exc:
        load_ranks(path)
    assert_corrupt_error(exc, path, "fga evaluate")
