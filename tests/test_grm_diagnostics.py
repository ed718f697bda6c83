"""GRM module diagnostics: names, ranges, known values on constructed models, RNG and mode hygiene."""
import pytest
import torch

from fga.evaluate.recall import rank_metrics
from fga.models.grm import GRM
from fga.models.grm.diagnostics import grm_diagnostics

from model_inputs import D_IMG, VOCAB, make_batch

torch.set_num_threads(1)

TINY = dict(embed_dim=16, word_dim=8, num_prompts=3)
CAPS = 2  # captions per image
RECALLS = {f"grm/{lv}_{d}_R1_{mode}" for lv in ("ori", "key", "unc") for d in ("i2t", "t2i") for mode in ("eval", "train")}
STRUCTURE = {"grm/prompt_entropy", "grm/usage_entropy", "grm/region_cos", "grm/region_to_mean_cos", "grm/keep_visual",
             "grm/keep_text", "grm/sigma_mean", "grm/sigma_std", "grm/noise_to_signal"}


def build(**kw):
    torch.manual_seed(0)
    return GRM(D_IMG, VOCAB, **{**TINY, **kw})


def inputs(n_images: int = 6, seed: int = 0):
    """n_images images with padding, and CAPS captions each (caption j -> image j // CAPS)."""
    regions, mask, _, _ = make_batch(b=n_images, seed=seed)
    _, _, tokens, lengths = make_batch(b=n_images * CAPS, seed=seed + 1)
    return regions, mask, tokens, lengths


def diagnose(model, **kw):
    return grm_diagnostics(model, *inputs(), caps_per_image=CAPS, **kw)


def test_names_and_ranges():
    out = diagnose(build())
    assert set(out) == STRUCTURE | RECALLS
    assert all(isinstance(v, float) for v in out.values())
    for name in ("grm/prompt_entropy", "grm/usage_entropy", "grm/keep_visual", "grm/keep_text"):
        assert 0.0 <= out[name] <= 1.0, name
    for name in ("grm/region_cos", "grm/region_to_mean_cos"):
        assert -1.0 <= out[name] <= 1.0 + 1e-6, name
    assert out["grm/sigma_mean"] > 0 and out["grm/sigma_std"] >= 0 and out["grm/noise_to_signal"] > 0
    assert all(0.0 <= out[name] <= 100.0 for name in RECALLS)


def test_uniform_prompts_give_entropy_one_and_identical_regions():
    model = build()
    with torch.no_grad():
        model.rp.prompts.zero_()  # P_hat = 0: A_r = sigmoid(0) = 0.5 on every valid patch
    out = diagnose(model)
    assert out["grm/prompt_entropy"] == pytest.approx(1.0, abs=1e-5)
    assert out["grm/usage_entropy"] == pytest.approx(1.0, abs=1e-5)
    assert out["grm/region_cos"] == pytest.approx(1.0, abs=1e-5)
    assert out["grm/region_to_mean_cos"] == pytest.approx(1.0, abs=1e-5)


def test_peaked_distinct_prompts_are_seen_as_such():
    """Features on three orthogonal axes, one prompt per axis, a sharp sigmoid: peaked, distinct regions."""
    model = build(use_saliency=False, prompt_logit_scale=50.0)
    with torch.no_grad():
        model.img_proj.weight.zero_()
        model.img_proj.bias.zero_()
        model.img_proj.weight[:3, :3] = torch.eye(3)
        model.rp.prompts.copy_(torch.eye(3, 16))
    regions = torch.zeros(4, 3, D_IMG)
    regions[:, :, :3] = 2 * torch.eye(3) - 1  # patch l: +1 on axis l, -1 on the others (sigmoid ~1 vs ~0)
    out = grm_diagnostics(model, regions, torch.ones(4, 3, dtype=torch.bool), *make_batch(b=8)[2:], caps_per_image=CAPS)
    assert out["grm/prompt_entropy"] < 0.01
    assert out["grm/region_cos"] == pytest.approx(-1 / 3, abs=1e-3)  # region k = patch k
    assert out["grm/usage_entropy"] == pytest.approx(1.0, abs=1e-5)
    assert "grm/keep_visual" not in out and "grm/keep_text" not in out  # no adapters


def test_recalls_match_each_level_and_noise_only_moves_noisy_levels():
    model = build()
    out = diagnose(model)
    regions, mask, tokens, lengths = inputs()
    model.eval()
    with torch.no_grad():
        sims = model.level_similarities(model.encode_image(regions, mask), model.encode_text(tokens, lengths))
    for level, sim in sims.items():
        metrics = rank_metrics(sim.numpy(), CAPS)
        assert out[f"grm/{level}_i2t_R1_eval"] == metrics["i2t"]["R@1"], level
        assert out[f"grm/{level}_t2i_R1_eval"] == metrics["t2i"]["R@1"], level
    # ori uses neither Gumbel nor uncertainty noise, so train mode gives the same scores
    assert out["grm/ori_i2t_R1_train"] == out["grm/ori_i2t_R1_eval"]
    assert out["grm/ori_t2i_R1_train"] == out["grm/ori_t2i_R1_eval"]
    assert diagnose(model, seed=0) == out  # the train-mode noise is drawn from `seed`


def test_callers_rng_and_mode_are_left_alone():
    model = build().train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    diagnose(model)
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training
    model.eval()
    diagnose(model)
    assert not model.training


@pytest.mark.parametrize("pooling", ["none", "weighted"])
def test_keep_ratios_in_both_pooling_modes(pooling):
    model = build(saliency_pooling=pooling)
    out = diagnose(model)
    regions, mask, tokens, lengths = inputs()
    model.eval()
    with torch.no_grad():
        a_v = model.encode_image(regions, mask)["a_v"][mask]
        txt = model.encode_text(tokens, lengths)
    assert out["grm/keep_visual"] == pytest.approx(a_v.mean().item(), abs=1e-6)
    assert out["grm/keep_text"] == pytest.approx(txt["a_t"][txt["t_mask"]].mean().item(), abs=1e-6)


def test_modules_left_out_have_no_keys():
    out = diagnose(build(use_region_prompt=False, use_uncertainty=False, use_saliency=False))
    assert set(out) == RECALLS
    out = diagnose(build(use_region_prompt=False))  # token regions still have a sigma
    assert set(out) == RECALLS | {"grm/keep_visual", "grm/keep_text", "grm/sigma_mean", "grm/sigma_std",
                                  "grm/noise_to_signal"}


def test_max_images_takes_the_first_images_and_their_captions():
    model = build()
    regions, mask, tokens, lengths = inputs()
    head = grm_diagnostics(model, regions[:3], mask[:3], tokens[: 3 * CAPS], lengths[: 3 * CAPS], CAPS)
    assert grm_diagnostics(model, regions, mask, tokens, lengths, CAPS, max_images=3) == head
