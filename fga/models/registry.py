"""Method registry: `build_model(name, cfg)`. Adding a method is one module plus one line here."""
from __future__ import annotations

import importlib
from typing import Any

from fga.errors import UserError
from fga.models.base import RetrievalModel

# name -> "module:Class"; modules are imported only when their method is built.
METHODS: dict[str, str] = {
    "vse_mean": "fga.models.vse:VSEMean",
    "grm": "fga.models.grm:GRM",
    "scan": "fga.models.scan:SCAN",
    "vse_inf": "fga.models.vse_gpo:VSEInfinity",
}


def build_model(name: str, cfg: dict[str, Any], *, img_dim: int, vocab_size: int) -> RetrievalModel:
    """Instantiate method `name` with its params.yaml section `cfg`."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)(img_dim=img_dim, vocab_size=vocab_size, **cfg)
