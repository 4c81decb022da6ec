"""Transforms that bring any image to a classifier's image spec: channels, size, then normalization."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

from odin_pl.spec import ImageSpec


def normalize(x: Tensor, spec: ImageSpec) -> Tensor:
    """(x - mean[c]) / std[c] for [C, H, W] or [B, C, H, W] pixels in [0, 1]."""
    shape = (-1, 1, 1)
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(shape)
    std = torch.tensor(spec.std, dtype=x.dtype).view(shape)
    return (x - mean) / std


def pil_to_spec_mode(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """Convert grayscale, RGBA, palette, CMYK, 16-bit ... images to the spec's channel count (L or RGB)."""
    mode = "L" if spec.channels == 1 else "RGB"
    if image.mode == mode:
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if image.mode in ("I", "I;16", "I;16B", "F"):
        array = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((array / max(float(array.max()), 1.0) * 255).astype(np.uint8), mode="L")
    return image.convert(mode)


def pil_to_spec(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """The image in the spec's channel mode (:func:`pil_to_spec_mode`) and size (bilinear, antialiased resize)."""
    image = pil_to_spec_mode(image, spec)
    if image.size != (spec.size, spec.size):
        image = image.resize((spec.size, spec.size), Image.BILINEAR)
    return image


class ToSpec:
    """PIL image -> normalized tensor [C, size, size]: convert channels, resize (antialiased), normalize."""

    def __init__(self, spec: ImageSpec) -> None:
        self.spec = spec

    def __call__(self, image: Image.Image) -> Tensor:
        return normalize(TF.to_tensor(pil_to_spec(image, self.spec)), self.spec)

    def __repr__(self) -> str:
        return f"ToSpec(size={self.spec.size}, channels={self.spec.channels})"
