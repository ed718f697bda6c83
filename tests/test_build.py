"""`fga features extract` picks the builder by the backbone's kind (fga.features.build)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fga.config import load_params
from fga.errors import UserError
from fga.features import build
from fga.features.extract import extract

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cfg():
    return load_params(ROOT / "params.yaml")


def test_image_backbones_are_extracted_and_precomputed_sources_ingested(cfg, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(build, "extract", lambda *a, **k: calls.append(("extract", a[2], k["splits"])))
    monkeypatch.setattr(build, "ingest", lambda *a, **k: calls.append(("ingest", a[2], k["splits"])))
    build.build_features(cfg, "synthetic", "lite0_grid", tmp_path, tmp_path / "out", splits=("test",), quiet=True)
    build.build_features(cfg, "coco_precomp", "butd", tmp_path, tmp_path / "out", quiet=True)
    assert calls == [("extract", "lite0_grid", ("test",)), ("ingest", "butd", ("train", "val", "test"))]


def test_unknown_backbone_names_every_known_one(cfg, tmp_path):
    with pytest.raises(UserError, match=r"backbone 'nope' not under features.backbones; known: lite0_grid, .*butd") as err:
        build.build_features(cfg, "synthetic", "nope", tmp_path, tmp_path / "out", quiet=True)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_image_extraction_does_not_take_precomputed_sources(cfg, tmp_path):
    with pytest.raises(UserError, match="backbone 'butd' not under features.backbones"):
        extract(cfg, "coco_precomp", "butd", tmp_path, tmp_path / "out", quiet=True)
