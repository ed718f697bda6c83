"""Region-word alignment maps of GRM-arch runs -> results/.../attention.json (the report draws them as heat maps).

What a map shows is what GRM's uncertainty level S_unc(T_hat, U) scores (fga.models.grm.similarity):
for caption word j (its key token t_hat_j: BiGRU token after the GA adapter) and region k (its
representation u_k: the prompt region mu_k of Region Prompting at evaluation),

    cosine[j, k]    = cos(t_hat_j, u_k)                                   (the model's own tensors)
    attention[j, k] = softmax_k(cosine[j, k] / TEMPERATURE),  TEMPERATURE = 0.1

S_unc max-pools `cosine`: S_t2i = sum_j w_j max_k cosine[j, k] / sum_j w_j (w_j = `word_weights`, the GA
keep scores when `saliency_pooling` is "weighted", else 1), S_i2t = mean_k max_j cosine[j, k], combined
by `sim_combine`; `unc_similarity` is the model's own score of the pair. The softmax only makes the heat
map readable: a cosine of a few regions spans a narrow range, TEMPERATURE 0.1 spreads it (SCAN uses a
similar scale, 9), and its row argmax is the region the model's max-pooling picks.

Regions: "prompt k" for Region Prompting, each named with the image token it attends to most (argmax
over valid tokens of A_hat[:, k]); the -RP variants use the key tokens themselves ("tokens") or their
mean. Image tokens are named by the store's region source: "box i (category)" for instance boxes (the
category from data/<dataset>/instances.json), "cell i" for CNN grids, "patch r,c" for ViT/Swin patches.
With `eval_mode: sample` the regions are taken at their means mu_k (the draws of one evaluation are random).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fga.errors import UserError
from fga.features.text import PAD, UNK, load_vocab, split_captions, tokenize, vocab_file
from fga.inputs import SplitInputs, caption_pieces, caps_per_image
from fga.io import read_json
from fga.models.base import RetrievalModel
from fga.models.registry import arch_name

TEMPERATURE = 0.1
LEVEL = "unc"


def is_grm(model: RetrievalModel) -> bool:
    """True for a GRM model (any ablation variant)."""
    from fga.models.grm import GRM

    return isinstance(model, GRM)


def n_maps(ec: dict[str, Any]) -> int:
    """`evaluate.attention_maps` checked: a non-negative integer."""
    n = ec.get("attention_maps", 4)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"params.yaml: evaluate.attention_maps must be a non-negative integer, got {n!r}; fix it there")
    return n


@contextlib.contextmanager
def _region_means(model: RetrievalModel) -> Iterator[None]:
    """Within the block, GRM's uncertainty module returns u_k = mu_k (eval_mode 'mean')."""
    um = getattr(model, "um", None)
    old = getattr(um, "eval_mode", None)
    if um is not None:
        um.eval_mode = "mean"
    try:
        yield
    finally:
        if um is not None:
            um.eval_mode = old


@torch.no_grad()
def region_word_tensors(model: RetrievalModel, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                        lengths: torch.Tensor) -> list[dict[str, Any]]:
    """Image i with caption i (i < N) -> per pair: cosine [words, regions], attention, word weights, region tokens."""
    model.eval()
    device = next(model.parameters()).device
    with _region_means(model):
        img = model.encode_image(regions.to(device).float(), mask.to(device))
        txt = model.encode_text(tokens.to(device), lengths.to(device))
    unc = model.level_similarity(img, txt, LEVEL).diagonal()
    _, wy = model._weights(img, txt)
    attn_hat = model.rp(img["v_hat"], img["mask"])[2] if model.rp is not None else None  # [N, L_v, K]
    out = []
    for i in range(len(tokens)):
        t_valid = txt["t_mask"][i]
        u_valid = img["u_mask"][i]
        words = F.normalize(txt["t_hat"][i][t_valid], dim=-1, eps=1e-8)
        units = F.normalize(img["u"][i, :, 0][u_valid], dim=-1, eps=1e-8)
        cosine = words @ units.T
        weights = wy[i][t_valid] if wy is not None else torch.ones(int(t_valid.sum()), device=device)
        valid_tokens = img["mask"][i].nonzero().flatten()
        item: dict[str, Any] = {
            "cosine": cosine.float().cpu(),
            "attention": torch.softmax(cosine.float() / TEMPERATURE, dim=1).cpu(),
            "word_weights": weights.float().cpu(),
            "unc_similarity": float(unc[i]),
            "valid_tokens": valid_tokens.cpu().tolist(),
        }
        if attn_hat is not None:
            a = attn_hat[i][valid_tokens].T.float().cpu()  # [K, valid image tokens]
            item["region_token_attention"] = a
            item["region_top_token"] = [int(valid_tokens[j]) for j in a.argmax(dim=1).tolist()]
            item["region_kind"] = "prompt"
        elif model.no_rp_regions == "tokens":
            item["region_tokens"] = [int(j) for j in u_valid.nonzero().flatten().tolist()]
            item["region_kind"] = "tokens"
        else:
            item["region_kind"] = "mean"
        out.append(item)
    return out


def decode_words(ids: list[int], id_to_word: dict[int, str], caption: str | None = None) -> list[str]:
    """Token ids -> vocabulary words; an unknown word shows as '<unk:word>' when the caption is known."""
    raw = tokenize(caption) if caption is not None else []
    out = []
    for j, i in enumerate(ids):
        w = id_to_word.get(int(i), UNK)
        if w == UNK and j < len(raw):
            w = f"<unk:{raw[j]}>"
        out.append(w)
    return out


def _box_categories(instances: Path, image_ids: list[int], n_boxes: list[int]) -> dict[int, list[str]]:
    """image id -> category name of each store box (non-crowd instances by decreasing area, as extracted)."""
    from fga.features.visual import load_instances, region_annotations

    try:
        coco = load_instances(instances)
    except (OSError, ValueError, KeyError):
        return {}
    if coco is None:
        return {}
    out: dict[int, list[str]] = {}
    for image_id, n in zip(image_ids, n_boxes):
        anns = region_annotations(coco, image_id)
        if not anns and n == 1:
            out[image_id] = ["whole image"]
        elif len(anns) >= n:
            out[image_id] = [coco.cats.get(a["category_id"], {}).get("name", "?") for a in anns[:n]]
    return out


def token_label(l: int, attrs: dict[str, Any], categories: list[str] | None) -> str:
    """A readable name of image token l of a store with these attrs."""
    source = str(attrs.get("region_source", ""))
    if source in ("gt_boxes", "boxes"):
        return f"box {l} ({categories[l]})" if categories and l < len(categories) else f"box {l}"
    if source == "grid":
        return f"cell {l}"
    if source == "patches":
        cls = int(attrs.get("cls_index", -1))
        if l == cls:
            return "cls"
        p = l - (1 if cls == 0 else 0)
        grid = attrs.get("patch_grid")
        if grid is not None and len(grid) == 2 and int(grid[1]) > 0:
            return f"patch {p // int(grid[1])},{p % int(grid[1])}"
        return f"patch {p}"
    return f"box {l}" if source == "precomp" else f"token {l}"


def store_boxes(path: Path, n: int) -> np.ndarray | None:
    """Boxes [n, R, 4] (x1, y1, x2, y2 in 0..1) of the first n images of a region store, or None."""
    from fga.features.store import open_store

    if not Path(path).exists():
        return None
    try:
        f = open_store(path)
    except UserError:
        return None
    try:
        return np.asarray(f["boxes"][:n])
    finally:
        f.close()


def _round(x: torch.Tensor | list, digits: int = 6) -> Any:
    """A tensor as nested lists of rounded floats (JSON)."""
    values = x.tolist() if isinstance(x, torch.Tensor) else x
    if isinstance(values, list):
        return [_round(v, digits) for v in values]
    return round(float(values), digits)


def grm_maps(model: RetrievalModel, data: SplitInputs, captions: list[str], vocab: dict[str, int], n: int,
             instances: Path | None = None, boxes: np.ndarray | None = None,
             pieces: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """Maps of the first n images of a split with their first caption (`captions` in split order; `pieces`: their
    word pieces, for a transformer text encoder, else words are decoded with `vocab`)."""
    n = min(n, data.n_images)
    if n == 0:
        return []
    cpi = caps_per_image(data)
    rows = [i * cpi for i in range(n)]
    lengths = data.lengths[rows]
    tokens = data.tokens[rows][:, : int(lengths.max())]
    tensors = region_word_tensors(model, data.regions[:n], data.mask[:n], tokens, lengths)
    id_to_word = {int(i): w for w, i in vocab.items()}
    attrs = data.attrs
    categories: dict[int, list[str]] = {}
    if instances is not None and str(attrs.get("region_source", "")) in ("gt_boxes", "boxes"):
        categories = _box_categories(instances, data.image_ids[:n], [len(t["valid_tokens"]) for t in tensors])
    maps = []
    for i, t in enumerate(tensors):
        image_id = int(data.image_ids[i])
        caption = captions[rows[i]] if rows[i] < len(captions) else None
        cats = categories.get(image_id)
        label = {l: token_label(l, attrs, cats) for l in t["valid_tokens"]}
        kind = t["region_kind"]
        if kind == "prompt":
            regions = [f"prompt {k}: {label[l]}" for k, l in enumerate(t["region_top_token"])]
        elif kind == "tokens":
            regions = [label.get(l, f"token {l}") for l in t["region_tokens"]]
        else:
            regions = ["mean of image tokens"]
        item: dict[str, Any] = {
            "image_id": image_id,
            "caption": caption,
            "words": (pieces[rows[i]] if pieces is not None
                      else decode_words(tokens[i, : int(lengths[i])].tolist(), id_to_word, caption)),
            "regions": regions,
            "attention": _round(t["attention"]),
            "cosine": _round(t["cosine"]),
            "word_weights": _round(t["word_weights"]),
            "level": LEVEL,
            "temperature": TEMPERATURE,
            "normalisation": "softmax over regions of cosine / temperature, per word",
            "region_kind": kind,
            "unc_similarity": round(t["unc_similarity"], 6),
            "sim_combine": str(getattr(model, "sim_combine", "mean")),
            "image_tokens": [label[l] for l in t["valid_tokens"]],
        }
        if kind == "prompt":
            item["region_top_token"] = t["region_top_token"]
            item["region_token_attention"] = _round(t["region_token_attention"])
        if boxes is not None and i < len(boxes) and np.any(boxes[i]):  # a store without boxes holds zeros
            item["token_boxes"] = _round(boxes[i][t["valid_tokens"]].tolist(), 4)
        maps.append(item)
    return maps


def attention_record(cfg: dict[str, Any], dataset: str, method: str, model: RetrievalModel, data: SplitInputs,
                     n: int, split: str, store: Path | None = None) -> dict[str, Any]:
    """The attention.json dict of a run: {"method", "arch", "maps"} (+ "reason" when maps is empty)."""
    arch = arch_name(cfg, method)
    record: dict[str, Any] = {"method": method, "arch": arch, "split": split, "maps": []}
    if not is_grm(model):
        record["reason"] = (f"{method} ({arch}) has no region attention; region-word maps are written for "
                            "GRM-arch methods only")
        return record
    if n == 0:
        record["reason"] = "evaluate.attention_maps is 0"
        return record
    data_dir = Path("data") / dataset
    _, captions = split_captions(read_json(data_dir / "dataset.json", "dataset.json"), split)
    pieces = caption_pieces(cfg, captions)  # a transformer text encoder's word pieces; None: vocabulary words
    vocab = load_vocab(vocab_file(dataset)) if pieces is None else {PAD: 0}
    if PAD not in vocab:
        raise UserError(f"{vocab_file(dataset)}: no {PAD!r} entry; re-run `fga features text`")
    boxes = store_boxes(store, min(n, data.n_images)) if store is not None else None
    record["maps"] = grm_maps(model, data, captions, vocab, n, data_dir / "instances.json", boxes, pieces)
    record.update({"level": LEVEL, "temperature": TEMPERATURE})
    if not record["maps"]:
        record["reason"] = f"the {split} split has no images"
    return record
