"""Method registry: building methods from params sections, ablation `arch:`, per-backbone options."""
import inspect
from pathlib import Path

import pytest
import yaml

from fga.errors import UserError
from fga.models.grm import GRM
from fga.models.registry import arch_name, build_model, declared_arch, method_section

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
CFG = {"methods": {"grm": {"embed_dim": 16, "num_prompts": 5, "per_backbone": {"swin_base_224": {"num_prompts": 50}}},
                   "grm_no_rp": {"arch": "grm", "embed_dim": 16, "use_region_prompt": False}}}


def test_per_backbone_options_apply_to_that_backbone_only():
    assert method_section(CFG, "grm", "swin_base_224")["num_prompts"] == 50
    assert method_section(CFG, "grm", "lite0_grid")["num_prompts"] == 5
    assert "per_backbone" not in method_section(CFG, "grm", "swin_base_224")
    model = build_model("grm", method_section(CFG, "grm", "swin_base_224"), img_dim=8, vocab_size=10)
    assert model.rp.prompts.shape[0] == 50


def test_malformed_per_backbone_is_one_line_error():
    bad = {"methods": {"grm": {"per_backbone": {"swin_base_224": 50}}}}
    with pytest.raises(UserError, match="per_backbone must map backbone names"):
        method_section(bad, "grm", "swin_base_224")


def test_method_section_fills_a_variant_in_from_its_base():
    """Configs read without load_params (benchmarks, hand-made ones) resolve the same way."""
    raw = {"methods": {**CFG["methods"], "grm_k8": {"arch": "grm", "num_prompts": 8}}}
    assert method_section(raw, "grm_k8", "lite0_grid") == {"embed_dim": 16, "num_prompts": 8, "arch": "grm"}
    assert method_section(raw, "grm_no_rp", "swin_base_224")["num_prompts"] == 50  # the base's per_backbone
    model = build_model("grm_k8", method_section(raw, "grm_k8", "lite0_grid"), img_dim=8, vocab_size=10)
    assert model.rp.prompts.shape[0] == 8


def test_declared_arch_names_the_base_of_a_variant():
    assert declared_arch(CFG, "grm_no_rp") == "grm"
    assert declared_arch(CFG, "grm") is None
    assert declared_arch(CFG, "unknown") is None


def test_arch_name_is_the_declared_arch_else_the_callers_default():
    assert arch_name(CFG, "grm_no_rp") == "grm" and arch_name(CFG, "grm_no_rp", default="base") == "grm"
    assert arch_name(CFG, "grm") == "grm"  # a method runs its own architecture
    assert arch_name(CFG, "grm", default="base") == "base"  # fga.tracking's `variant` tag of a full model
    assert arch_name({}, "vse_mean") == "vse_mean"


def test_params_yaml_states_every_grm_option():
    """Every reconstructed GRM choice is a named option in params.yaml with its default (the issue's rule)."""
    section = yaml.safe_load(PARAMS.read_text())["methods"]["grm"]
    options = [n for n in inspect.signature(GRM.__init__).parameters
               if n not in ("self", "img_dim", "vocab_size", "_", "sim_chunk_elems", "text_encoder")]
    assert sorted(set(options) - set(section)) == []
    # defaults in params.yaml equal the constructor's, except the CPU-sized embedding
    defaults = {n: p.default for n, p in inspect.signature(GRM.__init__).parameters.items()}
    for name in options:
        if name in ("embed_dim",):
            continue
        want = defaults[name]
        got = section[name]
        assert (list(got) if isinstance(want, tuple) else got) == (list(want) if isinstance(want, tuple) else want), name
