"""Checkpoint files (fga.checkpoint): safetensors round trip, identical bytes, one-line errors for bad files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fga.checkpoint import load_checkpoint, load_resume_state, save_checkpoint, save_resume_state
from fga.errors import UserError


def states() -> tuple[dict, dict, dict]:
    gen = torch.Generator().manual_seed(0)
    model = {"enc.weight": torch.randn(4, 3, generator=gen), "enc.bias": torch.zeros(4),
             "bn.num_batches_tracked": torch.tensor(7), "prompts": torch.randn(2, 4, generator=gen).half()}
    model["tied.weight"] = model["enc.weight"]  # shared memory (tied weights) is saved as two tensors
    source = {"backbone.conv.weight": torch.randn(2, 3, 1, 1, generator=gen).bfloat16()}
    meta = {"run_hash": "abc", "best": {"rsum": 12.5, "epoch": 1}, "seed": 0,
            "history": [{"epoch": 0, "val_rsum": 10.0, "loss_total": float("nan")}, {"epoch": 1, "val_rsum": 12.5}]}
    return model, source, meta


def test_round_trip_and_identical_bytes(tmp_path):
    model, source, meta = states()
    save_checkpoint(tmp_path / "a.safetensors", model, source, meta)
    # another insertion order of the same tensors and metadata: the same file
    save_checkpoint(tmp_path / "b.safetensors", dict(reversed(list(model.items()))), source,
                    dict(reversed(list(meta.items()))))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    state = load_checkpoint(tmp_path / "a.safetensors")
    assert state["model"].keys() == model.keys() and state["region_source"].keys() == source.keys()
    for got, want in [(state["model"][k], model[k]) for k in model] + [(state["region_source"][k], source[k]) for k in source]:
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert state["meta"]["best"] == meta["best"] and np.isnan(state["meta"]["history"][0]["loss_total"])
    save_checkpoint(tmp_path / "frozen.safetensors", model, {}, meta)  # frozen_features: no region source
    assert load_checkpoint(tmp_path / "frozen.safetensors")["region_source"] == {}
    assert not list(tmp_path.glob(".*"))  # no temp files left


@pytest.mark.parametrize("damage", ["truncated", "torch_save", "random", "no_metadata", "missing"])
def test_bad_checkpoint_is_one_line_error_naming_the_file(tmp_path, damage):
    from safetensors.torch import save_file

    model, source, meta = states()
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model, source, meta)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "torch_save":
        torch.save({"model": model, "meta": meta}, path)  # e.g. an old checkpoint.pt renamed
    elif damage == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "no_metadata":
        save_file({"model.w": torch.zeros(2)}, str(path))
    else:
        path.unlink()
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "fga train" in message


def test_resume_state_of_other_params_is_ignored(tmp_path):
    path = tmp_path / "last.pt"
    assert load_resume_state(path, "abc") is None
    state = {"model": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "rng": [{"torch": torch.get_rng_state()}],
             "meta": {"run_hash": "abc", "epoch": 0}}
    save_resume_state(path, state)
    assert torch.equal(load_resume_state(path, "abc")["model"]["w"], torch.ones(2))
    assert load_resume_state(path, "other") is None
    save_resume_state(path, {**state, "meta": {"run_hash": "abc"}})  # no epoch
    with pytest.raises(UserError, match="not a resumable fga checkpoint"):
        load_resume_state(path, "abc")
