"""A dataset's source files: the manifests and the config overrides applied to them (fga.data.sources)."""
from __future__ import annotations

import pytest

from fga.data.manifests import MANIFESTS, manifest
from fga.data.sources import resolve_specs
from fga.errors import UserError


def test_manifest_entries_are_well_formed():
    for dataset, specs in MANIFESTS.items():
        for spec in specs:
            assert spec.url is None or spec.url.startswith(("http://", "https://")), spec
            assert spec.sha256 is None or len(spec.sha256) == 64, spec
            if spec.url is None:
                assert spec.config_keys, f"{dataset}/{spec.key}: user-supplied files must name a config key"
    coco = manifest("coco")
    assert coco["coco_train2014"].url == "http://images.cocodataset.org/zips/train2014.zip"
    assert coco["karpathy_captions"].url.endswith("/deepimagesent/caption_datasets.zip")
    assert manifest("f30k_precomp")["scan_precomp"].url == "https://scanproject.blob.core.windows.net/scan-data/data.zip"


def test_config_overrides_and_unknown_keys(tmp_path):
    specs = resolve_specs("coco", {"urls": {"coco_val2014": "http://127.0.0.1:1/v.zip"},
                                   "mirrors": {"coco_val2014": "http://127.0.0.1:2/v.zip"},
                                   "checksums": {"coco_val2014": {"sha256": None}}})
    assert specs["coco_val2014"].urls() == ["http://127.0.0.1:1/v.zip", "http://127.0.0.1:2/v.zip"]
    assert specs["coco_val2014"].sha256 is None and specs["coco_val2014"].size == 6_645_013_297
    with pytest.raises(UserError, match="urls.*unknown file key.*nope"):
        resolve_specs("coco", {"urls": {"nope": "x"}})
