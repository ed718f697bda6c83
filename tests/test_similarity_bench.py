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


def test_report_line_gives_the_authors_strategy_its_flop_share():
    """The caption-at-a-time loop's FLOPs (scores + attended vectors, 4*d*R*L per pair) as a share of the matmul."""
    bench = load_bench("bench_similarity")
    assert bench.authors_flops_per_pair(49, 12, 256) == 4 * 256 * 49 * 12
    res = {"r": 49, "l": 12.0, "l_max": 16, "block": (41, 128), "kernel_pairs_s": 8e4, "ref_pairs_s": 1e3,
           "speedup": 80.0, "kernel_gflops": 30.0, "matmul_gflops": 50.0, "share": 0.6,
           "authors_pairs_s": 2e4, "vs_authors": 4.0, "authors_max_diff": 1e-7, "authors_gflops": 14.0,
           "authors_share": 0.28}
    line, ok = bench.report_line("SCAN t2i", res)
    assert "14.0 GFLOP/s, 28% of the matmul) -> 4.0x (target >= 10x: MISSED" in line and not ok
    line, ok = bench.report_line("SCAN t2i", {**res, "vs_authors": 12.0})
    assert ok
