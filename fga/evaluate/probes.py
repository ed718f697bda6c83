"""Near-miss binding probes: does a model score an image's true caption above the same words bound wrongly?

For every test image of a dataset with scene graphs (the embedded synthetic one), fga.data.synthetic derives,
per true caption, near misses that are false of the image and keep the caption's words: `attribute` exchanges
the colours of two described objects ("a red star left of a blue circle" -> "a blue star left of a red
circle"), `relation` exchanges a relation's two sides ("a blue circle left of a red star"). Each probe is one
(image, true caption, near miss) triple; the model scores the true caption and its near misses against the
image in one call of its batched kernel. A triple is won when the true caption scores strictly higher; the
accuracy counts a tie as half a win, so 50 is chance (a model blind to word order ties every swap).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fga.encoding import encode_texts
from fga.errors import UserError
from fga.models.base import Encoded, RetrievalModel, slice_encoded

ALL = "all"
_DECIMALS = 4


def split_probes(dataset_json: Path, split: str, image_ids: list[int]) -> tuple[list[dict[str, Any]], list[str]] | None:
    """(the split's probes, its captions in evaluation order) from dataset.json; None without scene graphs."""
    from fga.data import split_images
    from fga.data.synthetic import binding_probes, has_scene_graphs
    from fga.features.text import split_captions
    from fga.io import read_json

    ds = read_json(dataset_json, "dataset.json")
    entries = split_images(ds, split)
    if not has_scene_graphs(entries):
        return None
    ids, captions = split_captions(ds, split)
    if ids != list(image_ids):
        raise UserError(f"{dataset_json}: the {split} images differ from the evaluated ones; "
                        "re-run `fga features extract`")
    return binding_probes(entries), captions


@torch.no_grad()
def probe_scores(model: RetrievalModel, img: Encoded, txt: Encoded, probes: list[dict[str, Any]]) -> np.ndarray:
    """``[n_probes, 2]`` scores (true caption, near miss) of each probe against its image. `txt` encodes the
    split's captions followed by the probes' near misses, in probe order."""
    n_captions = next(iter(txt.values())).shape[0] - len(probes)
    by_image: dict[int, list[int]] = defaultdict(list)
    for k, p in enumerate(probes):
        by_image[p["image"]].append(k)
    out = np.zeros((len(probes), 2), dtype=np.float64)
    model.eval()
    for image, ks in by_image.items():
        true = sorted({probes[k]["caption"] for k in ks})
        columns = true + [n_captions + k for k in ks]  # each true caption once, then every near miss
        scores = model.similarity(slice_encoded(img, slice(image, image + 1)),
                                  slice_encoded(txt, torch.as_tensor(columns)))[0].float().cpu().numpy()
        where = {c: i for i, c in enumerate(true)}
        for n, k in enumerate(ks):
            out[k] = scores[where[probes[k]["caption"]]], scores[len(true) + n]
    return out


def binding_summary(scores: np.ndarray, kinds: list[str]) -> dict[str, dict[str, float]]:
    """Per probe kind and over all: `n`, `wins` and `ties` (% of triples), `accuracy` (% wins + half the ties)."""
    kinds_arr = np.asarray(kinds)
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(kinds)) + [ALL]:
        sel = scores if kind == ALL else scores[kinds_arr == kind]
        if len(sel) == 0:
            continue
        wins = float(np.mean(sel[:, 0] > sel[:, 1]))
        ties = float(np.mean(sel[:, 0] == sel[:, 1]))
        out[kind] = {"n": int(len(sel)), "wins": round(100 * wins, _DECIMALS), "ties": round(100 * ties, _DECIMALS),
                     "accuracy": round(100 * (wins + ties / 2), _DECIMALS)}
    return out


def binding_metrics(cfg: dict[str, Any], dataset_json: Path, vocab: Path, split: str, image_ids: list[int],
                    model: RetrievalModel, img: Encoded, device: torch.device) -> dict[str, Any] | None:
    """The `binding` block of metrics.json for an evaluated split (`img`: its encoded images); None for a dataset
    without scene graphs. True captions and near misses are encoded together, in one pass."""
    from fga.inputs import caption_tokens

    found = split_probes(dataset_json, split, image_ids)
    if found is None:
        return None
    probes, captions = found
    if not probes:
        return {"probes": 0}
    tokens, lengths = caption_tokens(cfg, captions + [p["text"] for p in probes], vocab)
    txt = encode_texts(model, tokens, lengths, device)
    summary = binding_summary(probe_scores(model, img, txt, probes), [p["kind"] for p in probes])
    return {"probes": len(probes), **summary}


def mlflow_binding(metrics: dict[str, Any]) -> dict[str, float]:
    """``binding/<kind>/<n|wins|ties|accuracy>`` of a metrics.json (none without a `binding` block)."""
    block = metrics.get("binding") or {}
    return {f"binding/{kind}/{name}": float(v) for kind, row in block.items() if isinstance(row, dict)
            for name, v in row.items()}
