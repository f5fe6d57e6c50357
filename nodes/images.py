"""PIL images to ComfyUI IMAGE tensors ([B, H, W, 3] floats in 0..1)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_image_tensor(*images: Image.Image) -> torch.Tensor:
    arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images]
    return torch.from_numpy(np.stack(arrays))
