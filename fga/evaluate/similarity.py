"""The full image x caption similarity matrix, computed block by block through the model's batched kernel."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from fga.models.base import Encoded, RetrievalModel, slice_encoded


def _n(enc: Encoded) -> int:
    return next(iter(enc.values())).shape[0]


@torch.no_grad()
def similarity_matrix(model: RetrievalModel, img: Encoded, txt: Encoded, block_images: int = 128,
                      block_captions: int = 1280, quiet: bool = True) -> np.ndarray:
    """[n_img, n_cap] float32; blocks bound the memory of fine-grained kernels (B_i x B_t x R x L)."""
    model.eval()
    n_img, n_cap = _n(img), _n(txt)
    out = np.empty((n_img, n_cap), np.float32)
    bar = tqdm(total=n_img * n_cap, desc="similarity", unit="pair", unit_scale=True, disable=quiet)
    for i in range(0, n_img, block_images):
        img_block = slice_encoded(img, slice(i, i + block_images))
        for j in range(0, n_cap, block_captions):
            block = model.similarity(img_block, slice_encoded(txt, slice(j, j + block_captions)))
            out[i : i + block.shape[0], j : j + block.shape[1]] = block.float().cpu().numpy()
            bar.update(block.numel())
    bar.close()
    return out
