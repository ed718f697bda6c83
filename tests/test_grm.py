"""GRM: shapes, masks, batched-vs-reference similarity, gradients, determinism, ablations, overfitting."""
import inspect
from pathlib import Path

import pytest
import torch
import yaml

from fga.models.grm import FAITHFULNESS, GRM
from fga.models.grm.similarity import pair_token_similarity, token_similarity
from fga.models.registry import build_model

from model_inputs import D_IMG, VOCAB, encode, make_batch, one, overfit_recall_at_1

PARAMS = yaml.safe_load((Path(__file__).resolve().parent.parent / "params.yaml").read_text())

torch.set_num_threads(1)

TINY = dict(embed_dim=16, word_dim=8, num_prompts=3)


def build(**kw):
    torch.manual_seed(0)
    return GRM(D_IMG, VOCAB, **{**TINY, **kw})


def test_registry_and_shapes():
    model = build_model("grm", TINY, img_dim=D_IMG, vocab_size=VOCAB).eval()
    regions, mask, tokens, lengths = make_batch(b=4)
    _, _, tok2, len2 = make_batch(b=6, seed=1)
    with torch.no_grad():
        img = model.encode_image(regions, mask)
        txt = model.encode_text(tok2, len2)
        sim = model.similarity(img, txt)
    assert sim.shape == (4, 6)
    assert img["u"].shape == (4, 3, 1, 16)  # [B, K, S, d]
    for level in ("ori", "key", "unc"):
        assert model.level_similarity(img, txt, level).shape == (4, 6)


def test_padding_never_changes_scores():
    model = build().eval()
    regions, mask, tokens, lengths = make_batch(b=4)
    g = torch.Generator().manual_seed(5)
    junk_regions = torch.cat([regions, 100 * torch.randn(4, 3, D_IMG, generator=g)], dim=1)
    junk_regions[~torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], 1)] = 50.0  # junk in padded slots
    junk_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    junk_tokens = torch.cat([tokens, torch.randint(1, VOCAB, (4, 4), generator=g)], dim=1)
    junk_tokens[:, : tokens.shape[1]][tokens == 0] = 7  # junk ids after each caption's end
    with torch.no_grad():
        base = model.similarity(model.encode_image(regions, mask), model.encode_text(tokens, lengths))
        img = model.encode_image(junk_regions, junk_mask)
        txt = model.encode_text(junk_tokens, lengths)
        padded = model.similarity(img, txt)
    assert torch.allclose(base, padded, atol=1e-6)


@pytest.mark.parametrize("opts", [
    {},
    {"sim_combine": "sum", "saliency_pooling": "none"},
    {"sim_combine": "t2i", "gumbel_hard": True, "saliency_eval": "hard"},
    {"sim_combine": "i2t", "n_samples": 2, "eval_mode": "sample"},
    {"use_region_prompt": False},
    {"use_region_prompt": False, "no_rp_regions": "mean"},
])
@pytest.mark.parametrize("train", [False, True])
def test_batched_matches_pair_reference(opts, train):
    model = build(**opts).train(train)
    torch.manual_seed(3)
    with torch.no_grad():
        img, txt = encode(model, make_batch(b=4, seed=2))
        sims = {lv: model.level_similarity(img, txt, lv) for lv in ("ori", "key", "unc")}
        total = model.similarity(img, txt)
        for i in range(4):
            for j in range(4):
                for lv in sims:
                    ref = model.pair_similarity(one(img, i), one(txt, j), lv)
                    assert sims[lv][i, j].item() == pytest.approx(ref, abs=1e-5), (lv, i, j)
                assert total[i, j].item() == pytest.approx(model.pair_similarity(one(img, i), one(txt, j)), abs=1e-5)


def test_chunking_is_exact():
    model = build().eval()
    with torch.no_grad():
        img, txt = encode(model, make_batch(b=5, seed=4))
        full = model.similarity(img, txt)
        model.sim_chunk_elems = 7  # forces one pair per block
        assert torch.allclose(full, model.similarity(img, txt), atol=1e-6)


def test_token_similarity_generic_reference():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 5, 4, generator=g), torch.randn(2, 4, 4, generator=g)
    xm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    ym = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    wx, wy = torch.rand(3, 5, generator=g), torch.rand(2, 4, generator=g)
    for combine in ("mean", "sum", "t2i", "i2t"):
        s = token_similarity(x, xm, y, ym, combine, wx, wy, chunk_elems=10)
        for i in range(3):
            for j in range(2):
                ref = pair_token_similarity(x[i][xm[i]], y[j][ym[j]], combine, wx[i][xm[i]], wy[j][ym[j]])
                assert s[i, j].item() == pytest.approx(ref, abs=1e-6)


def test_gradient_reaches_every_parameter():
    model = build(adapter_activation="relu").train()
    batch = make_batch(b=6, seed=1)
    img, txt = encode(model, batch)
    loss, logs = model.training_loss(img, txt, torch.eye(6, dtype=torch.bool), epoch=0)
    loss.backward()
    assert set(logs) == {"ori", "key", "unc", "recon", "kl", "ent", "total"}
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_gumbel_determinism():
    model = build()
    batch = make_batch(b=4, seed=3)
    model.eval()
    with torch.no_grad():
        e1, e2 = encode(model, batch), encode(model, batch)
    for k in e1[0]:
        assert torch.equal(e1[0][k], e2[0][k]), k
    assert torch.equal(e1[1]["a_t"], e2[1]["a_t"])
    model.train()

    def train_pass(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            img, txt = encode(model, batch)
        return img["a_v"], txt["a_t"], img["u"]

    a, b, c = train_pass(1), train_pass(1), train_pass(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(not torch.equal(x, y) for x, y in zip(a, c))


def test_saliency_eval_hard_is_binary():
    model = build(saliency_eval="hard").eval()
    with torch.no_grad():
        img, txt = encode(model, make_batch(b=4))
    assert set(img["a_v"].unique().tolist()) <= {0.0, 1.0}
    assert set(txt["a_t"].unique().tolist()) <= {0.0, 1.0}


def test_ablation_use_saliency():
    batch = make_batch(b=4)
    for kw, vis_off, txt_off in (({"use_saliency": False}, True, True),
                                 ({"use_visual_adapter": False}, True, False),
                                 ({"use_text_adapter": False}, False, True)):
        model = build(**kw).train()
        img, txt = encode(model, batch)
        assert torch.equal(img["v_hat"], img["v"]) == vis_off
        assert torch.equal(txt["t_hat"], txt["t"]) == txt_off
    model = build(use_saliency=False).eval()
    with torch.no_grad():
        img, txt = encode(model, batch)
        assert torch.allclose(model.level_similarity(img, txt, "key"), model.level_similarity(img, txt, "ori"))


def test_literal_saliency_pooling_makes_key_equal_ori():
    """Documents the degeneracy behind `saliency_pooling`: soft masks only rescale tokens, cosine ignores that."""
    batch = make_batch(b=4)
    for pooling, equal in (("none", True), ("weighted", False)):
        model = build(saliency_pooling=pooling).eval()
        with torch.no_grad():
            img, txt = encode(model, batch)
            same = torch.allclose(model.level_similarity(img, txt, "key"), model.level_similarity(img, txt, "ori"),
                                  atol=1e-6)
        assert same == equal


def test_ablation_use_uncertainty():
    batch = make_batch(b=4)
    model = build(use_uncertainty=False).train()
    img, txt = encode(model, batch)
    assert torch.equal(img["u"][:, :, 0], img["mu"])
    _, logs = model.training_loss(img, txt, torch.eye(4, dtype=torch.bool), 0)
    assert logs["kl"] == 0.0
    full = build().train()
    img, txt = encode(full, batch)
    assert not torch.allclose(img["u"][:, :, 0], img["mu"])  # sampled in training
    _, logs = full.training_loss(img, txt, torch.eye(4, dtype=torch.bool), 0)
    assert logs["kl"] > 0
    full.eval()
    with torch.no_grad():
        img, _ = encode(full, batch)
    mu, _, _ = full.rp(img["v_hat"], img["mask"])
    assert torch.allclose(img["u"][:, :, 0], mu)  # eval_mode "mean": u = mu


def test_ablation_use_region_prompt():
    batch = make_batch(b=4)
    model = build(use_region_prompt=False).eval()
    with torch.no_grad():
        img, _ = encode(model, batch)
    assert torch.equal(img["u_mask"], img["mask"])
    assert torch.equal(img["u"][:, :, 0], img["v_hat"])  # every key token is its own region
    mean = build(use_region_prompt=False, no_rp_regions="mean").eval()
    with torch.no_grad():
        img, _ = encode(mean, batch)
    m = img["mask"].float().unsqueeze(-1)
    assert img["u"].shape[1] == 1
    assert torch.allclose(img["u"][:, 0, 0], (img["v_hat"] * m).sum(1) / m.sum(1), atol=1e-6)
    assert not any("rp." in n for n, _ in model.named_parameters())


def test_ablation_use_reg_and_level_weights():
    batch = make_batch(b=4)
    pos = torch.eye(4, dtype=torch.bool)
    model = build(use_reg=False).train()
    torch.manual_seed(0)
    img, txt = encode(model, batch)
    loss, logs = model.training_loss(img, txt, pos, 1)
    assert logs["kl"] == 0.0 and logs["ent"] == 0.0
    expected = 0.4 * logs["ori"] + 0.4 * logs["key"] + 0.2 * logs["unc"] + 1.0 * logs["recon"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    only_key = build(level_weights=[0, 1, 0], lambda_recon=0.0, use_reg=False).train()
    img, txt = encode(only_key, batch)
    loss, logs = only_key.training_loss(img, txt, pos, 1)
    assert logs["ori"] == logs["unc"] == logs["recon"] == 0.0
    assert loss.item() == pytest.approx(logs["key"], rel=1e-6)


def test_test_similarity_option():
    batch = make_batch(b=4)
    model = build(test_similarity="key").eval()
    with torch.no_grad():
        img, txt = encode(model, batch)
        assert torch.equal(model.similarity(img, txt), model.level_similarity(img, txt, "key"))


def test_warmup_switches_to_hardest_negative():
    model = build().train()
    batch = make_batch(b=6)
    torch.manual_seed(0)
    img, txt = encode(model, batch)
    pos = torch.eye(6, dtype=torch.bool)
    summed, _ = model.training_loss(img, txt, pos, epoch=0)
    hardest, _ = model.training_loss(img, txt, pos, epoch=1)
    assert summed.item() > hardest.item()


def test_faithfulness_table_matches_signature():
    params = inspect.signature(GRM.__init__).parameters
    names = {n for n in params if n not in ("self", "img_dim", "vocab_size", "_")}
    covered = set()
    for row in FAITHFULNESS:
        assert set(row) == {"option", "default", "paper", "why"} and all(row.values())
        if "(not an option)" in row["option"]:
            continue
        opts = [o.strip() for o in row["option"].split(" / ")]
        defaults = [d.strip() for d in row["default"].split(" / ")]
        assert len(opts) == len(defaults), row
        for opt, default in zip(opts, defaults):
            if "." in opt:  # a pipeline parameter: its value in params.yaml is the stated default
                node = PARAMS
                for key in opt.split("."):
                    node = node[key]
                assert node == yaml.safe_load(default), (opt, node, default)
                continue
            assert opt in params, opt
            actual = params[opt].default
            if opt == "adapter_hidden":
                assert actual is None and default == "embed_dim // 2"
            elif opt == "level_weights":
                assert tuple(actual) == (0.4, 0.4, 0.2) and default == "(0.4, 0.4, 0.2)"
            else:
                assert str(actual) == default, (opt, actual, default)
            covered.add(opt)
    internal = {"word_dim", "sim_chunk_elems", "text_encoder"}  # pipeline plumbing (text_encoder: train.text_encoder)
    assert names - covered - internal == set()


@pytest.mark.parametrize("opts", [{}, {"use_region_prompt": False, "use_uncertainty": False}])
def test_overfits_32_pairs(opts):
    torch.manual_seed(0)
    r1 = overfit_recall_at_1(GRM(D_IMG, VOCAB, embed_dim=32, word_dim=16, num_prompts=4, **opts))
    assert min(r1) >= 0.9, r1


@pytest.mark.parametrize("opts", [{}, {"use_region_prompt": False, "no_rp_regions": "mean"},
                                  {"use_region_prompt": False}])
def test_closed_form_sampling_variance(opts):
    """u_k - mu_k has variance sigma_k^2 * sum_l A_hat_lk^2: the per-patch draw aggregated by A_hat."""
    model = build(n_samples=4000, **opts).train()
    regions, mask, tokens, lengths = make_batch(b=2, seed=3)
    torch.manual_seed(0)
    with torch.no_grad():
        img = model.encode_image(regions, mask)
        mu, logvar = img["mu"], img["logvar"]
        if model.rp is not None:
            _, _, attn_hat = model.rp(img["v_hat"], img["mask"])
        elif opts.get("no_rp_regions") == "mean":
            attn_hat = (mask.float() / mask.float().sum(1, keepdim=True)).unsqueeze(-1)
        else:
            attn_hat = torch.diag_embed(mask.float())
        expected = logvar.exp() * attn_hat.pow(2).sum(1).unsqueeze(-1)  # [B, K, d]
        emp = (img["u"] - mu.unsqueeze(2)).pow(2).mean(2)
    valid = img["u_mask"]
    ratio = (emp / expected)[valid]
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.03)
    assert (ratio - 1).abs().max().item() < 0.25


def test_new_regularisers_enter_the_loss_with_their_weights():
    batch = make_batch(b=5, seed=2)
    pos = torch.eye(5, dtype=torch.bool)
    model = build(ent_form="mi", lambda_div=0.5).train()
    torch.manual_seed(0)
    img, txt = encode(model, batch)
    loss, logs = model.training_loss(img, txt, pos, 1)
    assert set(logs) == {"ori", "key", "unc", "recon", "kl", "ent", "div", "total"}
    assert logs["div"] > 0 and 0 <= logs["ent"] <= 5  # 5 images, each in [0, 1]
    expected = (0.4 * logs["ori"] + 0.4 * logs["key"] + 0.2 * logs["unc"] + logs["recon"] + 0.01 * logs["kl"]
                + 0.1 * logs["ent"] + 0.5 * logs["div"])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the diversity term is the mean off-diagonal cosine of each image's region means
    unit = torch.nn.functional.normalize(img["mu"], dim=-1)
    k = unit.shape[1]
    cos = (unit @ unit.transpose(1, 2)).sum((1, 2)) - k
    assert logs["div"] == pytest.approx((cos / (k * (k - 1))).sum().item(), rel=1e-5)
    assert build(lambda_div=0.5, use_reg=False).lambda_div == 0.0  # part of L_reg
    no_rp = build(lambda_div=0.5, use_region_prompt=False).train()
    _, logs = no_rp.training_loss(*encode(no_rp, batch), pos, 1)
    assert logs["div"] == 0.0  # token regions are not prompt regions
    with pytest.raises(ValueError):
        build(ent_form="nope")


def test_kl_reduction_sum_is_k_times_d_the_mean():
    batch = make_batch(b=4, seed=1)
    pos = torch.eye(4, dtype=torch.bool)
    kls = {}
    for reduction in ("mean", "sum"):
        model = build(kl_reduction=reduction).train()
        torch.manual_seed(0)
        _, logs = model.training_loss(*encode(model, batch), pos, 1)
        kls[reduction] = logs["kl"]
    assert kls["sum"] == pytest.approx(3 * 16 * kls["mean"], rel=1e-5)  # K = 3, d = 16
    with pytest.raises(ValueError):
        build(kl_reduction="max")


def test_sigma_max_bounds_sigma():
    model = build(sigma_max=0.25).train()
    with torch.no_grad():
        model.um.phi.weight.mul_(100)  # a variance head pushed far up still stays under the bound
        model.um.phi.bias.fill_(50)
    img = model.encode_image(*make_batch(b=4)[:2])
    sigma = (0.5 * img["logvar"]).exp()
    assert sigma.max().item() <= 0.25 + 1e-6 and sigma.min().item() > 0
    img["logvar"].sum().backward()
    assert model.um.phi.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        build(sigma_max=0.0)


@pytest.mark.parametrize("sigma_max", [None, 0.5])
def test_logvar_init_starts_every_region_there(sigma_max):
    model = build(logvar_init=-4.0, sigma_max=sigma_max, var_head="mlp").train()
    img = model.encode_image(*make_batch(b=4)[:2])
    assert torch.allclose(img["logvar"], torch.full_like(img["logvar"], -4.0), atol=1e-5)
    model.training_loss(img, model.encode_text(*make_batch(b=4)[2:]), torch.eye(4, dtype=torch.bool), 1)[0].backward()
    assert model.um.phi[-1].weight.grad.abs().sum() > 0  # it can move away from the start
    with pytest.raises(ValueError):
        build(logvar_init=0.0, sigma_max=0.5)  # sigma 1 is above the bound


def test_default_options_are_the_measured_choices():
    """The defaults are ent_form 'mi' and sigma_max 0.25 (docs/methods.md#faithfulness), the other options off:
    the same parameters and loss as those values stated explicitly, and another loss than the previous defaults."""
    batch = make_batch(b=4, seed=3)
    explicit = build(kl_reduction="mean", sigma_max=0.25, logvar_init=None, lambda_div=0.0, ent_form="mi")
    default = build()
    previous = build(sigma_max=None, ent_form="usage")
    assert all(torch.equal(a, b) for a, b in zip(explicit.state_dict().values(), default.state_dict().values()))
    losses = []
    for model in (explicit, default, previous):
        torch.manual_seed(0)
        loss, logs = model.train().training_loss(*encode(model, batch), torch.eye(4, dtype=torch.bool), 1)
        losses.append(loss.item())
        assert "div" not in logs
    assert losses[0] == losses[1] != losses[2]


def test_gradient_reaches_every_parameter_with_new_options():
    model = build(ent_form="mi", lambda_div=0.1, kl_reduction="sum", sigma_max=0.5, logvar_init=-2.0).train()
    loss, _ = model.training_loss(*encode(model, make_batch(b=6, seed=1)), torch.eye(6, dtype=torch.bool), epoch=0)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
