"""Near-miss binding probes: their derivation from scene graphs and their scoring."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from fga.data import synthetic
from fga.evaluate import probes as pr
from fga.models.base import RetrievalModel
from test_synthetic import check_caption  # the dataset's independent truth checker


def _obj(shape, colour, x, y, size="small", side=16):
    return {"shape": shape, "colour": colour, "size": size, "bbox": [x, y, side, side]}


SCENE = [_obj("star", "red", 10, 50), _obj("circle", "blue", 90, 50)]


def test_near_misses_swap_binding_and_stay_false():
    got = synthetic.near_misses("a red star left of a blue circle", SCENE, 128)
    assert got == {"attribute": "a blue star left of a red circle", "relation": "a blue circle left of a red star"}
    # articles agree with the new colour; a list has no relation to swap
    scene = [_obj("star", "orange", 10, 10), _obj("circle", "red", 90, 90)]
    assert synthetic.near_misses("an orange star and a red circle", scene, 128) == {
        "attribute": "a red star and an orange circle"}


def test_no_near_miss_that_is_true_of_the_image():
    scene = SCENE + [_obj("star", "blue", 10, 90), _obj("circle", "red", 90, 90)]
    got = synthetic.near_misses("a red star left of a blue circle", scene, 128)
    assert "attribute" not in got  # a blue star left of a red circle is there too
    assert got["relation"] == "a blue circle left of a red star"
    assert synthetic.near_misses("the red star", SCENE, 128) == {}  # one object: nothing to bind wrongly


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "synthetic"
    synthetic.generate(out, seed=0, n_train=2, n_val=0, n_test=40, progress=False)
    data = json.loads((out / "dataset.json").read_text())
    return [e for e in data["images"] if e["split"] == "test"]


def _words(text):
    return Counter(w for w in text.split() if w not in ("a", "an"))


def test_probe_set_of_a_split(entries):
    probes = synthetic.binding_probes(entries)
    assert probes == synthetic.binding_probes(entries)  # deterministic
    assert {p["kind"] for p in probes} == set(synthetic.PROBE_KINDS)
    captions = [s for e in entries for s in e["sentences"][:5]]
    for p in probes:
        e = entries[p["image"]]
        true = captions[p["caption"]]
        assert p["caption"] // 5 == p["image"]
        assert not check_caption(true, e["objects"], e["width"])  # the true caption is true ...
        assert check_caption(p["text"], e["objects"], e["width"])  # ... its near miss is not
        assert _words(p["text"]) == _words(true) and p["text"] != true  # same words, other binding
    pairs = [(p["caption"], p["kind"]) for p in probes]
    assert len(pairs) == len(set(pairs))  # at most one near miss per caption and kind


class _Lookup(RetrievalModel):
    """Scores image i against text t as 1000 * i + t, so the test sees which pairs were scored."""

    def similarity(self, img, txt):
        return img["id"].float()[:, None] * 1000 + txt["id"].float()[None, :]


def test_probe_scores_pair_each_near_miss_with_its_image_and_true_caption():
    probes = [{"image": 1, "caption": 5, "kind": "attribute"}, {"image": 0, "caption": 2, "kind": "relation"},
              {"image": 1, "caption": 7, "kind": "relation"}]
    n_captions = 10
    img = {"id": torch.arange(2)}
    txt = {"id": torch.arange(n_captions + len(probes))}
    scores = pr.probe_scores(_Lookup(), img, txt, probes)
    assert scores.tolist() == [[1005, 1010], [2, 11], [1007, 1012]]


def test_binding_summary_counts_ties_as_half():
    scores = np.array([[2.0, 1.0], [1.0, 1.0], [0.5, 1.0], [3.0, 1.0]])
    got = pr.binding_summary(scores, ["attribute", "attribute", "relation", "relation"])
    assert got["attribute"] == {"n": 2, "wins": 50.0, "ties": 50.0, "accuracy": 75.0}
    assert got["relation"] == {"n": 2, "wins": 50.0, "ties": 0.0, "accuracy": 50.0}
    assert got["all"] == {"n": 4, "wins": 50.0, "ties": 25.0, "accuracy": 62.5}
    flat = pr.mlflow_binding({"binding": {"probes": 4, **got}})
    assert flat["binding/all/accuracy"] == 62.5 and flat["binding/relation/n"] == 2.0
    assert "binding/probes" not in flat and pr.mlflow_binding({}) == {}


# ------------------------------------------------------------------ through `fga evaluate` on a tiny real project

from test_evaluate_run import BK, DS, METHOD, SEED, in_project, project, run_path  # noqa: E402,F401  (fixtures)


def test_evaluate_scores_the_probes_with_the_run_model(in_project):
    from fga.encoding import encode_split, encode_texts
    from fga.evaluate.run import evaluate, load_run
    from fga.inputs import caption_tokens
    from fga.models.base import cat_encoded

    root, cfg = in_project
    ckpt = run_path(root, "runs") / "checkpoint.safetensors"
    m = evaluate(cfg, DS, BK, METHOD, SEED, ckpt, quiet=True)
    data = json.loads((root / "data" / DS / "dataset.json").read_text())
    probes = synthetic.binding_probes([e for e in data["images"] if e["split"] == "test"])
    assert probes and m["binding"]["probes"] == m["binding"]["all"]["n"] == len(probes)
    assert sum(m["binding"][k]["n"] for k in synthetic.PROBE_KINDS if k in m["binding"]) == len(probes)
    # the scores are the run model's: each true caption scores what the full matrix gives its image
    run = load_run(cfg, DS, BK, METHOD, SEED, ckpt, "test")
    img, txt = encode_split(run.model, run.data, run.device)
    sim = run.model.similarity(img, txt).detach().numpy()
    extra = encode_texts(run.model, *caption_tokens(cfg, [p["text"] for p in probes], root / "features" / DS / "text_bigru" / "vocab.json"),
                         run.device)
    scores = pr.probe_scores(run.model, img, cat_encoded([txt, extra]), probes)
    want = np.array([sim[p["image"], p["caption"]] for p in probes])
    np.testing.assert_allclose(scores[:, 0], want, rtol=1e-4, atol=1e-5)
    assert pr.binding_summary(scores, [p["kind"] for p in probes])["all"] == pytest.approx(m["binding"]["all"], abs=1e-3)


def test_evaluate_reports_exhaustive_positives_under_its_tie_rule(in_project):
    from fga.evaluate.run import evaluate, mlflow_metrics

    root, cfg = in_project
    ckpt = run_path(root, "runs") / "checkpoint.safetensors"
    m = evaluate(cfg, DS, BK, METHOD, SEED, ckpt, quiet=True)
    assert m["ties"] == m["positives"]["ties"] == "pessimistic"
    for d in ("i2t", "t2i"):  # another true item ranked first is no longer a miss
        assert all(m["positives"][d][k] >= m[d][k] for k in ("R@1", "R@5", "R@10"))
    assert m["positives"]["images_per_caption"] >= 1.0
    flat = mlflow_metrics(m)
    assert flat["positives/rsum"] == m["positives"]["rsum"] and flat["binding/all/accuracy"] == m["binding"]["all"]["accuracy"]
    peers = evaluate({**cfg, "evaluate": {**cfg["evaluate"], "tie_rule": "argsort"}}, DS, BK, METHOD, SEED, ckpt,
                     quiet=True)
    assert peers["ties"] == peers["protocols"]["full"]["ties"] == peers["positives"]["ties"] == "argsort"
    assert peers["rsum"] >= m["rsum"] and peers["qbnorm"]["rsum"] >= m["qbnorm"]["rsum"]
