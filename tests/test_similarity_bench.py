"""benchmarks/bench_similarity.py's comparison baseline (the SCAN authors' caption-at-a-time strategy) and
benchmarks/bench_coco5k.py's streaming evaluation: both must score the pairs exactly as fga does, or their
ratios would compare different computations."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fga.evaluate.similarity import similarity_matrix
from fga.models.scan import SCAN

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)


def load_bench(name: str):
    """benchmarks/<name>.py as a module."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("attn_norm", ["clipped_l2norm", "none"])
def test_caption_at_a_time_scores_like_fga(direction, attn_norm):
    bench = load_bench("bench_similarity")
    torch.manual_seed(0)
    model = SCAN(bench.IMG_DIM, bench.VOCAB, embed_dim=32, direction=direction, attn_norm=attn_norm).eval()
    img, txt = bench.inputs(model, 6, 9)
    assert not bool(txt["w_mask"].all())  # captions of different lengths: padding is exercised
    got = bench.caption_at_a_time(model, img, txt)
    want = similarity_matrix(model, img, txt)
    assert got.shape == (6, 9)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
