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
from typing import Any, NamedTuple

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


# --------------------------------------------------------------------------- caption semantics
# The caption grammar of the module docstring read back into clauses, so the dataset can say which images a
# caption is true of (exhaustive positives for evaluation) and derive near-miss captions that keep a caption's
# words but break its binding (the binding probes). Nothing here changes what generate() writes.

PROBE_KINDS: tuple[str, ...] = ("attribute", "relation")
_SHAPE_OF_PLURAL = {plural: shape for shape, plural in PLURALS.items()}
_NUMBER = {word: n for n, word in enumerate(NUMBER_WORDS)}
_RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


class NounPhrase(NamedTuple):
    """`det` is a, an, the, or a number word (a count: "two small red stars")."""

    det: str
    size: str | None
    colour: str
    shape: str

    def text(self) -> str:
        shape = PLURALS[self.shape] if self.det in _NUMBER else self.shape
        return " ".join([self.det] + ([self.size] if self.size else []) + [self.colour, shape])

    def with_colour(self, colour: str) -> NounPhrase:
        """The phrase with another colour, its indefinite article agreeing with its new first word."""
        det = _article(self.size or colour) if self.det in ("a", "an") else self.det
        return self._replace(det=det, colour=colour)


class Clause(NamedTuple):
    """A noun phrase or count (`relation` empty), or `a [is] relation b`."""

    a: NounPhrase
    relation: str = ""
    b: NounPhrase | None = None
    verb: bool = False

    def text(self) -> str:
        if not self.relation:
            return self.a.text()
        return f"{self.a.text()}{' is' if self.verb else ''} {self.relation} {self.b.text()}"


class Caption(NamedTuple):
    """A parsed caption: an optional "there is "/"there are " prefix, clauses, and the words joining them."""

    prefix: str
    clauses: tuple[Clause, ...]
    joins: tuple[str, ...]

    def text(self) -> str:
        parts = [self.clauses[0].text()]
        for join, clause in zip(self.joins, self.clauses[1:]):
            parts += [join, clause.text()]
        return self.prefix + " ".join(parts)


def _noun_phrase(words: list[str], caption: str) -> tuple[NounPhrase, list[str]]:
    """The noun phrase at the start of `words` and the words after it."""
    try:
        det, rest = words[0], words[1:]
        size = rest.pop(0) if rest[0] in SIZES else None
        colour, noun = rest[0], rest[1]
    except IndexError:
        raise UserError(f"synthetic: caption {caption!r} does not follow the caption grammar") from None
    shape = _SHAPE_OF_PLURAL.get(noun, noun) if det in _NUMBER else noun
    if det not in ("a", "an", "the", *_NUMBER) or colour not in COLOURS or shape not in SHAPES:
        raise UserError(f"synthetic: caption {caption!r} does not follow the caption grammar")
    return NounPhrase(det, size, colour, shape), rest[2:]


def _clause(words: list[str], caption: str) -> Clause:
    a, rest = _noun_phrase(words, caption)
    if not rest:
        return Clause(a)
    verb = rest[0] == "is"
    rest = rest[1:] if verb else rest
    relation = _RELATION_WORDS.get(rest[0]) if rest else None
    if relation is None or rest[: len(relation.split())] != relation.split():
        raise UserError(f"synthetic: caption {caption!r} does not follow the caption grammar")
    b, tail = _noun_phrase(rest[len(relation.split()):], caption)
    if tail:
        raise UserError(f"synthetic: caption {caption!r} does not follow the caption grammar")
    return Clause(a, relation, b, verb)


def parse_caption(caption: str) -> Caption:
    """A caption of this dataset as clauses (UserError when it does not follow the grammar)."""
    prefix = next((p for p in ("there is ", "there are ") if caption.startswith(p)), "")
    words = caption[len(prefix):].split(" ")
    clauses, joins, current = [], [], []
    for word in words:
        if word in ("and", "with"):
            clauses.append(_clause(current, caption))
            joins.append(word)
            current = []
        else:
            current.append(word)
    clauses.append(_clause(current, caption))
    return Caption(prefix, tuple(clauses), tuple(joins))


def _referents(np_: NounPhrase, objects: list[dict[str, Any]]) -> list[int]:
    return [i for i, o in enumerate(objects) if o["colour"] == np_.colour and o["shape"] == np_.shape
            and (np_.size is None or o["size"] == np_.size)]


def _claim_holds(np_: NounPhrase, found: list[int]) -> bool:
    """"a"/"an": at least one referent; "the": exactly one; a count: exactly that many."""
    if np_.det in ("a", "an"):
        return bool(found)
    return len(found) == (1 if np_.det == "the" else _NUMBER[np_.det])


def relation_holds(relation: str, box_a: list[int], box_b: list[int], image_size: int) -> bool:
    """Whether "a <relation> b" holds: the centres differ by at least the margin along the relation's axis."""
    (ax, ay), (bx, by) = _centre(box_a), _centre(box_b)
    offset = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[relation]
    return offset >= image_size * RELATION_MARGIN


def caption_holds(caption: Caption, objects: list[dict[str, Any]], image_size: int) -> bool:
    """Whether every clause of a parsed caption is true of a scene (the semantics of the module docstring)."""
    for clause in caption.clauses:
        a = _referents(clause.a, objects)
        if not _claim_holds(clause.a, a):
            return False
        if clause.relation:
            b = _referents(clause.b, objects)
            if not _claim_holds(clause.b, b) or not any(
                    i != j and relation_holds(clause.relation, objects[i]["bbox"], objects[j]["bbox"], image_size)
                    for i in a for j in b):
                return False
    return True


def _phrases(caption: Caption) -> list[NounPhrase]:
    return [np_ for clause in caption.clauses for np_ in (clause.a, clause.b) if np_ is not None]


def caption_positives(entries: list[dict[str, Any]]) -> list[list[int]]:
    """For every caption of `entries` (each image's first five, in order), the indices into `entries` of every
    image it is true of, its own image included."""
    by_combo: dict[tuple[str, str], set[int]] = {}
    for k, e in enumerate(entries):
        for o in e["objects"]:
            by_combo.setdefault((o["colour"], o["shape"]), set()).add(k)
    out: list[list[int]] = []
    for e in entries:
        for sentence in e["sentences"][:CAPTIONS_PER_IMAGE]:
            caption = parse_caption(sentence)
            # only images holding every named (colour, shape) can make it true
            candidates = set.intersection(*(by_combo.get((p.colour, p.shape), set()) for p in _phrases(caption)))
            out.append(sorted(k for k in candidates
                              if caption_holds(caption, entries[k]["objects"], int(entries[k]["width"]))))
    return out


def _colour_swaps(caption: Caption) -> list[Caption]:
    """The caption with the colours of two of its phrases exchanged (phrases differing in colour and shape)."""
    phrases = _phrases(caption)
    out = []
    for p in range(len(phrases)):
        for q in range(p + 1, len(phrases)):
            if phrases[p].colour == phrases[q].colour or phrases[p].shape == phrases[q].shape:
                continue
            swap = {p: phrases[p].with_colour(phrases[q].colour), q: phrases[q].with_colour(phrases[p].colour)}
            out.append(_with_phrases(caption, [swap.get(i, np_) for i, np_ in enumerate(phrases)]))
    return out


def _with_phrases(caption: Caption, phrases: list[NounPhrase]) -> Caption:
    it = iter(phrases)
    clauses = tuple(c._replace(a=next(it), b=next(it) if c.b is not None else None) for c in caption.clauses)
    return caption._replace(clauses=clauses)


def _argument_swaps(caption: Caption) -> list[Caption]:
    """The caption with the two sides of one of its relations exchanged ("a left of b" -> "b left of a")."""
    return [caption._replace(clauses=tuple(c._replace(a=c.b, b=c.a) if k == i else c
                                           for k, c in enumerate(caption.clauses)))
            for i, clause in enumerate(caption.clauses) if clause.relation]


def near_misses(sentence: str, objects: list[dict[str, Any]], image_size: int) -> dict[str, str]:
    """Per probe kind, the first near miss of a caption that is false of its scene: `attribute` exchanges the
    colours of two described objects, `relation` exchanges a relation's two sides. Same words, other binding."""
    caption = parse_caption(sentence)
    out: dict[str, str] = {}
    for kind, candidates in (("attribute", _colour_swaps(caption)), ("relation", _argument_swaps(caption))):
        for candidate in candidates:
            if not caption_holds(candidate, objects, image_size):
                out[kind] = candidate.text()
                break
    return out


def binding_probes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The near-miss probe set of a split: `{"image", "caption", "kind", "text"}` per probe, `image` an index into
    `entries` and `caption` the index of the true caption among the split's captions (five per image, in order)."""
    probes = []
    for k, e in enumerate(entries):
        for c, sentence in enumerate(e["sentences"][:CAPTIONS_PER_IMAGE]):
            for kind, text in near_misses(sentence, e["objects"], int(e["width"])).items():
                probes.append({"image": k, "caption": k * CAPTIONS_PER_IMAGE + c, "kind": kind, "text": text})
    return probes


def has_scene_graphs(entries: list[dict[str, Any]]) -> bool:
    """Whether image entries carry this dataset's scene graphs (objects with boxes), so captions can be judged."""
    return bool(entries) and all(isinstance(e.get("objects"), list) and "width" in e for e in entries)
