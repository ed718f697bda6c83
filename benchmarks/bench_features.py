"""Feature extraction speed: the batched extractor against a one-image-at-a-time loop, same images, same run.

    python benchmarks/bench_features.py [--n 100] [--backbones lite0_grid vit_tiny_random] [--batch-size 64]

For each backbone (params.yaml entries: by default the packaged CNN's grid tokens and a random-init ViT-Tiny's
patch tokens) the first N train images of data/synthetic (generated into a temp dir when absent) are run
through

* batched: `fga.features.extract.extract` (DataLoader, `features.batch_size`, `features.num_workers`,
  chunked HDF5 writes), and
* single: the same extractor and store writer fed one image per forward pass and per write;

each in its own fresh process, so `resource.getrusage(...).ru_maxrss` is that path's own peak RAM. Model
building is timed apart and left out of images/s. Prints images/s, the batched/single ratio, peak RAM, and
the largest difference between the two stores (float16 rounding of different batch shapes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_subset(n: int, work: Path) -> Path:
    """A dataset dir holding the first n train images of data/synthetic (generated when absent)."""
    from fga.config import load_params
    from fga.data import split_images
    from fga.data.synthetic import generate
    from fga.io import read_json, write_json

    src = ROOT / "data" / "synthetic"
    if not (src / "dataset.json").exists():
        src = work / "synthetic_full"
        syn = {**load_params(ROOT / "params.yaml")["data"]["synthetic"], "n_train": n, "n_val": 0, "n_test": 0}
        print(f"data/synthetic absent: generating {n} images into {src}", flush=True)
        generate(src, progress=False, **syn)
    ds = read_json(src / "dataset.json")
    images = split_images(ds, "train")[:n]
    out = work / "synthetic"
    out.mkdir(parents=True)
    os.symlink(src.resolve() / "images", out / "images")
    write_json(out / "dataset.json", {"dataset": "synthetic", "images": images})
    inst = read_json(src / "instances.json")
    keep = {im["id"] for im in images}
    write_json(out / "instances.json", {**inst, "images": [im for im in inst["images"] if im["id"] in keep],
                                        "annotations": [a for a in inst["annotations"] if a["image_id"] in keep]},
               indent=None)
    return out


def run_phase(mode: str, backbone: str, data_dir: Path, out_dir: Path, batch_size: int) -> dict:
    """In a fresh process: one extraction path; returns seconds (build apart), images and peak RSS."""
    import torch

    import fga.features.extract as E
    from fga.config import load_params
    from fga.data import split_images
    from fga.features.store import StoreWriter
    from fga.features.visual import ImageBoxes, RegionExtractor, box_source
    from fga.io import read_json

    cfg = load_params(ROOT / "params.yaml", [f"features.batch_size={batch_size}"])
    build: list[float] = []

    class TimedExtractor(RegionExtractor):
        def __init__(self, *a, **k):
            t = time.perf_counter()
            super().__init__(*a, **k)
            build.append(time.perf_counter() - t)

    images = split_images(read_json(data_dir / "dataset.json"), "train")
    t0 = time.perf_counter()
    if mode == "batched":
        E.RegionExtractor = TimedExtractor
        E.extract(cfg, "synthetic", backbone, data_dir, out_dir, splits=("train",), quiet=True)
    else:
        spec = cfg["features"]["backbones"][backbone]
        torch.manual_seed(0)
        ext = TimedExtractor(spec, name=backbone)
        coco = box_source(spec, data_dir)[0] if spec["regions"] == "boxes" else None  # instances or boxes_file
        reader = ImageBoxes(data_dir, images, coco, ext.transform(), max_boxes=ext.n_regions)
        attrs = {"backbone": backbone, "params_hash": "bench", "data_hash": "bench"}
        writer = StoreWriter(out_dir / "train.h5", len(images), ext.n_regions, ext.feature_dim, attrs)
        for i in range(len(images)):
            x, boxes, image_id = reader[i]
            regions, out_boxes, mask = ext.extract_batch(x[None], [boxes])
            writer.write(i, regions, out_boxes, mask, torch.tensor([image_id]).numpy())
        writer.finish()
    total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"mode": mode, "backbone": backbone, "images": len(images), "seconds": total - sum(build),
            "build_s": sum(build), "peak_rss_mb": peak_mb, "threads": torch.get_num_threads()}


def child(args: argparse.Namespace) -> None:
    res = run_phase(args.phase, args.backbones[0], Path(args.data), Path(args.out), args.batch_size)
    print("RESULT " + json.dumps(res), flush=True)


def max_diff(a: Path, b: Path) -> float:
    import numpy as np

    from fga.features.store import read_store

    x, y = read_store(a), read_store(b)
    assert (x.image_id == y.image_id).all() and (x.mask == y.mask).all()
    return float(np.abs(x.regions.astype(np.float32) - y.regions.astype(np.float32)).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="images (first n train images of data/synthetic)")
    p.add_argument("--backbones", nargs="+", default=["lite0_grid", "vit_tiny_random"])
    p.add_argument("--batch-size", type=int, default=None, help="default: features.batch_size of params.yaml")
    p.add_argument("--phase", choices=["batched", "single"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch_size is None:
        from fga.config import load_params

        args.batch_size = load_params(ROOT / "params.yaml")["features"]["batch_size"]
    if args.phase:
        child(args)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="fga-bench-") as tmp:
        work = Path(tmp)
        data = make_subset(args.n, work)
        print(f"{args.n} images of {data}; batch {args.batch_size}; {os.cpu_count()} CPUs visible", flush=True)
        for backbone in args.backbones:
            res = {}
            for mode in ("batched", "single"):
                out = work / f"{backbone}_{mode}"
                cmd = [sys.executable, __file__, "--phase", mode, "--backbones", backbone, "--data", str(data),
                       "--out", str(out), "--batch-size", str(args.batch_size)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    sys.exit(f"{backbone}/{mode} failed:\n{proc.stderr[-3000:]}")
                res[mode] = json.loads(line[0][7:])
            diff = max_diff(work / f"{backbone}_batched" / "train.h5", work / f"{backbone}_single" / "train.h5")
            rows.append((backbone, res, diff))
    print()
    print(f"{'backbone':<18}{'path':<9}{'img/s':>8}{'ratio':>8}{'build s':>9}{'peak RAM MB':>13}{'max |diff|':>12}")
    for backbone, res, diff in rows:
        rate = {m: r["images"] / r["seconds"] for m, r in res.items()}
        for m in ("batched", "single"):
            r = res[m]
            ratio = f"{rate['batched'] / rate['single']:.2f}x" if m == "batched" else ""
            print(f"{backbone:<18}{m:<9}{rate[m]:>8.1f}{ratio:>8}{r['build_s']:>9.1f}{r['peak_rss_mb']:>13.0f}"
                  f"{diff if m == 'batched' else '':>12}")
    print(f"(torch threads per process: {rows[0][1]['batched']['threads']}; images/s excludes model building)")


if __name__ == "__main__":
    main()
