"""The packaged EfficientNet-Lite0 weights: strict key mapping, and the variant/normalisation a real photo picks."""
import functools

import numpy as np
import pytest
import torch

from fga.errors import UserError
from fga.features.visual import RegionExtractor, map_lite0_keys, packaged_lite0_state_dict

CAT_CLASSES = [281, 282, 283, 284, 285, 286, 287]  # ImageNet domestic and wild cats


@functools.lru_cache(maxsize=None)
def packaged_model(model_name: str):
    import timm

    model = timm.create_model(model_name, pretrained=False).eval()
    model.load_state_dict(map_lite0_keys(packaged_lite0_state_dict(), model.state_dict()), strict=True)
    return model


def cat_probability(model_name: str, mean, std) -> tuple[float, list[int]]:
    import timm
    from PIL import Image
    from skimage import data

    model = packaged_model(model_name)
    cfg = timm.data.resolve_data_config({"mean": mean, "std": std}, model=model)
    x = timm.data.create_transform(**cfg)(Image.fromarray(data.chelsea()))[None]
    with torch.no_grad():
        p = model(x).softmax(-1)[0]
    return float(p[CAT_CLASSES].sum()), p.topk(5).indices.tolist()


def test_packaged_weights_pick_tf_variant_with_timm_normalisation():
    """tf_efficientnet_lite0 with timm's own data config (0.5/0.5) is what the extractor uses: it must give
    a cat in the top 5 and the most cat probability of the four variant x normalisation pairings."""
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    half = ((0.5,) * 3, (0.5,) * 3)
    scores = {(name, norm): cat_probability(name, *stats)
              for name in ("efficientnet_lite0", "tf_efficientnet_lite0") for norm, stats in (("imagenet", imagenet), ("half", half))}
    chosen_p, chosen_top5 = scores[("tf_efficientnet_lite0", "half")]
    assert set(chosen_top5) & set(CAT_CLASSES)
    assert chosen_p == max(p for p, _ in scores.values())


def test_extractor_uses_timm_data_config():
    ext = RegionExtractor({"model": "tf_efficientnet_lite0", "weights": "packaged", "regions": "grid", "input_size": 256})
    assert ext.data_config["mean"] == (0.5, 0.5, 0.5) and ext.data_config["input_size"] == (3, 256, 256)
    assert ext.weights_source.startswith("packaged")


def test_mapping_refuses_shape_mismatch():
    src = packaged_lite0_state_dict()
    import timm

    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    first = next(iter(src))
    src[first] = torch.zeros(1)
    with pytest.raises(UserError, match=first):
        map_lite0_keys(src, target)


def test_lite0_names_map_explicitly_whatever_the_order():
    """Every packaged tensor gets its timm name by rule, not by position: a shuffled file maps the same."""
    import random

    import timm

    from fga.features.visual import lite0_timm_name

    src = packaged_lite0_state_dict()
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    mapped = map_lite0_keys(src, target)
    assert len(src) == len(mapped) == len(target) == 296 and set(mapped) == set(target)
    names = list(src)
    random.Random(0).shuffle(names)
    shuffled = map_lite0_keys({k: src[k] for k in names}, target)
    assert all(shuffled[k] is mapped[k] for k in target)
    assert lite0_timm_name("_blocks.0._bn1.weight") == "blocks.0.0.bn1.weight"  # depthwise-separable stage 0
    assert lite0_timm_name("_blocks.2._bn1.weight") == "blocks.1.1.bn2.weight"  # inverted residual, stage 1
    assert lite0_timm_name("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert lite0_timm_name("_bn1.running_var") == "bn2.running_var" and lite0_timm_name("_fc.bias") == "classifier.bias"
    for bad in ("_blocks.16._bn0.weight", "_blocks.0._expand_conv.weight", "stem.weight"):
        with pytest.raises(UserError, match="has no timm name"):
            lite0_timm_name(bad)
    with pytest.raises(UserError, match="gives 295 of timm's 296"):
        map_lite0_keys({k: v for k, v in src.items() if k != "_fc.bias"}, target)


def test_packaged_weights_refused_for_the_non_tf_variant():
    with pytest.raises(UserError, match=r"lite\.model: .*TF 'same' padding.*set model: tf_efficientnet_lite0") as exc:
        RegionExtractor({"model": "efficientnet_lite0", "weights": "packaged", "regions": "grid", "grid_size": 2},
                        name="lite")
    assert "\n" not in str(exc.value)


def test_timm_train_checkpoint_with_namespace_and_nested_state(tmp_path):
    """timm train.py saves {epoch, arch, state_dict, args: Namespace, state_dict_ema}: the weights load (with
    weights_only), while a pickled module or a file without tensors is a one-line error naming the path."""
    import argparse

    import timm

    from fga.features.visual import read_checkpoint

    torch.manual_seed(2)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    ema = {k: v + 1 for k, v in state.items()}
    ckpt = tmp_path / "timm_train.pth.tar"
    torch.save({"epoch": 3, "arch": "vit_tiny_patch16_224", "args": argparse.Namespace(lr=0.1, model="vit_tiny"),
                "state_dict": {f"module.{k}": v for k, v in state.items()}, "state_dict_ema": ema}, ckpt)
    ext = RegionExtractor({"model": "vit_tiny_patch16_224", "weights": "checkpoint", "checkpoint": str(ckpt),
                           "regions": "patches", "input_size": 64}, name="vit_ckpt")
    assert ext.weights_source == f"checkpoint:{ckpt}"
    assert torch.equal(ext.backbone.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"])  # not the EMA
    torch.save({"state_dict_ema": ema, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ema.pth")
    assert torch.equal(read_checkpoint(tmp_path / "ema.pth")["cls_token"], ema["cls_token"])

    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=0.1)}, tmp_path / "empty.pth")
    for name, match in [("module.pth", "refuses the pickled torch.nn.modules.linear.Linear"),
                        ("empty.pth", "holds no dict of tensors")]:
        with pytest.raises(UserError, match=match) as exc:
            read_checkpoint(tmp_path / name)
        msg = str(exc.value)
        assert msg.startswith(str(tmp_path / name)) and "torch.save(model.state_dict(), PATH)" in msg
        assert "\n" not in msg and "\x1b" not in msg


def test_roi_and_grid_regions_shapes():
    ext = RegionExtractor({"model": "tf_efficientnet_lite0", "weights": "random", "regions": "boxes", "input_size": 128})
    fmap = ext.feature_map(torch.randn(2, 3, 128, 128))
    assert fmap.shape[1] == ext.feature_dim == 112 + 320 and fmap.shape[-1] == 128 // 16
    tokens, boxes = ext.grid_regions(fmap, 4)
    assert tokens.shape == (2, 16, ext.feature_dim) and boxes.shape == (16, 4)
    assert np.allclose(boxes[0].numpy(), [0, 0, 0.25, 0.25])
    rois = ext.roi_regions(fmap, [torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]])])
    assert [r.shape[0] for r in rois] == [1, 2] and rois[0].shape[1] == ext.feature_dim


def test_missing_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="nope.pth"):
        RegionExtractor({"model": "tf_efficientnet_lite0", "weights": "checkpoint", "checkpoint": str(tmp_path / "nope.pth"),
                         "regions": "grid"})


def test_backbone_registry_families():
    from fga.features.visual import BACKBONES, backbone_info, grid_boxes, register_backbone

    paper = ["vit_base_patch16_224", "vit_base_patch16_384", "swin_base_patch4_window7_224", "swin_base_patch4_window12_384"]
    assert all(name in BACKBONES for name in paper + ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
    assert backbone_info("vit_base_patch16_224.augreg_in21k").family == "vit"  # a timm tag picks preprocessing only
    assert backbone_info("swin_small_patch4_window7_224").regions == ("patches",)  # known to timm, family by prefix
    assert backbone_info("tf_efficientnet_lite0").packaged and backbone_info("resnet18").family == "cnn"
    with pytest.raises(ValueError):
        register_backbone("x", "rnn")
    assert grid_boxes(2, 3)[-1].tolist() == [pytest.approx(2 / 3), 0.5, 1.0, 1.0]
