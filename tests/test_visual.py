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
