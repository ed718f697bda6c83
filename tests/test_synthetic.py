"""Tests for the embedded cluttered-scenes dataset (fga.data.synthetic)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fga.data import synthetic
from fga.errors import UserError

SIZES = dict(n_train=12, n_val=4, n_test=6)

# The vocabulary, written out independently of the module under test.
COLOUR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
SHAPE_WORDS = ("circle", "square", "triangle", "diamond", "cross", "star")
PLURAL_TO_SHAPE = {"circles": "circle", "squares": "square", "triangles": "triangle",
                   "diamonds": "diamond", "crosses": "cross", "stars": "star"}
NUMBERS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                      "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())}

_C = "|".join(COLOUR_WORDS)
_S = "|".join(SHAPE_WORDS)
_P = "|".join(PLURAL_TO_SHAPE)
NP = rf"(?:(?P<{{p}}det>a|an|the) (?:(?P<{{p}}size>small|large) )?(?P<{{p}}colour>{_C}) (?P<{{p}}shape>{_S}))"
RE_NP = re.compile("^" + NP.format(p="a") + "$")
RE_REL = re.compile("^" + NP.format(p="a") + r"(?: is)? (?P<rel>left of|right of|above|below) " + NP.format(p="b") + "$")
RE_COUNT = re.compile(rf"^(?P<num>{'|'.join(NUMBERS)}) (?:(?P<size>small|large) )?(?P<colour>{_C}) (?P<plural>{_P})$")


def _matches(objects, size, colour, shape):
    return [i for i, o in enumerate(objects)
            if o["colour"] == colour and o["shape"] == shape and (size is None or o["size"] == size)]


def _np_referents(m, p, objects, errors, caption):
    """Candidate objects of a singular noun phrase; records an error when its claim is false."""
    det, size, colour, shape = m[p + "det"], m[p + "size"], m[p + "colour"], m[p + "shape"]
    words = ([size] if size else []) + [colour, shape]
    if det in ("a", "an") and det != ("an" if words[0][0] in "aeiou" else "a"):
        errors.append(f"{caption!r}: wrong article {det!r}")
    found = _matches(objects, size, colour, shape)
    if not found:
        errors.append(f"{caption!r}: no {' '.join(words)} in the image")
    if det == "the" and len(found) != 1:
        errors.append(f"{caption!r}: 'the {' '.join(words)}' but {len(found)} match")
    return found


def _centre(o):
    x, y, w, h = o["bbox"]
    return x + w / 2, y + h / 2


def _holds(rel, a, b, margin):
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    return {"left of": bx - ax >= margin, "right of": ax - bx >= margin,
            "above": by - ay >= margin, "below": ay - by >= margin}[rel]


def check_caption(caption: str, objects: list[dict], image_size: int) -> list[str]:
    """Independent truth check of one caption against the scene graph; returns the errors found."""
    errors: list[str] = []
    if caption != caption.lower() or not re.fullmatch(r"[a-z]+( [a-z]+)*", caption):
        return [f"{caption!r}: not lowercase words separated by single spaces"]
    margin = image_size / 16
    body = re.sub(r"^there (is|are) ", "", caption)
    for clause in re.split(r" and | with ", body):
        if m := RE_REL.match(clause):
            xs = _np_referents(m, "a", objects, errors, caption)
            ys = _np_referents(m, "b", objects, errors, caption)
            if not any(i != j and _holds(m["rel"], objects[i], objects[j], margin) for i in xs for j in ys):
                errors.append(f"{caption!r}: relation {m['rel']!r} does not hold")
        elif m := RE_NP.match(clause):
            _np_referents(m, "a", objects, errors, caption)
        elif m := RE_COUNT.match(clause):
            n = len(_matches(objects, m["size"], m["colour"], PLURAL_TO_SHAPE[m["plural"]]))
            if n != NUMBERS[m["num"]]:
                errors.append(f"{caption!r}: says {m['num']} but the image has {n}")
        else:
            errors.append(f"{caption!r}: clause {clause!r} matches no template")
    return errors


def check_dataset(data: dict) -> list[str]:
    errors: list[str] = []
    for e in data["images"]:
        for s in e["sentences"]:
            errors += check_caption(s, e["objects"], e["width"])
    return errors


def _coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "synthetic"
    synthetic.generate(out, seed=0, progress=False, **SIZES)
    return out


@pytest.fixture(scope="module")
def ds_data(ds) -> dict:
    return json.loads((ds / "dataset.json").read_text())


@pytest.fixture(scope="module")
def distracted(ds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dis") / "synthetic_d4"
    synthetic.add_distractors(ds, out, 4, seed=0)
    return out


def test_constants_match_spec():
    assert synthetic.SHAPES == SHAPE_WORDS
    assert tuple(synthetic.COLOURS) == COLOUR_WORDS
    assert len(set(synthetic.COLOURS.values())) == 8
    assert synthetic.SIZES == ("small", "large")


def test_deterministic_and_seed_dependent(ds, tmp_path):
    again = tmp_path / "again"
    synthetic.generate(again, seed=0, progress=False, **SIZES)
    a, b = _files(ds), _files(again)
    assert sorted(a) == sorted(b)
    assert {"dataset.json", "instances.json"} <= set(a)
    for name in a:
        assert a[name] == b[name], name
    other = tmp_path / "other"
    synthetic.generate(other, seed=1, progress=False, **SIZES)
    c = _files(other)
    assert c["dataset.json"] != a["dataset.json"]
    assert c["instances.json"] != a["instances.json"]
    pngs = [n for n in a if n.endswith(".png")]
    assert sum(c[n] != a[n] for n in pngs) >= len(pngs) - 1


def test_splits_do_not_shift_with_other_split_sizes(ds_data, tmp_path):
    out = tmp_path / "bigger_train"
    synthetic.generate(out, seed=0, progress=False, n_train=14, n_val=4, n_test=6)
    test_a = [e for e in ds_data["images"] if e["split"] == "test"]
    test_b = [e for e in json.loads((out / "dataset.json").read_text())["images"] if e["split"] == "test"]
    strip = lambda e: {k: v for k, v in e.items() if k not in ("id", "file_name")}  # noqa: E731
    assert [strip(e) for e in test_a] == [strip(e) for e in test_b]


def test_dataset_contract(ds, ds_data):
    assert ds_data["dataset"] == "synthetic"
    images = ds_data["images"]
    assert [e["split"] for e in images] == ["train"] * 12 + ["val"] * 4 + ["test"] * 6
    assert [e["id"] for e in images] == list(range(22))
    for e in images:
        assert e["file_name"] == f"{e['id']:06d}.png"
        assert (ds / "images" / e["file_name"]).is_file()
        assert e["width"] == e["height"] == 128
        assert len(e["sentences"]) == 5 and all(isinstance(s, str) and s for s in e["sentences"])
        assert 1 <= len(e["objects"]) <= 12
        assert e["mentioned"] == sorted(set(e["mentioned"]))
        assert all(0 <= i < len(e["objects"]) for i in e["mentioned"]) and e["mentioned"]
        for o in e["objects"]:
            assert o["shape"] in SHAPE_WORDS and o["colour"] in COLOUR_WORDS and o["size"] in ("small", "large")
            side = o["bbox"][2]
            assert (14 <= side <= 18) if o["size"] == "small" else (26 <= side <= 34)
        with Image.open(ds / "images" / e["file_name"]) as im:
            assert im.size == (128, 128) and im.mode == "RGB"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' mask decode under numpy 2
def test_instances_contract(ds, ds_data):
    coco = _coco(ds / "instances.json")
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4, 5, 6]
    assert [c["name"] for c in coco.loadCats([1, 2, 3, 4, 5, 6])] == list(SHAPE_WORDS)
    assert all(c["supercategory"] == "shape" for c in coco.loadCats(coco.getCatIds()))
    assert sorted(coco.getImgIds()) == [e["id"] for e in ds_data["images"]]
    by_id = {e["id"]: e for e in ds_data["images"]}
    ann_ids = coco.getAnnIds()
    assert len(set(ann_ids)) == len(ann_ids) == sum(len(e["objects"]) for e in ds_data["images"])
    for ann in coco.loadAnns(ann_ids):
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= img["width"] and y + h <= img["height"]
        assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h
        assert ann["category_id"] in coco.cats
        mask = coco.annToMask(ann)
        assert mask.sum() > 0
    for img_id, e in by_id.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        assert [a["bbox"] for a in anns] == [[float(v) for v in o["bbox"]] for o in e["objects"]]
        assert [coco.cats[a["category_id"]]["name"] for a in anns] == [o["shape"] for o in e["objects"]]


def test_every_caption_is_true(ds_data):
    assert check_dataset(ds_data) == []


def test_checker_can_fail(ds_data):
    """Mutated captions must be rejected, so the truth test above is not vacuous."""
    n_count = n_rel = 0
    for e in ds_data["images"]:
        objs, size = e["objects"], e["width"]
        present = {(o["colour"], o["shape"]) for o in objs}
        absent = next((c, s) for c in COLOUR_WORDS for s in SHAPE_WORDS if (c, s) not in present)
        assert check_caption(f"a {absent[0]} {absent[1]}", objs, size)
        for s in e["sentences"]:
            if m := re.search(rf"\b({'|'.join(NUMBERS)}) ", s):
                wrong = [w for w, i in NUMBERS.items() if i == NUMBERS[m[1]] + 1][0]
                assert check_caption(s.replace(m[0], wrong + " ", 1), objs, size), s
                n_count += 1
            if m := RE_REL.match(s.split(" and ")[0]):
                if m["adet"] == "the" and m["bdet"] == "the":
                    flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
                    assert check_caption(s.replace(m["rel"], flip[m["rel"]], 1), objs, size), s
                    n_rel += 1
    assert n_count > 0 and n_rel > 0
    assert check_caption("the red star", [{"shape": "star", "colour": "red", "size": "small", "bbox": [0, 0, 9, 9]}] * 2, 128)


def test_caption_variety(ds_data):
    sentences = [s for e in ds_data["images"] for s in e["sentences"]]
    assert any(RE_REL.match(c) for s in sentences for c in s.split(" and "))
    assert any(RE_COUNT.match(re.sub("^there are ", "", c)) for s in sentences for c in s.split(" and "))
    assert any(" with " in s for s in sentences)
    for e in ds_data["images"]:
        if len(e["objects"]) >= 3:
            assert len(set(e["sentences"])) == 5


def test_rendered_colours(ds, ds_data):
    palette = np.array([synthetic.COLOURS[c] for c in COLOUR_WORDS], dtype=np.int64)
    checked = 0
    for e in ds_data["images"]:
        pix = np.asarray(Image.open(ds / "images" / e["file_name"]).convert("RGB")).astype(np.int64)
        objs = e["objects"]
        order = synthetic.render_order(e)
        assert order == list(range(len(objs)))
        for pos, i in enumerate(order):
            x, y, w, h = objs[i]["bbox"]
            cx, cy = x + w // 2, y + h // 2
            later = [objs[j]["bbox"] for j in order[pos + 1:]]
            if any(bx <= cx < bx + bw and by <= cy < by + bh for bx, by, bw, bh in later):
                continue  # possibly occluded
            nearest = COLOUR_WORDS[int(np.argmin(((palette - pix[cy, cx]) ** 2).sum(1)))]
            assert nearest == objs[i]["colour"], (e["id"], objs[i])
            assert np.abs(pix[cy, cx] - np.array(synthetic.COLOURS[objs[i]["colour"]])).max() <= 10
            checked += 1
        # objects keep a 1 px border, so the corner is background: dark and grey-ish
        assert pix[0, 0].max() < 100 and np.ptp(pix[0, 0]) <= 20
    assert checked > 50


def test_clutter_spread(tmp_path):
    out = tmp_path / "spread"
    synthetic.generate(out, seed=3, n_train=36, n_val=12, n_test=12, progress=False)
    counts = synthetic.clutter_counts(out / "instances.json")
    assert len(counts) == 60
    data = json.loads((out / "dataset.json").read_text())
    for split in ("train", "val", "test"):
        per = sorted(counts[e["id"]] for e in data["images"] if e["split"] == split)
        assert per == sorted(list(range(1, 13)) * (len(per) // 12))
    assert check_dataset(data) == []


def test_distractors(ds, ds_data, distracted):
    new = json.loads((distracted / "dataset.json").read_text())
    old_test = [e for e in ds_data["images"] if e["split"] == "test"]
    assert new["dataset"] == "synthetic"
    assert [e["id"] for e in new["images"]] == [e["id"] for e in old_test]
    for old, e in zip(old_test, new["images"]):
        assert e["sentences"] == old["sentences"]
        assert e["mentioned"] == old["mentioned"]
        n = len(old["objects"])
        assert e["objects"][:n] == old["objects"]
        assert len(e["objects"]) == n + 4
        assert e["distractors"] == list(range(n, n + 4))
        said = {(old["objects"][i]["colour"], old["objects"][i]["shape"]) for i in old["mentioned"]}
        for o in e["objects"][n:]:
            assert (o["colour"], o["shape"]) not in said
            x, y, w, h = o["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
            for p in old["objects"]:
                px, py, pw, ph = p["bbox"]
                inter = max(0, min(x + w, px + pw) - max(x, px)) * max(0, min(y + h, py + ph) - max(y, py))
                assert inter <= 0.5 * min(w * h, pw * ph)
        # originals are drawn on top, so their pixels are unchanged
        a = np.asarray(Image.open(ds / "images" / old["file_name"]))
        b = np.asarray(Image.open(distracted / "images" / e["file_name"]))
        assert a.shape == b.shape and not np.array_equal(a, b)
        for o in old["objects"]:
            x, y, w, h = o["bbox"]
            cx, cy = x + w // 2, y + h // 2
            assert (a[cy, cx] == b[cy, cx]).all()
    assert check_dataset(new) == []
    before = synthetic.clutter_counts(ds / "instances.json")
    after = synthetic.clutter_counts(distracted / "instances.json")
    assert sorted(after) == [e["id"] for e in old_test]
    assert all(after[i] == before[i] + 4 for i in after)
    _coco(distracted / "instances.json")


def test_distractors_deterministic(ds, distracted, tmp_path):
    again = tmp_path / "again"
    synthetic.add_distractors(ds, again, 4, seed=0)
    assert _files(again) == _files(distracted)


def test_user_errors(ds, tmp_path):
    with pytest.raises(UserError):
        synthetic.generate(tmp_path / "x", n_train=1, n_val=0, n_test=0, min_objects=3, max_objects=2, progress=False)
    with pytest.raises(UserError):
        synthetic.add_distractors(ds, ds, 1)
    with pytest.raises(UserError):
        synthetic.add_distractors(tmp_path / "missing", tmp_path / "out", 1)
    with pytest.raises(UserError):
        synthetic.add_distractors(ds, tmp_path / "out", 1, split="bogus")
    with pytest.raises(UserError):
        synthetic.clutter_counts(tmp_path / "missing.json")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- `fga data prepare --dry-run` (issue 21)

TINY_SET = ["data.synthetic.n_train=3", "data.synthetic.n_val=2", "data.synthetic.n_test=2",
            "data.synthetic.image_size=32", "data.synthetic.max_objects=3"]


def _prepare_cli(project: Path, *extra: str, sets: list[str] = TINY_SET) -> int:
    from fga.cli import main

    args = ["data", "prepare", "--dataset", "synthetic", "--quiet", "--params", str(project / "params.yaml")]
    return main(args + [a for s in sets for a in ("--set", s)] + list(extra))


def _tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime in ns) of `root` and everything below it."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project: the repository's params.yaml only, as the working directory."""
    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parent.parent / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dry_run_on_a_prepared_dataset_changes_nothing(project, capsys):
    assert _prepare_cli(project) == 0
    data = project / "data"
    for path in [data, *data.rglob("*")]:  # old mtimes: any rewrite, even within a second, shows
        os.utime(path, ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9), follow_symlinks=False)
    before = _tree_state(data)
    capsys.readouterr()
    assert _prepare_cli(project, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "[dry-run] synthetic: would generate 7 images (train 3, val 2, test 2; 32x32 px) into data/synthetic" in out
    assert "is up to date" in out and "nothing was written" in out
    assert _tree_state(data) == before
    assert _prepare_cli(project, "--dry-run", sets=TINY_SET + ["data.synthetic.n_test=3"]) == 0
    assert "dataset.json differs from these params" in capsys.readouterr().out
    (data / "synthetic" / "images" / "000006.png").unlink()
    before = _tree_state(data)
    assert _prepare_cli(project, "--dry-run") == 0
    assert "lacks 1 of the 7 images" in capsys.readouterr().out
    assert _tree_state(data) == before


def test_dry_run_on_an_empty_project_creates_nothing(project, capsys):
    assert _prepare_cli(project, "--dry-run") == 0
    assert "data/synthetic does not exist, a real run would create it" in capsys.readouterr().out
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml"]
