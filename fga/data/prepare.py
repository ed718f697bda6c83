"""``fga data prepare``: one real dataset fetched, verified and laid out per the data contracts."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from fga.data.archive import MARKER_NAME, is_extracted
from fga.data.manifests import DATASETS, PRECOMP_FILES, PRECOMP_SPLITS
from fga.data.precomp import write_index
from fga.data.sources import Fetcher, resolve_path
from fga.errors import UserError
from fga.io import atomic_dir

log = logging.getLogger(__name__)


def prepare(dataset: str, cfg: dict, out_dir: Path, *, dry_run: bool = False, progress: bool = True) -> None:
    """Fetch (or index the user's copy of) ``dataset`` and lay it out in ``out_dir``.

    ``dataset`` is one of ``coco``, ``flickr30k``, ``coco_precomp``, ``f30k_precomp``.
    ``coco``/``flickr30k`` write ``out_dir/dataset.json``, ``out_dir/instances.json`` and make
    ``out_dir/images`` a symlink to the image folder (``file_name`` is relative to it); the
    precomputed BUTD features are extracted to ``out_dir/{split}_{ims.npy,caps.txt,ids.txt}``.
    A second run downloads nothing; ``dry_run`` prints what would be fetched (and how big it is)
    and fetches and writes nothing; ``progress=False`` hides the progress bars.

    Keys read from ``cfg`` (the dataset's params section, ``data.<dataset>`` in params.yaml; all
    optional unless noted):

    * ``root`` — a folder already holding the data: nothing is downloaded, files are checked and
      indexed in place (COCO: ``train2014/``, ``val2014/``, ``annotations/instances_*2014.json``,
      ``dataset_coco.json``; Flickr30K: the images and ``dataset_flickr30k.json``, optionally
      ``Annotations/`` + ``Sentences/`` of Flickr30K Entities; precomp: the ``{split}_*`` files, or a
      folder with ``<dataset>/`` or ``data/<dataset>/`` holding them).
    * ``karpathy_json`` — explicit path to the Karpathy split file when using ``root``.
    * ``cache_dir`` — where archives are downloaded and extracted (default ``downloads``,
      relative to the working directory); holds the lock file ``fga-download.lock.json``.
    * ``images_archive`` / ``images_url`` — Flickr30K only, one is required without ``root``: the
      images archive (or folder) obtained through the owners' form, or a private URL to it.
    * ``entities_archive`` / ``entities_url`` / ``entities`` — Flickr30K only: the Flickr30K
      Entities annotations as a local archive, a URL, or ``true`` for the public GitHub copy.
    * ``urls`` (``{file_key: url}``), ``mirrors`` (``{file_key: [url, ...]}``), ``checksums``
      (``{file_key: {sha256, size}}``) — per-file overrides of the manifest
      (:mod:`fga.data.manifests`; file keys e.g. ``karpathy_captions``, ``coco_train2014``).
    * ``retries`` (5), ``backoff`` (1.0 s), ``timeout`` (60 s) — HTTP behaviour.
    * ``splits`` — precomp only: splits whose files must be present (default
      train/dev/testall for COCO, train/dev/test for Flickr30K); ``archive_subdir`` — precomp
      only: folder inside SCAN's ``data.zip`` (default ``data/<dataset>``).
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r} for `fga data prepare`: choose one of {', '.join(DATASETS)}")
    cfg = dict(cfg or {})
    out_dir = Path(out_dir)
    if dataset == "coco":
        from fga.data.coco import prepare_coco

        prepare_coco(cfg, out_dir, dry_run=dry_run, progress=progress)
    elif dataset == "flickr30k":
        from fga.data.flickr30k import prepare_flickr30k

        prepare_flickr30k(cfg, out_dir, dry_run=dry_run, progress=progress)
    else:
        prepare_precomp(dataset, cfg, out_dir, dry_run=dry_run, progress=progress)


def precomp_files(dataset: str, cfg: Mapping[str, Any]) -> list[str]:
    splits = cfg.get("splits") or PRECOMP_SPLITS[dataset]
    if isinstance(splits, str):
        splits = [splits]
    return [f"{split}_{suffix}" for split in splits for suffix in PRECOMP_FILES]


def _missing(folder: Path, names: list[str]) -> list[str]:
    return [n for n in names if not (folder / n).is_file()]


def _locate_precomp_root(dataset: str, root: Path, names: list[str]) -> Path:
    candidates = [root, root / dataset, root / "data" / dataset]
    for candidate in candidates:
        if not _missing(candidate, names):
            return candidate
    best = min(candidates, key=lambda c: len(_missing(c, names)))
    missing = _missing(best, names)
    raise UserError(f"{best}: missing {', '.join(missing)}; point root at the {dataset} folder "
                    "(SCAN's data/<dataset>) or unset root to download")


def prepare_precomp(dataset: str, cfg: Mapping[str, Any], out_dir: Path, *, dry_run: bool = False,
                    progress: bool = True) -> None:
    """SCAN/VSE∞ precomputed BUTD features (``coco_precomp``/``f30k_precomp``) into ``out_dir``."""
    names = precomp_files(dataset, cfg)
    root = resolve_path(cfg.get("root"))
    if root is not None:
        source = _locate_precomp_root(dataset, root, names)
        if dry_run:
            print(f"[dry-run] {dataset}: root {source} holds the features; nothing to download; "
                  f"would link them into {out_dir}", flush=True)
            return
        linked = is_extracted(out_dir) and all(
            (out_dir / n).is_symlink() and Path(os.readlink(out_dir / n)) == (source / n).resolve() for n in names)
        if not linked:
            with atomic_dir(out_dir) as tmp:
                for name in sorted(p.name for p in source.iterdir() if p.is_file()):
                    os.symlink((source / name).resolve(), tmp / name)
                (tmp / MARKER_NAME).write_text(json.dumps({"root": str(source.resolve())}) + "\n")
        write_index(out_dir, dataset)
        return
    subdir = str(cfg.get("archive_subdir") or f"data/{dataset}")
    fetcher = Fetcher(dataset, cfg, dry_run=dry_run, progress=progress)
    try:
        fetcher.extracted("scan_precomp", out_dir, subdir=subdir)
        if dry_run:
            fetcher.summary()
            return
    finally:
        fetcher.close()
    missing = _missing(out_dir, names)
    if missing:
        raise UserError(f"{out_dir}: the features archive lacks {', '.join(missing)} under {subdir}/; "
                        "set splits (or archive_subdir) to what it holds, or use root with your own copy")
    write_index(out_dir, dataset)  # dataset.json + instances.json: the contracts every later stage reads
    log.info("%s: %s ready in %s", dataset, ", ".join(names), out_dir)
