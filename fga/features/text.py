"""Caption tokenisation and the train-only vocabulary of the BiGRU text path (SCAN/VSE style)."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fga.data import split_images
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
