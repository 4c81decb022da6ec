"""Images brought to a classifier's image spec: channels, size, then normalization (the evaluation's preprocessing)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

from odin_pl.errors import UserError
from odin_pl.spec import ImageSpec


def normalize(x: Tensor, spec: ImageSpec) -> Tensor:
    """(x - mean[c]) / std[c] for [C, H, W] or [B, C, H, W] pixels in [0, 1]."""
    shape = (-1, 1, 1)
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(shape)
    std = torch.tensor(spec.std, dtype=x.dtype).view(shape)
    return (x - mean) / std


#: 16-bit sample -> 8-bit value: v / 257 maps 0..65535 onto 0..255 exactly (65535 / 257 = 255), as a viewer shows it.
SIXTEEN_BIT_SCALE = 257.0
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def standard_mode(image: Image.Image) -> Image.Image:
    """The image as 8-bit ``L`` (one channel) or ``RGB``, by one rule per PIL mode (pixels rounded to nearest):

    * ``L``, ``RGB``: as they are; ``1`` (bilevel): 0 or 255.
    * ``I;16*`` (16-bit PNG and TIFF) and ``I`` (Pillow's mode for some 16-bit files): v / 257, so 65535 is 255
      (not v / max: the picture a viewer shows). ``I`` outside 0..65535 is refused (no 8-bit rule).
    * ``F`` (floating-point TIFF): intensities in [0, 1], 255 v; a value outside [0, 1] or not finite is refused.
    * ``CMYK``: R = (255 - C)(255 - K) / 255, likewise G (M) and B (Y); an embedded ICC profile is not applied.
    * ``P`` (palette): the palette's colours (``L`` for a grayscale palette is not assumed: ``RGB``).
    * with transparency (``RGBA``, ``LA``, ``PA``, and ``P``, ``L`` or ``RGB`` with a transparent colour): each
      channel c composited over black, c a / 255.
    * any other mode (``YCbCr``, ``LAB``, ``HSV``, ``RGBX`` ...): Pillow's conversion to ``RGB``.
    """
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" not in image.info:
        return image
    if mode == "1":
        return image.convert("L")
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UserError(f"a 32-bit integer image with values in [{values.min():g}, {values.max():g}] has no "
                            "8-bit rule (16-bit samples 0..65535 are read as v / 257): convert it to 8 or 16 bits")
        return Image.fromarray(np.rint(values / SIXTEEN_BIT_SCALE).astype(np.uint8), mode="L")
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        if not (np.isfinite(values).all() and values.min(initial=0) >= 0 and values.max(initial=0) <= 1):
            raise UserError(f"a floating-point image must hold finite intensities in [0, 1]; this one has values "
                            f"in [{np.nanmin(values):g}, {np.nanmax(values):g}] (or NaN): scale it to [0, 1]")
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), mode="L")
    if mode == "CMYK":
        cmyk = np.asarray(image).astype(np.float64)
        rgb = (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255
        return Image.fromarray(np.rint(rgb).astype(np.uint8), mode="RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
        gray = mode in ("LA", "La", "L")
        composited = np.rint(rgba[..., :3] * rgba[..., 3:] / 255).astype(np.uint8)
        return Image.fromarray(composited[..., 0] if gray else composited, mode="L" if gray else "RGB")
    return image.convert("RGB")


def pil_to_spec_mode(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """The image in the spec's channel mode: :func:`standard_mode`, then ``L`` -> ``RGB`` by copying the channel,
    ``RGB`` -> ``L`` by Pillow's ITU-R 601-2 luma (L = 299/1000 R + 587/1000 G + 114/1000 B)."""
    image = standard_mode(image)
    mode = "L" if spec.channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


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


def transforms(spec: ImageSpec) -> ToSpec:
    """The evaluation's preprocessing of ``spec`` (PIL image -> normalized tensor [C, size, size]), which every
    evaluated image, OOD set and image folder goes through: use it on images for a detector."""
    return ToSpec(spec)
