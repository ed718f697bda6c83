"""Exhaustive positives: recall where any true item counts, mAP@R, and the synthetic dataset's caption truth."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fga.data import synthetic
from fga.errors import UserError
from fga.evaluate import positives as pos
from fga.evaluate.recall import TIE_RULES, rank_metrics
from test_synthetic import check_caption  # the dataset's independent truth checker


def _own_image_only(n_img: int, cpi: int) -> list[list[int]]:
    return [[j // cpi] for j in range(n_img * cpi)]


@pytest.mark.parametrize("ties", TIE_RULES)
def test_one_positive_per_caption_is_the_standard_protocol(ties):
    rng = np.random.default_rng(0)
    sim = rng.random((12, 60)).round(1).astype(np.float32)  # with ties
    got = pos.positives_metrics(sim, _own_image_only(12, 5), ties)
    want = rank_metrics(sim, 5, ties=ties)
    assert got["t2i"] == {**want["t2i"], "mAP@R": got["t2i"]["mAP@R"]}
    assert got["rsum"] == want["rsum"]
    assert got["captions_with_several_images"] == 0 and got["images_per_caption"] == 1.0
    assert got["ties"] == ties


def test_any_true_image_counts_and_map_at_r_by_hand():
    # 3 images x 2 captions (caption j belongs to image j // 2); caption 0 is also true of image 2.
    sim = np.array([[0.5, 0.1, 0.2, 0.3, 0.0, 0.4],
                    [0.2, 0.1, 0.9, 0.8, 0.3, 0.0],
                    [0.9, 0.2, 0.1, 0.0, 0.7, 0.6]], dtype=np.float32)
    positives = [[0, 2], [0], [1], [1], [2], [2]]
    standard = rank_metrics(sim, 2)
    assert standard["t2i"]["R@1"] == pytest.approx(100 * 4 / 6, abs=1e-3)  # caption 0 ranks image 2 first: a miss
    got = pos.positives_metrics(sim, positives)
    assert got["t2i"]["R@1"] == pytest.approx(100 * 5 / 6, abs=1e-3)  # ... which it is true of; c1 still misses
    # i2t image 2: positives c0 c4 c5 = 0.9 0.7 0.6, all above its negatives -> AP@R 1;
    # image 0: positives c0 c1 (R=2) at 0.5 (1st) and 0.1 (last) -> (1/1 + 0) / 2 = 0.5
    # image 1: positives c2 c3 at 0.9 0.8 -> 1
    assert got["i2t"]["mAP@R"] == pytest.approx(100 * (0.5 + 1 + 1) / 3, abs=1e-3)
    # t2i caption 0: positives images 2, 0 ranked first -> 1; caption 1: image 2 (0.2) above image 0 -> 0;
    # captions 2-5: own image first -> 1
    assert got["t2i"]["mAP@R"] == pytest.approx(100 * 5 / 6, abs=1e-3)
    assert got["captions_with_several_images"] == 1
    assert got["images_per_caption"] == pytest.approx(7 / 6, abs=1e-4)


def test_map_at_r_tie_rules():
    # one image, four captions: its positives c0, c1 (R=2) tie with the negative c2 at the top
    sim = np.array([[0.5, 0.5, 0.5, 0.1], [0.0, 0.0, 0.0, 0.9]], dtype=np.float32)
    positives = [[0], [0], [1], [1]]
    pess = pos.positives_metrics(sim, positives, "pessimistic")
    opti = pos.positives_metrics(sim, positives, "optimistic")
    # image 0: pessimistic order c2 c0 c1 -> hits at ranks 2 (within R=2): (0 + 1/2) / 2 = 0.25; optimistic: 1
    # image 1: positives c2 (0.0, tied with c0 c1) and c3 (0.9): pessimistic c3, c0, c1, c2 -> 1/2; optimistic 1
    assert pess["i2t"]["mAP@R"] == pytest.approx(100 * (0.25 + 0.5) / 2)
    assert opti["i2t"]["mAP@R"] == 100.0
    args = pos.positives_metrics(sim, positives, "argsort")
    assert pess["i2t"]["mAP@R"] <= args["i2t"]["mAP@R"] <= opti["i2t"]["mAP@R"]


def test_rejects_bad_inputs():
    sim = np.zeros((2, 4), np.float32)
    with pytest.raises(UserError, match="captions"):
        pos.positives_metrics(sim, [[0]] * 3)
    with pytest.raises(UserError, match="images"):
        pos.positives_metrics(sim, [[0], [5], [1], [1]])
    with pytest.raises(UserError, match="tie rule"):
        pos.positives_metrics(sim, [[0], [0], [1], [1]], "index")
    sim[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        pos.positives_metrics(sim, [[0], [0], [1], [1]])


@pytest.fixture(scope="module")
def test_entries(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "synthetic"
    synthetic.generate(out, seed=0, n_train=2, n_val=0, n_test=40, progress=False)
    data = json.loads((out / "dataset.json").read_text())
    return out / "dataset.json", [e for e in data["images"] if e["split"] == "test"]


def test_captions_round_trip_through_the_parser(test_entries):
    _, entries = test_entries
    for e in entries:
        for s in e["sentences"]:
            caption = synthetic.parse_caption(s)
            assert caption.text() == s
    with pytest.raises(UserError, match="grammar"):
        synthetic.parse_caption("a red blob")


def test_caption_positives_agree_with_the_independent_checker(test_entries):
    _, entries = test_entries
    positives = synthetic.caption_positives(entries)
    captions = [s for e in entries for s in e["sentences"][:5]]
    assert len(positives) == len(captions) == 5 * len(entries)
    for j, (caption, images) in enumerate(zip(captions, positives)):
        assert j // 5 in images
        truth = [k for k, e in enumerate(entries) if not check_caption(caption, e["objects"], e["width"])]
        assert images == truth, caption
    assert any(len(images) > 1 for images in positives)  # short captions are true of other images too


def test_split_positives_reads_dataset_json(test_entries, tmp_path):
    path, entries = test_entries
    ids = [e["id"] for e in entries]
    assert pos.split_positives(path, "test", ids) == synthetic.caption_positives(entries)
    with pytest.raises(UserError, match="differ"):
        pos.split_positives(path, "test", ids[::-1])
    plain = tmp_path / "dataset.json"  # a dataset without scene graphs (COCO, Flickr30K) has no positives
    plain.write_text(json.dumps({"images": [{k: v for k, v in e.items() if k != "objects"} for e in entries]}))
    assert pos.split_positives(plain, "test", ids) is None


def test_mlflow_names():
    block = pos.positives_metrics(np.eye(2, 2, dtype=np.float32).repeat(1, axis=1), [[0], [1]])
    flat = pos.mlflow_positives({"positives": block})
    assert flat["positives/i2t_R1"] == 100.0 and flat["positives/t2i_mAPR"] == 100.0
    assert flat["positives/rsum"] == 600.0
    assert pos.mlflow_positives({}) == {}
