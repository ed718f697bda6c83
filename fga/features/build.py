"""`fga features extract`: the region-feature stores of one backbone, built the way its kind needs.

An image backbone (`features.backbones`) runs over the dataset's images (fga.features.extract); a
precomputed-feature source (`features.precomp`, e.g. BUTD regions) is ingested from its files
(fga.data.precomp). Both write features/<dataset>/<backbone>/<split>.h5 (fga.features.store).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fga.data.precomp import ingest
from fga.errors import UserError
from fga.features.extract import SPLITS, extract
from fga.features.store import known_backbones, precomp_specs


def build_features(cfg: dict[str, Any], dataset: str, backbone: str, data_dir: Path, out_dir: Path,
                   splits: tuple[str, ...] = SPLITS, quiet: bool = False) -> None:
    """The stores of `backbone` for each of `splits` into `out_dir` (stores already current are kept)."""
    if backbone in cfg["features"]["backbones"]:
        extract(cfg, dataset, backbone, data_dir, out_dir, splits=splits, quiet=quiet)
    elif backbone in precomp_specs(cfg):
        ingest(cfg, dataset, backbone, data_dir, out_dir, splits=splits, quiet=quiet)
    else:
        raise UserError(f"params.yaml: backbone {backbone!r} not under features.backbones; "
                        f"known: {known_backbones(cfg)}")
