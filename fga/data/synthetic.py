"""The embedded "cluttered scenes" dataset: deterministic rendered shapes with grounded captions.

Every image is a dark, grey-ish gradient with 1-12 flat-coloured shapes (6 shapes x 8 colours x
2 sizes) placed without heavy overlap. Its scene graph (the objects, their boxes, and which of
them the captions talk about) is stored in ``dataset.json`` next to the five captions, so the
captions can be checked and the image re-rendered with extra distractors.

Captions are built from the scene graph and are true of their image. They need fine-grained
binding: attributes bound to the right object ("a small red star"), relations between two
objects ("the blue circle is left of the green square"), exact counts ("two yellow triangles").
Scenes deliberately contain objects that share a colour or a shape with the described ones, so
a global colour/shape histogram cannot tell matching captions from near misses.

Caption grammar (lowercase words separated by single spaces, no punctuation)::

    caption  := ["there is " | "there are "] clause (" and " | " with ") clause ...
    clause   := np | count | np [" is"] " " rel " " np
    np       := ("a" | "an" | "the") [size] colour shape
    count    := number [size] colour plural_shape          # number in two..twenty
    rel      := "left of" | "right of" | "above" | "below"

Semantics: "a"/"an" NP: at least one object has the stated attributes; "the" NP: exactly one
does; a count: exactly that many do; a relation holds between two distinct objects denoted by
the two NPs, judged on box centres: "a left of b" means centre_x(b) - centre_x(a) >= margin,
"a above b" means centre_y(b) - centre_y(a) >= margin (image y grows downwards), with
margin = image_size * RELATION_MARGIN. Captions use each relation only on the dominant axis of
the displacement, so they are unambiguous to a reader too.

Randomness: every image draws from its own ``Generator(PCG64(SeedSequence(...)))`` keyed by
(seed, split, index within split), so images are independent of each other and of the other
splits' sizes (a larger ``n_train`` does not change the test images).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from fga.errors import UserError
from fga.io import atomic_dir, read_json, write_json

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 185, 60),
    "blue": (45, 90, 235),
    "yellow": (240, 225, 40),
    "purple": (155, 60, 210),
    "orange": (250, 140, 25),
    "white": (245, 245, 245),
    "cyan": (40, 215, 225),
}
SIZES: tuple[str, ...] = ("small", "large")
SPLITS: tuple[str, ...] = ("train", "val", "test")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# COCO categories: one per shape, ids 1..6 in SHAPES order.
CATEGORIES: list[dict[str, Any]] = [
    {"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)
]
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
PLURALS: dict[str, str] = {s: (s + "es" if s.endswith(("s", "x", "ss")) else s + "s") for s in SHAPES}
# Relation margin as a fraction of the image side (8 px at 128 px).
RELATION_MARGIN = 1 / 16
# Object side ranges in pixels at a 128 px image; scaled linearly with image_size. Small objects
# still cover ~2x2 cells of a stride-16 map once the image is upsampled 2x.
SIDE_RANGES_128: dict[str, tuple[int, int]] = {"small": (14, 18), "large": (26, 34)}
CAPTIONS_PER_IMAGE = 5

_COLOUR_NAMES = tuple(COLOURS)
_SPLIT_INDEX = {s: i for i, s in enumerate(SPLITS)}
# Independent random streams per purpose.
_TAG_SCENE, _TAG_CLUTTER, _TAG_DISTRACTORS = 0, 1, 2
# Placement: fraction of the smaller box an overlap may cover, relaxed step by step if a
# scene cannot be placed at the strict setting.
_MAX_OVERLAPS = (0.1, 0.2, 0.3, 0.45)
_PLACEMENT_TRIES = 256
_CAPTION_ATTEMPTS = 80
# Caption kinds and their weights (when feasible in a scene).
_KIND_WEIGHTS = {"single": 1.0, "pair": 1.0, "triple": 0.6, "relation": 2.5, "relation_plus": 1.0, "count": 1.5}


# --------------------------------------------------------------------------- randomness


def _rng(*key: int) -> np.random.Generator:
    """An independent generator for one purpose and one image (no Python hash())."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


# --------------------------------------------------------------------------- geometry


@lru_cache(maxsize=None)
def _unit_polygon(shape: str) -> tuple[tuple[float, float], ...]:
    """Outline of `shape` in the unit square, touching all four sides (so boxes are tight)."""
    if shape == "circle":
        pts = [(0.5 + 0.5 * math.cos(2 * math.pi * t / 32), 0.5 + 0.5 * math.sin(2 * math.pi * t / 32)) for t in range(32)]
    elif shape == "square":
        pts = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "triangle":
        pts = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "diamond":
        pts = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    elif shape == "cross":
        a, b = 1 / 3, 2 / 3
        pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    elif shape == "star":
        raw = []
        for t in range(10):
            r = 1.0 if t % 2 == 0 else 0.45
            ang = -math.pi / 2 + t * math.pi / 5
            raw.append((r * math.cos(ang), r * math.sin(ang)))
        xs, ys = [p[0] for p in raw], [p[1] for p in raw]
        pts = [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in raw]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return tuple((float(x), float(y)) for x, y in pts)


def _segmentation(obj: dict[str, Any]) -> list[float]:
    """COCO polygon (continuous coordinates: pixel i spans [i, i+1]) of an object."""
    x, y, w, h = obj["bbox"]
    out: list[float] = []
    for u, v in _unit_polygon(obj["shape"]):
        out += [round(x + u * w, 2), round(y + v * h, 2)]
    return out


def _polygon_area(flat: list[float]) -> float:
    xs, ys = flat[0::2], flat[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2


def _centre(bbox: list[int]) -> tuple[float, float]:
    return bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2


def spatial_relation(box_a: list[int], box_b: list[int], image_size: int) -> str | None:
    """The relation of box a to box b on the dominant axis ("left of", ...), or None if too close.

    "a left of b" means b's centre is at least the margin to the right of a's centre and the
    horizontal offset is at least the vertical one; likewise for the other three relations.
    """
    (ax, ay), (bx, by) = _centre(box_a), _centre(box_b)
    dx, dy = bx - ax, by - ay
    margin = image_size * RELATION_MARGIN
    if max(abs(dx), abs(dy)) < margin:
        return None
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def _side(rng: np.random.Generator, size: str, image_size: int) -> int:
    lo, hi = SIDE_RANGES_128[size]
    scale = image_size / 128
    lo, hi = max(3, round(lo * scale)), max(3, round(hi * scale))
    return int(rng.integers(lo, hi + 1))


def _place(rng: np.random.Generator, side: int, image_size: int, boxes: list[list[int]], max_overlap: float) -> list[int] | None:
    """A box of `side` inside the image whose overlap with every box stays under `max_overlap`.

    Overlap is intersection area over the smaller box's area. Candidates are drawn in one batch
    so the random stream consumed does not depend on which candidate succeeds.
    """
    hi = image_size - side - 1
    if hi < 1:
        return None
    cand = rng.integers(1, hi + 1, size=(_PLACEMENT_TRIES, 2))
    if not boxes:
        return [int(cand[0, 0]), int(cand[0, 1]), side, side]
    b = np.asarray(boxes, dtype=np.int64)
    ix = np.minimum(cand[:, None, 0] + side, b[None, :, 0] + b[None, :, 2]) - np.maximum(cand[:, None, 0], b[None, :, 0])
    iy = np.minimum(cand[:, None, 1] + side, b[None, :, 1] + b[None, :, 3]) - np.maximum(cand[:, None, 1], b[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    smaller = np.minimum(side * side, b[None, :, 2] * b[None, :, 3])
    ok = np.all(inter <= max_overlap * smaller, axis=1)
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    x, y = cand[hits[0]]
    return [int(x), int(y), side, side]


def _place_all(rng: np.random.Generator, objects: list[dict[str, Any]], fixed: list[list[int]], image_size: int) -> bool:
    """Give every object in `objects` a bbox avoiding `fixed` and each other; large first.

    A large object that finds no room becomes small; if a pass fails, the allowed overlap is
    relaxed and the pass restarts. Returns False if even the loosest setting fails.
    """
    order = sorted(range(len(objects)), key=lambda i: objects[i]["size"] != "large")
    for max_overlap in _MAX_OVERLAPS:
        boxes = list(fixed)
        for i in order:
            obj = objects[i]
            box = _place(rng, _side(rng, obj["size"], image_size), image_size, boxes, max_overlap)
            if box is None and obj["size"] == "large":
                obj["size"] = "small"
                box = _place(rng, _side(rng, "small", image_size), image_size, boxes, max_overlap)
            if box is None:
                break
            obj["bbox"] = box
            boxes.append(box)
        else:
            return True
    return False


# --------------------------------------------------------------------------- scenes


def _scene_objects(rng: np.random.Generator, k: int) -> tuple[list[dict[str, Any]], list[bool]]:
    """k objects: 1-3 "anchors" plus confounders sharing a colour or a shape with an anchor.

    Returns the objects (in a random drawing order, boxes not yet placed) and anchor flags.
    """
    n_anchor = int(rng.integers(1, min(3, k) + 1))
    anchors: list[tuple[str, str]] = []
    while len(anchors) < n_anchor:
        combo = (SHAPES[int(rng.integers(len(SHAPES)))], _COLOUR_NAMES[int(rng.integers(len(_COLOUR_NAMES)))])
        if combo not in anchors:
            anchors.append(combo)
    items: list[tuple[str, str, bool]] = [(s, c, True) for s, c in anchors]
    for _ in range(k - n_anchor):
        shape, colour = anchors[int(rng.integers(n_anchor))]
        r = rng.random()
        if r < 0.35:  # same colour, other shape
            shape = [s for s in SHAPES if s != shape][int(rng.integers(len(SHAPES) - 1))]
        elif r < 0.70:  # same shape, other colour
            colour = [c for c in _COLOUR_NAMES if c != colour][int(rng.integers(len(_COLOUR_NAMES) - 1))]
        elif r < 0.85:  # a duplicate: enables counts and size contrasts
            pass
        else:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = _COLOUR_NAMES[int(rng.integers(len(_COLOUR_NAMES)))]
        items.append((shape, colour, False))
    perm = rng.permutation(k)
    objects, flags = [], []
    for i in perm:
        shape, colour, anchor = items[int(i)]
        objects.append({"shape": shape, "colour": colour, "size": SIZES[int(rng.integers(2))], "bbox": [0, 0, 0, 0]})
        flags.append(anchor)
    return objects, flags


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _Describer:
    """Builds captions for one scene; every caption is true by construction."""

    def __init__(self, rng: np.random.Generator, objects: list[dict[str, Any]], anchors: list[bool], image_size: int):
        self.rng = rng
        self.objects = objects
        self.k = len(objects)
        self.combo = [(o["colour"], o["shape"]) for o in objects]
        self.combo_count = Counter(self.combo)
        self.full_count = Counter((o["size"], o["colour"], o["shape"]) for o in objects)
        self.weight = np.array([3.0 if a else 1.0 for a in anchors])
        self.pairs = [
            (i, j, rel)
            for i in range(self.k)
            for j in range(self.k)
            if i != j and self.combo[i] != self.combo[j]
            and (rel := spatial_relation(objects[i]["bbox"], objects[j]["bbox"], image_size)) is not None
        ]
        groups: dict[tuple[str | None, str, str], list[int]] = {}
        for i, o in enumerate(objects):
            groups.setdefault((None, o["colour"], o["shape"]), []).append(i)
            groups.setdefault((o["size"], o["colour"], o["shape"]), []).append(i)
        self.groups = sorted(
            ((key, idx) for key, idx in groups.items() if 2 <= len(idx) < len(NUMBER_WORDS)),
            key=lambda kv: (kv[0][0] or "", kv[0][1], kv[0][2]),
        )
        self.n_combos = len(self.combo_count)

    def _pick(self, exclude_combos: set[tuple[str, str]]) -> int | None:
        idx = [i for i in range(self.k) if self.combo[i] not in exclude_combos]
        if not idx:
            return None
        w = self.weight[idx]
        return idx[int(self.rng.choice(len(idx), p=w / w.sum()))]

    def noun_phrase(self, i: int) -> str:
        o = self.objects[i]
        n_combo = self.combo_count[self.combo[i]]
        n_full = self.full_count[(o["size"], o["colour"], o["shape"])]
        p_size = 0.85 if (n_combo > 1 and n_full == 1) else 0.4
        with_size = bool(self.rng.random() < p_size)
        unique = (n_full if with_size else n_combo) == 1
        definite = unique and bool(self.rng.random() < 0.5)
        words = ([o["size"]] if with_size else []) + [o["colour"], o["shape"]]
        return " ".join(["the" if definite else _article(words[0])] + words)

    def _single(self) -> tuple[str, list[int]] | None:
        i = self._pick(set())
        np_ = self.noun_phrase(i)
        if not np_.startswith("the ") and self.rng.random() < 0.4:
            np_ = "there is " + np_
        return np_, [i]

    def _list(self, n: int) -> tuple[str, list[int]] | None:
        if self.n_combos < n:
            return None
        refs: list[int] = []
        for _ in range(n):
            refs.append(self._pick({self.combo[j] for j in refs}))
        phrases = [self.noun_phrase(i) for i in refs]
        if n == 2:
            return f"{phrases[0]} and {phrases[1]}", refs
        return f"{phrases[0]} with {phrases[1]} and {phrases[2]}", refs

    def _relation(self, plus: bool) -> tuple[str, list[int]] | None:
        if not self.pairs:
            return None
        w = np.array([self.weight[i] + self.weight[j] for i, j, _ in self.pairs])
        i, j, rel = self.pairs[int(self.rng.choice(len(self.pairs), p=w / w.sum()))]
        a, b = self.noun_phrase(i), self.noun_phrase(j)
        verb = " is" if a.startswith("the ") and b.startswith("the ") and self.rng.random() < 0.6 else ""
        text, refs = f"{a}{verb} {rel} {b}", [i, j]
        if plus:
            m = self._pick({self.combo[i], self.combo[j]})
            if m is None:
                return None
            text, refs = f"{text} and {self.noun_phrase(m)}", refs + [m]
        return text, refs

    def _count(self) -> tuple[str, list[int]] | None:
        if not self.groups:
            return None
        (size, colour, shape), idx = self.groups[int(self.rng.integers(len(self.groups)))]
        words = [NUMBER_WORDS[len(idx)]] + ([size] if size else []) + [colour, PLURALS[shape]]
        text, refs = " ".join(words), list(idx)
        if self.rng.random() < 0.3:
            text = "there are " + text
        if self.rng.random() < 0.5:
            m = self._pick({(colour, shape)})
            if m is not None:
                text, refs = f"{text} and {self.noun_phrase(m)}", refs + [m]
        return text, refs

    def caption(self) -> tuple[str, list[int]]:
        kinds = {
            "single": True,
            "pair": self.n_combos >= 2,
            "triple": self.n_combos >= 3,
            "relation": bool(self.pairs),
            "relation_plus": bool(self.pairs) and self.n_combos >= 3,
            "count": bool(self.groups),
        }
        names = [k for k, ok in kinds.items() if ok]
        # One-object captions are true of many other images; keep them rare in busy scenes.
        w = np.array([_KIND_WEIGHTS[k] * (0.3 if k == "single" and self.k >= 3 else 1.0) for k in names])
        while True:
            kind = names[int(self.rng.choice(len(names), p=w / w.sum()))]
            out = {
                "single": self._single,
                "pair": lambda: self._list(2),
                "triple": lambda: self._list(3),
                "relation": lambda: self._relation(False),
                "relation_plus": lambda: self._relation(True),
                "count": self._count,
            }[kind]()
            if out is not None:
                return out

    def captions(self) -> tuple[list[str], list[int]]:
        """Five captions (distinct when the scene allows) and the sorted mentioned indices."""
        sentences: list[str] = []
        mentioned: set[int] = set()
        for _ in range(_CAPTION_ATTEMPTS):
            text, refs = self.caption()
            if text not in sentences:
                sentences.append(text)
                mentioned.update(refs)
                if len(sentences) == CAPTIONS_PER_IMAGE:
                    break
        while len(sentences) < CAPTIONS_PER_IMAGE:  # tiny scenes: allow repeats
            text, refs = self.caption()
            sentences.append(text)
            mentioned.update(refs)
        return sentences, sorted(mentioned)


# --------------------------------------------------------------------------- rendering


def render_order(entry: dict[str, Any]) -> list[int]:
    """Indices of entry["objects"] in drawing order: added distractors first (beneath), then the rest."""
    extra = set(entry.get("distractors", []))
    n = len(entry["objects"])
    return [i for i in range(n) if i in extra] + [i for i in range(n) if i not in extra]


def render_scene(entry: dict[str, Any]) -> Image.Image:
    """Render one dataset.json image entry (background + objects in render_order) to an RGB image."""
    w, h = int(entry["width"]), int(entry["height"])
    top, bottom = (np.asarray(c, dtype=np.float32) for c in entry["background"])
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    rows = np.rint(top * (1 - t) + bottom * t).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows, (h, w, 3))), "RGB")
    draw = ImageDraw.Draw(img)
    for i in render_order(entry):
        obj = entry["objects"][i]
        x, y, bw, bh = obj["bbox"]
        fill = COLOURS[obj["colour"]]
        if obj["shape"] == "circle":
            draw.ellipse([x, y, x + bw - 1, y + bh - 1], fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=fill)
        else:
            pts = [(x + u * (bw - 1), y + v * (bh - 1)) for u, v in _unit_polygon(obj["shape"])]
            draw.polygon(pts, fill=fill)
    return img


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG", compress_level=6)


# --------------------------------------------------------------------------- dataset files


def _object_counts(seed: int, split_idx: int, n: int, lo: int, hi: int) -> list[int]:
    """Balanced clutter: each block of (hi-lo+1) images holds every count once, shuffled."""
    levels = hi - lo + 1
    counts: list[int] = []
    block = 0
    while len(counts) < n:
        counts += [lo + int(v) for v in _rng(_TAG_CLUTTER, seed, split_idx, block).permutation(levels)]
        block += 1
    return counts[:n]


def _make_entry(seed: int, split: str, index: int, image_id: int, k: int, image_size: int) -> dict[str, Any]:
    rng = _rng(_TAG_SCENE, seed, _SPLIT_INDEX[split], index)
    g_top = int(rng.integers(30, 70))
    g_bottom = int(rng.integers(30, 70))
    tint = rng.integers(-8, 9, size=3)
    background = [[int(np.clip(g_top + d, 0, 255)) for d in tint], [int(np.clip(g_bottom + d, 0, 255)) for d in tint]]
    objects, anchors = _scene_objects(rng, k)
    if not _place_all(rng, objects, [], image_size):
        raise UserError(
            f"synthetic: cannot place {k} objects in a {image_size}x{image_size} image; "
            "lower data.synthetic.max_objects or raise data.synthetic.image_size"
        )
    sentences, mentioned = _Describer(rng, objects, anchors, image_size).captions()
    return {
        "id": image_id,
        "file_name": f"{image_id:06d}.png",
        "split": split,
        "width": image_size,
        "height": image_size,
        "sentences": sentences,
        "objects": objects,
        "mentioned": mentioned,
        "distractors": [],
        "background": background,
    }


def _instances(entries: list[dict[str, Any]]) -> dict[str, Any]:
    images, annotations = [], []
    cat_id = {c["name"]: c["id"] for c in CATEGORIES}
    for e in entries:
        images.append({"id": e["id"], "file_name": e["file_name"], "width": e["width"], "height": e["height"]})
        for obj in e["objects"]:
            seg = _segmentation(obj)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": e["id"],
                "category_id": cat_id[obj["shape"]],
                "bbox": [float(v) for v in obj["bbox"]],
                "area": round(_polygon_area(seg), 2),
                "iscrowd": 0,
                "segmentation": [seg],
            })
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _write(out_dir: Path, entries: list[dict[str, Any]], progress: bool, desc: str) -> None:
    """Render every entry and write images/, dataset.json and instances.json into out_dir atomically."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for e in tqdm(entries, desc=desc, unit="img", disable=not progress):
            _save_png(render_scene(e), tmp / "images" / e["file_name"])
        write_json(tmp / "dataset.json", {"dataset": "synthetic", "images": entries})
        write_json(tmp / "instances.json", _instances(entries))


def _check_int(name: str, value: int, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise UserError(f"synthetic: {name} must be an integer >= {lo}, got {value!r}")


def generate(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train: int = 2000,
    n_val: int = 250,
    n_test: int = 500,
    image_size: int = 128,
    min_objects: int = 1,
    max_objects: int = 12,
    progress: bool = True,
    dry_run: bool = False,
) -> None:
    """Write out_dir/images/*.png, out_dir/dataset.json, out_dir/instances.json (atomically).

    Image ids run train, then val, then test, from 0; file names are ``{id:06d}.png``. Each
    image entry carries, beyond the Karpathy contract, ``objects`` (shape, colour, size, bbox
    [x, y, w, h] in pixels, in drawing order), ``mentioned`` (indices of the objects any caption
    refers to), ``distractors`` (indices added by add_distractors; empty here) and
    ``background`` (top and bottom RGB of the gradient), so the image can be re-rendered.
    Same arguments give byte-identical files; a different seed gives different data.
    With ``dry_run`` nothing is rendered or written: it prints how many images would be made,
    where, and whether ``out_dir`` already holds exactly this dataset.
    """
    _check_int("seed", seed, 0)
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_int(name, value, 0)
    _check_int("image_size", image_size, 32)
    _check_int("min_objects", min_objects, 1)
    _check_int("max_objects", max_objects, min_objects)
    if n_train + n_val + n_test == 0:
        raise UserError("synthetic: n_train + n_val + n_test is 0; ask for at least one image")
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    entries = _scene_entries(seed, sizes, image_size, min_objects, max_objects, progress and not dry_run)
    if dry_run:
        print(f"[dry-run] synthetic: would generate {len(entries)} images "
              f"({', '.join(f'{split} {n}' for split, n in sizes.items())}; {image_size}x{image_size} px) "
              f"into {out_dir}; {existing_state(Path(out_dir), entries)}; nothing was written", flush=True)
        return
    _write(Path(out_dir), entries, progress, "rendering")


def _scene_entries(seed: int, sizes: dict[str, int], image_size: int, min_objects: int, max_objects: int,
                   progress: bool) -> list[dict[str, Any]]:
    """The dataset.json entries of every split (scene graphs and captions; no pixels)."""
    entries: list[dict[str, Any]] = []
    with tqdm(total=sum(sizes.values()), desc="synthetic scenes", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            counts = _object_counts(seed, _SPLIT_INDEX[split], sizes[split], min_objects, max_objects)
            for index, k in enumerate(counts):
                entries.append(_make_entry(seed, split, index, len(entries), k, image_size))
                bar.update(1)
    return entries


def _same_json(path: Path, expected: Any) -> bool:
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(expected))
    except (OSError, ValueError):
        return False


def existing_state(out_dir: Path, entries: list[dict[str, Any]]) -> str:
    """What ``out_dir`` holds compared with the dataset ``entries`` describe, in words (for a dry run)."""
    if not out_dir.exists():
        return f"{out_dir} does not exist, a real run would create it"
    if not _same_json(out_dir / "dataset.json", {"dataset": "synthetic", "images": entries}):
        return f"{out_dir} exists but its dataset.json differs from these params, a real run would replace it"
    if not _same_json(out_dir / "instances.json", _instances(entries)):
        return f"{out_dir} exists but its instances.json differs from these params, a real run would replace it"
    missing = sum(not (out_dir / "images" / e["file_name"]).is_file() for e in entries)
    if missing:
        return f"{out_dir} exists but lacks {missing} of the {len(entries)} images, a real run would replace it"
    return (f"{out_dir} is up to date (dataset.json, instances.json and all {len(entries)} images match these "
            "params; a real run would write the same bytes again, with new mtimes)")


def add_distractors(dataset_dir: Path, out_dir: Path, n_extra: int, *, seed: int = 0, split: str = "test") -> None:
    """Re-render the `split` images of a synthetic dataset with n_extra unmentioned distractors.

    Captions, the original objects and their positions are kept; each image gains n_extra objects
    whose (colour, shape) combination no caption mentions (so no count, uniqueness or relation
    claim changes), preferring combinations that share a colour or a shape with a described
    object. They avoid heavy overlap with every object and are drawn beneath the original ones.
    Writes a complete dataset dir (images/, dataset.json with just that split, instances.json).
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    _check_int("n_extra", n_extra, 0)
    _check_int("seed", seed, 0)
    if split not in _SPLIT_INDEX:
        raise UserError(f"synthetic: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if out_dir.resolve() == dataset_dir.resolve():
        raise UserError(f"{out_dir}: add_distractors would overwrite its own input; choose another output dir")
    data = read_json(dataset_dir / "dataset.json", "synthetic dataset.json")
    images = [e for e in data.get("images", []) if e.get("split") == split]
    if not images:
        raise UserError(f"{dataset_dir / 'dataset.json'}: no {split!r} images to add distractors to")
    for e in images:
        if not all(key in e for key in ("objects", "mentioned", "background")):
            raise UserError(
                f"{dataset_dir / 'dataset.json'}: image {e.get('id')} has no scene graph "
                "(objects/mentioned/background); regenerate it with fga.data.synthetic.generate"
            )
    all_combos = [(c, s) for s in SHAPES for c in _COLOUR_NAMES]
    entries = []
    for e in images:
        rng = _rng(_TAG_DISTRACTORS, seed, _SPLIT_INDEX[split], int(e["id"]))
        objects = [dict(o) for o in e["objects"]]
        said = {(objects[i]["colour"], objects[i]["shape"]) for i in e["mentioned"]}
        allowed = [c for c in all_combos if c not in said]
        hard = [c for c in allowed if any(c[0] == m[0] or c[1] == m[1] for m in said)]
        extra = []
        for _ in range(n_extra):
            pool = hard if hard and rng.random() < 0.7 else allowed
            colour, shape = pool[int(rng.integers(len(pool)))]
            extra.append({"shape": shape, "colour": colour, "size": SIZES[int(rng.integers(2))], "bbox": [0, 0, 0, 0]})
        size = int(e["width"])
        if not _place_all(rng, extra, [o["bbox"] for o in objects], size):
            raise UserError(
                f"synthetic: no room for {n_extra} distractors in image {e['id']} ({size}x{size}); lower n_extra"
            )
        new = dict(e)
        new["objects"] = objects + extra
        new["distractors"] = list(e.get("distractors", [])) + list(range(len(objects), len(objects) + n_extra))
        entries.append(new)
    _write(out_dir, entries, False, "distractors")


def clutter_counts(instances_json: Path) -> dict[int, int]:
    """image_id -> number of non-crowd instances, read with pycocotools (images without any give 0)."""
    from pycocotools.coco import COCO

    path = Path(instances_json)
    if not path.exists():
        raise UserError(f"{path}: instances.json not found; run `fga data prepare` first")
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
        coco = COCO(str(path))
    return {int(i): len(coco.getAnnIds(imgIds=[i], iscrowd=False)) for i in sorted(coco.getImgIds())}
