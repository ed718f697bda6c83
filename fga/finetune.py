"""Fine-tune mode: images and captions in, the timm backbone trained inside the training graph.

This module supplies a *region source* for `fga.train`'s one loop: an object that turns a
batch of image indices into regions [b, R, D] + mask [b, R], exactly like the frozen store
(`fga.train.StoreRegions`) does, but by running the backbone with gradients:

- `FinetuneBackbone` is the backbone of `fga.features.visual.RegionExtractor` (same timm model,
  same weights loader, same stride-16 + upsampled stride-32 feature map) whose pooling matches
  `RegionExtractor.grid_regions` (adaptive average pool to grid x grid tokens) and
  `RegionExtractor.roi_regions` (ROI-Align, 2x2 bins averaged, on the instance boxes) or
  `RegionExtractor.patch_tokens` (ViT/Swin: CLS first where there is one, then the patch tokens),
  without their `no_grad` (tests/test_train.py checks that eval-mode outputs equal the extractor's).
- `ImageSplit` reads one split's images (and instance boxes), and augments them for training the
  way LAPS/AVSE do (docs/grm.md §2): RandomResizedCrop(input size, scale `train.crop_scale`, bicubic)
  + horizontal flip, boxes transformed with the image (torchvision.transforms.v2); evaluation
  images are plainly resized to input size x input size. Each augmentation is drawn from its
  own seed (given by the training loop per caption slot, from (seed, epoch, step)), so batches
  are identical whatever the number of DDP ranks or loader workers, and a resumed run replays them.
- `BackboneRegions` = backbone + split: `load` (CPU, may run in DataLoader workers) and
  `forward` (on the device, with gradients).
- `finetuned_regions` / `finetuned_inputs`: the regions of a split (or of any images) through a
  finetune checkpoint's backbone, unaugmented and in eval mode (what `fga evaluate` scores).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fga.errors import UserError
from fga.inputs import SplitInputs, caption_inputs, paths

FULL_IMAGE = torch.tensor([[0.0, 0.0, 1.0, 1.0]])


class FinetuneBackbone(nn.Module):
    """The feature extractor's timm backbone, trainable, plus the store's pooling of regions."""

    def __init__(self, spec: dict[str, Any], name: str | None = None):
        super().__init__()
        from fga.features.visual import RegionExtractor

        if spec.get("regions") not in ("grid", "boxes", "patches"):
            raise UserError(f"features.backbones.{name or '<name>'}.regions: {spec.get('regions')!r} cannot be "
                            "fine-tuned; use grid, boxes or patches")
        extractor = RegionExtractor(spec, name=name)  # validates the spec, builds the model, loads its weights
        self.backbone = extractor.backbone
        self.weights_source = extractor.weights_source
        self.feature_dim = int(extractor.feature_dim)
        self.data_config = dict(extractor.data_config)
        self.regions = spec["regions"]
        self.grid = int(spec.get("grid_size", 7))
        self.n_regions = int(getattr(extractor, "n_regions", 0)) or (
            self.grid ** 2 if self.regions == "grid" else int(spec.get("max_regions", 36)))
        self.num_prefix_tokens = int(getattr(extractor, "num_prefix_tokens", 0))
        self.cls_index = int(getattr(extractor, "cls_index", -1))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """CNN: stride-16 map and the upsampled stride-32 map, concatenated (as RegionExtractor.feature_map)."""
        fine, coarse = self.backbone(images.contiguous(memory_format=torch.channels_last))
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], dim=1)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """ViT / Swin: CLS (if any) then the patch tokens row-major (as RegionExtractor.patch_tokens)."""
        out = self.backbone.forward_features(images)
        if out.ndim == 4:  # Swin: NHWC; other token-less models: NCHW
            if out.shape[-1] != self.feature_dim:
                out = out.permute(0, 2, 3, 1)
            return out.flatten(1, 2)
        tokens = out[:, self.num_prefix_tokens:]
        return torch.cat([out[:, :1], tokens], dim=1) if self.cls_index == 0 else tokens

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images [b, 3, H, W] -> regions [b, R, D] (float), mask [b, R] bool."""
        if self.regions == "patches":
            tokens = self.patch_tokens(images)
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        fmap = self.feature_map(images)
        b = fmap.shape[0]
        if self.regions == "grid":
            pooled = F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)
            return pooled, torch.ones(pooled.shape[:2], dtype=torch.bool, device=fmap.device)
        from torchvision.ops import roi_align

        assert boxes is not None, "boxes mode needs the instance boxes of every image"
        h, w = fmap.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=fmap.dtype, device=fmap.device)
        rois = [bx.to(fmap.device, fmap.dtype) * scale for bx in boxes]
        pooled = roi_align(fmap, rois, output_size=2, spatial_scale=1.0, sampling_ratio=2, aligned=True).mean(dim=(2, 3))
        counts = [len(bx) for bx in boxes]
        regions = pooled.new_zeros(b, self.n_regions, pooled.shape[-1])
        mask = torch.zeros(b, self.n_regions, dtype=torch.bool, device=fmap.device)
        for i, feats in enumerate(pooled.split(counts)):
            regions[i, : len(feats)] = feats
            mask[i, : len(feats)] = True
        return regions, mask


class ImageSplit:
    """One split's images (+ region boxes, normalised x1y1x2y2), loaded and transformed on the CPU.

    `box_spec`: the backbone's params section when it pools boxes (instances.json or its `boxes_file`), else None.
    """

    def __init__(self, data_dir: Path, images: list[dict[str, Any]], data_config: dict[str, Any], *,
                 box_spec: dict[str, Any] | None, max_boxes: int, crop_scale: tuple[float, float] = (0.6, 1.0)):
        from fga.features.visual import ImageBoxes, box_source

        self.data_dir = Path(data_dir)
        self.images = images
        self.size = int(data_config["input_size"][-1])
        self.mean, self.std = list(data_config["mean"]), list(data_config["std"])
        self.crop_scale = tuple(float(s) for s in crop_scale)
        self.boxes: list[torch.Tensor] | None = None
        if box_spec is not None:
            reader = ImageBoxes(self.data_dir, images, box_source(box_spec, self.data_dir)[0], None, max_boxes)
            self.boxes = [torch.from_numpy(reader.boxes(im)) for im in images]

    def __len__(self) -> int:
        return len(self.images)

    def _read(self, i: int):
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        path = self.data_dir / "images" / self.images[i]["file_name"]
        try:
            with Image.open(path) as pil:
                return TF.pil_to_tensor(pil.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"{path}: unreadable image ({exc.__class__.__name__}); re-run `fga data prepare`") from None

    def load_one(self, i: int, aug_seed: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image i as a normalised float tensor [3, S, S] (+ its boxes), augmented when aug_seed is given."""
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        image = tv_tensors.Image(self._read(i))
        h, w = image.shape[-2:]
        boxes = None
        if self.boxes is not None:
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            boxes = tv_tensors.BoundingBoxes(self.boxes[i] * scale, format="XYXY", canvas_size=(h, w))
        bicubic = v2.InterpolationMode.BICUBIC
        if aug_seed is None:
            geometry = v2.Resize((self.size, self.size), interpolation=bicubic, antialias=True)
        else:
            geometry = v2.Compose([
                v2.RandomResizedCrop((self.size, self.size), scale=self.crop_scale, interpolation=bicubic, antialias=True),
                v2.RandomHorizontalFlip(0.5),
            ])
        finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])
        with torch.random.fork_rng(devices=[]):  # the transforms draw from the global RNG: give them their own seed
            if aug_seed is not None:
                torch.manual_seed(int(aug_seed))
            if boxes is None:
                return finish(geometry(image)), None
            image, boxes = geometry(image, boxes)
        out = boxes.as_subclass(torch.Tensor).float() / self.size
        keep = ((out[:, 2] - out[:, 0]) * self.size >= 1) & ((out[:, 3] - out[:, 1]) * self.size >= 1)
        out = out[keep] if keep.any() else FULL_IMAGE.clone()  # every box cropped away: the whole view
        return finish(image), out

    def load(self, idx: torch.Tensor, aug_seeds: torch.Tensor | None) -> dict[str, Any]:
        items = [self.load_one(int(i), None if aug_seeds is None else int(aug_seeds[k])) for k, i in enumerate(idx)]
        return {"images": torch.stack([im for im, _ in items]),
                "boxes": None if self.boxes is None else [b for _, b in items]}


class BackboneRegions(nn.Module):
    """Region source of the finetune mode: a split's images through the (shared) trainable backbone."""

    augments = True

    def __init__(self, backbone: FinetuneBackbone, split: ImageSplit):
        super().__init__()
        self.backbone = backbone
        self.split = split

    @property
    def n_regions(self) -> int:
        return self.backbone.n_regions

    @property
    def loader(self) -> ImageSplit:
        """The CPU side alone (what DataLoader workers get)."""
        return self.split

    def load(self, img_idx: torch.Tensor, aug_seeds: torch.Tensor | None) -> dict[str, Any]:
        return self.split.load(img_idx, aug_seeds)

    def forward(self, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone(batch["images"].to(device, non_blocking=True), batch["boxes"])

    @torch.no_grad()
    def all_regions(self, device: torch.device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image of the split, unaugmented, in eval mode -> regions [N, R, D] float16 (CPU), mask [N, R]."""
        was_training = self.training
        self.eval()
        regions, masks = [], []
        for start in range(0, len(self.split), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(self.split)))
            r, m = self(self.load(idx, None), device)
            regions.append(r.float().cpu().half())
            masks.append(m.cpu())
        self.train(was_training)
        return torch.cat(regions), torch.cat(masks)


def finetune_sources(cfg: dict[str, Any], dataset: str, backbone: str,
                     splits: tuple[str, ...] = ("train", "val")) -> tuple[FinetuneBackbone, dict[str, BackboneRegions]]:
    """The trainable backbone of `features.backbones.<backbone>` and one region source per split."""
    from fga.data import split_images
    from fga.io import read_json

    if backbone not in cfg["features"]["backbones"]:
        raise UserError(f"params.yaml: backbone {backbone!r} not under features.backbones; "
                        f"known: {', '.join(cfg['features']['backbones'])}")
    spec = cfg["features"]["backbones"][backbone]
    data_dir = Path("data") / dataset
    ds = read_json(data_dir / "dataset.json", "dataset.json")
    net = FinetuneBackbone(spec, name=backbone)
    crop = tuple(cfg["train"].get("crop_scale", (0.6, 1.0)))
    sources = {split: BackboneRegions(net, ImageSplit(data_dir, split_images(ds, split), net.data_config,
                                                      box_spec=spec if net.regions == "boxes" else None,
                                                      max_boxes=net.n_regions,
                                                      crop_scale=crop))
               for split in splits}
    return net, sources


def finetuned_regions(cfg: dict[str, Any], backbone: str, region_state: dict[str, Any], data_dir: Path,
                      images: list[dict[str, Any]], device: torch.device,
                      batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Regions of `images` (dataset.json entries of `data_dir`) through a finetune checkpoint's backbone.

    What `fga evaluate` needs for a run of `train.mode: finetune`: the store holds the features of
    the *frozen* backbone, not of the fine-tuned one. `region_state` is the checkpoint's `region_source`.
    """
    if not region_state:
        raise UserError("train.mode = finetune but the checkpoint holds no backbone weights; re-run `fga train`")
    spec = cfg["features"]["backbones"][backbone]
    net = FinetuneBackbone(spec, name=backbone)
    source = BackboneRegions(net, ImageSplit(data_dir, images, net.data_config,
                                             box_spec=spec if net.regions == "boxes" else None, max_boxes=net.n_regions))
    source.load_state_dict(region_state)
    source.to(device)
    regions, mask = source.all_regions(device, batch_size)
    attrs = {"backbone": backbone, "weights_source": f"finetuned:{net.weights_source}", "mode": "finetune"}
    return regions, mask, attrs


def finetuned_inputs(cfg: dict[str, Any], dataset: str, backbone: str, split: str, state: dict[str, Any],
                     device: torch.device, batch_size: int = 64) -> SplitInputs:
    """A split's `SplitInputs` with regions from a finetune checkpoint's backbone (`state["region_source"]`)."""
    from fga.data import split_images
    from fga.io import read_json

    dataset_json = paths(dataset, backbone)["dataset_json"]
    images = split_images(read_json(dataset_json, "dataset.json"), split)
    regions, mask, attrs = finetuned_regions(cfg, backbone, state.get("region_source") or {}, dataset_json.parent,
                                             images, device, batch_size)
    return caption_inputs(cfg, dataset, backbone, split, regions, mask, attrs)
