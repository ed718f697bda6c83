"""Method registry: `build_model(name, cfg)`. Adding a method is one module plus one line here.

A params.yaml `methods.<name>` section holds the constructor options of that method. A section
may also name another method with `arch:` — that is how ablation variants
(e.g. `grm_no_rp: {arch: grm, use_region_prompt: false}`) become methods of their own in the grid:
it inherits that method's section, its own keys winning (`fga.config.resolve_methods`, applied when
params load and again by `method_section` for configs read without `load_params`).
Options that depend on the backbone go under `per_backbone.<backbone>` (e.g. GRM's K = 50 prompts
for Swin); `method_section` applies them.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from fga.config import resolve_methods
from fga.errors import UserError
from fga.models.base import RetrievalModel
from fga.models.text_encoder import TextEncoderSpec

# name -> "module:Class"; modules are imported only when their method is built.
METHODS: dict[str, str] = {
    "vse_mean": "fga.models.vse:VSEMean",
    "grm": "fga.models.grm:GRM",
    "scan": "fga.models.scan:SCAN",
    "vse_inf": "fga.models.vse_gpo:VSEInfinity",
}


def declared_arch(cfg: dict[str, Any], method: str) -> str | None:
    """The architecture `methods.<method>.arch` names (an ablation variant's base), None without one."""
    section = (cfg.get("methods") or {}).get(method)
    return str(section["arch"]) if isinstance(section, dict) and "arch" in section else None


def arch_name(cfg: dict[str, Any], method: str, default: str | None = None) -> str:
    """The architecture a method runs: its `arch:` (an ablation variant's base), else `default` (None: the method's
    own name, the registered architecture it builds)."""
    return declared_arch(cfg, method) or (method if default is None else default)


def method_section(cfg: dict[str, Any], method: str, backbone: str | None = None) -> dict[str, Any]:
    """A method's constructor options: its resolved section (a variant's base filled in) with
    `per_backbone.<backbone>` applied."""
    section = dict(resolve_methods(cfg)["methods"].get(method) or {})
    per_backbone = section.pop("per_backbone", None) or {}
    if not isinstance(per_backbone, dict) or not all(isinstance(v, dict) for v in per_backbone.values()):
        raise UserError(f"params.yaml: methods.{method}.per_backbone must map backbone names to option sections, "
                        f"e.g. per_backbone: {{swin_base_224: {{num_prompts: 50}}}}")
    if backbone is not None:
        section.update(per_backbone.get(backbone) or {})
    return section


def model_class(arch: str) -> type[RetrievalModel]:
    if arch not in METHODS:
        raise UserError(f"unknown method architecture {arch!r}; known: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[arch].split(":")
    return getattr(importlib.import_module(module), cls)


def method_options(arch: str) -> list[str]:
    """The constructor options a params.yaml section may set for `arch`."""
    sig = inspect.signature(model_class(arch).__init__)
    return [p.name for p in sig.parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("self", "img_dim", "vocab_size", "text_encoder")]


def build_model(name: str, cfg: dict[str, Any], *, img_dim: int, vocab_size: int,
                text_encoder: TextEncoderSpec | None = None) -> RetrievalModel:
    """Instantiate method `name` from its params.yaml section `cfg` (unknown options are refused), its captions
    encoded by `text_encoder` (None: the BiGRU over `vocab_size` words)."""
    cfg = dict(cfg)
    arch = cfg.pop("arch", name)
    allowed = method_options(arch)
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise UserError(f"params.yaml: unknown key methods.{name}.{unknown[0]} for {arch}; allowed: {', '.join(allowed)}")
    try:
        return model_class(arch)(img_dim=img_dim, vocab_size=vocab_size, text_encoder=text_encoder, **cfg)
    except ValueError as exc:
        raise UserError(f"params.yaml: methods.{name}: {exc}") from None
