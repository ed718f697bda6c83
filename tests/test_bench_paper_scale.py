"""benchmarks/bench_paper_scale.py's arithmetic: how measured steps, heads and similarity blocks become the paper
grid's cost. The measurements themselves are the benchmark's (minutes of CPU); these are its pure functions."""
from __future__ import annotations

import pytest
from test_similarity_bench import load_bench

STEP = {"method": "grm", "backbone": "vit_base_224", "batch": 8, "threads": 2, "tokens": 197, "peak_bytes": 1,
        "step_s": 10.0, "flops": 1.0e12, "head_s": 2.0, "head_flops": 1.0e11}
HEAD = {"method": "scan", "backbone": "vit_base_224", "batch": 8, "project_batch": 128, "threads": 2,
        "head_s": 3.0, "head_flops": 2.0e11, "head_s_project": 50.0, "head_flops_project": 5.0e13}


def test_a_measured_step_is_taken_as_it_is():
    bench = load_bench("bench_paper_scale")
    assert bench.compose_step(STEP, None, 8) == {"s": 10.0, "flops": 1.0e12, "how": "measured"}
    # GRM's own head at the measured batch: still its measured step
    assert bench.compose_step(STEP, {**HEAD, "method": "grm"}, 8)["how"] == "measured"


def test_another_method_swaps_the_head_and_the_paper_batch_scales_only_the_encoders():
    bench = load_bench("bench_paper_scale")
    # batch 8: GRM's encoders (10 - 2 s) + SCAN's head (3 s)
    same = bench.compose_step(STEP, HEAD, 8)
    assert same == {"s": pytest.approx(11.0), "flops": pytest.approx(1.1e12), "how": "composed"}
    # batch 128: the encoders x 16, the head as measured at 128 (it grows with b^2, so no scaling)
    paper = bench.compose_step(STEP, HEAD, 128)
    assert paper["s"] == pytest.approx(8.0 * 16 + 50.0) and paper["how"] == "projected"
    assert paper["flops"] == pytest.approx(9.0e11 * 16 + 5.0e13)
    with pytest.raises(ValueError, match="no head measurement"):
        bench.compose_step(STEP, HEAD, 64)
    with pytest.raises(ValueError, match="no head measurement"):
        bench.compose_step(STEP, None, 128)


def test_similarity_blocks_project_by_pairs_and_evaluations_add_both_encoders():
    bench = load_bench("bench_paper_scale")
    # 32 x 1,000 pairs in 2 s -> 5,000 x 25,000 = 3,906.25 times as many
    assert bench.full_matrix_seconds(2.0, 32, 1000) == pytest.approx(2.0 * 5000 * 25000 / 32000)
    assert bench.full_matrix_seconds(1.0, 10, 10, n_images=20, n_captions=5) == pytest.approx(1.0)
    # 1,000 images, 5,000 captions, 5e6 pairs
    assert bench.evaluation_seconds(1000, 0.1, 0.01, 1e-6) == pytest.approx(100 + 50 + 5)


def test_a_run_is_its_full_batches_times_epochs_plus_a_validation_per_epoch_and_one_test():
    bench = load_bench("bench_paper_scale")
    r = bench.run_seconds("coco", 2.0, lambda n: float(n), epochs=30, batch=128)
    steps_per_epoch = 113_287 * 5 // 128  # full batches only, as fga.batches plans them
    assert steps_per_epoch == 4425 and r["steps"] == 30 * 4425
    assert r["train_s"] == pytest.approx(30 * 4425 * 2.0)
    assert r["eval_s"] == pytest.approx(30 * 5000 + 5000)  # val (5,000 images) each epoch + test
    assert r["total_s"] == pytest.approx(r["train_s"] + r["eval_s"])
    f30k = bench.run_seconds("flickr30k", 1.0, lambda n: 0.0, epochs=1, batch=128)
    assert f30k["steps"] == 29_000 * 5 // 128


def test_the_gpu_projection_is_flops_at_a_share_of_the_peak():
    bench = load_bench("bench_paper_scale")
    assert bench.gpu_hours_from_flops(3600 * 989e12 * 0.5, 0.5) == pytest.approx(1.0)
    assert bench.gpu_hours_from_flops(1e18, 0.25, peak=1e15) == pytest.approx(1e18 / 2.5e14 / 3600)


def test_method_steps_compose_every_method_at_the_heads_thread_count_only():
    bench = load_bench("bench_paper_scale")
    one_thread = {**STEP, "threads": 1, "step_s": 18.0}
    grm_head = {**HEAD, "method": "grm", "head_s": 2.0, "head_flops": 1.0e11}
    res = {"steps": [STEP, one_thread], "heads": [grm_head, HEAD]}
    rows = bench.method_steps(res, 8, 128)
    got = {(r["method"], r["threads"]): r for r in rows}
    assert sorted(got) == [("grm", 1), ("grm", 2), ("scan", 2)]
    assert got[("grm", 2)]["at_batch"]["how"] == "measured" and got[("grm", 2)]["at_paper"]["how"] == "projected"
    assert got[("scan", 2)]["at_batch"]["s"] == pytest.approx(11.0)
    # 1 thread: GRM's measured step, nothing composed from 2-thread heads
    assert got[("grm", 1)]["at_batch"]["s"] == 18.0 and got[("grm", 1)]["at_paper"] is None
