"""Images in and out: load, save, resize, normalize and convert to PIL.

Tensors are float ``[C, H, W]`` (or batches ``[B, C, H, W]``) with pixels in [0, 1] until
`normalize`; maps are ``[H, W]``. Nothing here modifies its inputs.

>>> import torch
>>> to_pil(torch.zeros(3, 2, 5)).size  # PIL sizes are (width, height)
(5, 2)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ._checks import positive_pair
from ._errors import describe, fail

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_tensor",
    "denormalize",
    "from_pil",
    "load",
    "normalize",
    "resize",
    "save",
    "to_pil",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, for `normalize`."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet, for `normalize`."""

MODES = ("bilinear", "bicubic", "nearest")


def check_tensor(
    x: object, call: str, argument: str, ranks: tuple[int, ...], what: str, fix: str
) -> Tensor:
    """Check that `x` is a non-empty, finite, floating-point tensor whose rank is in `ranks`."""
    if not isinstance(x, Tensor):
        raise fail(call, argument, f"expected {what}, got {describe(x)}", "pass a torch.Tensor")
    if x.ndim not in ranks:
        raise fail(call, argument, f"expected {what}, got {describe(x)}", fix)
    if not x.dtype.is_floating_point:
        raise fail(
            call,
            argument,
            f"expected floating-point values, got {describe(x)}",
            "convert it, e.g. x.float() / 255 for uint8 pixels",
        )
    if x.numel() == 0:
        raise fail(call, argument, f"the tensor is empty: {describe(x)}", "pass a non-empty one")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise fail(
            call,
            argument,
            f"{bad} of {x.numel()} values are NaN or infinite in {describe(x)}",
            "fix the values first, e.g. torch.nan_to_num(x)",
        )
    return x


def resize(x: Tensor, size: int | tuple[int, int], *, mode: str = "bilinear") -> Tensor:
    """Resize the last two (spatial) dimensions of an image or a map.

    Accepts ``[C, H, W]``, ``[B, C, H, W]``, maps ``[H, W]`` and batches of maps ``[B, H, W]``;
    returns the same shape with ``H, W`` replaced by `size` (an int means a square), same dtype.
    `mode` is ``"bilinear"``, ``"bicubic"`` (both antialiased when shrinking) or ``"nearest"``.
    Bicubic can overshoot the input's range; clamp afterwards if that matters.

    >>> import torch
    >>> resize(torch.rand(3, 32, 48), (16, 24)).shape
    torch.Size([3, 16, 24])
    >>> resize(torch.arange(4.0).reshape(2, 2), 4, mode="nearest")[0].tolist()
    [0.0, 0.0, 1.0, 1.0]
    """
    call = "occlens.image.resize"
    check_tensor(x, call, "x", (2, 3, 4), "[H, W], [C, H, W] or [B, C, H, W]", "reshape it")
    if mode not in MODES:
        raise fail(call, "mode", f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    h, w = positive_pair(size, call, "size")
    height, width = x.shape[-2:]
    if (h, w) == (height, width):
        return x.clone()
    planes = x.reshape(-1, 1, height, width)
    work = planes.float() if planes.dtype in (torch.float16, torch.bfloat16) else planes
    if mode == "nearest":
        out = torch.nn.functional.interpolate(work, size=(h, w), mode="nearest-exact")
    else:
        shrink = h < height or w < width
        out = torch.nn.functional.interpolate(
            work, size=(h, w), mode=mode, align_corners=False, antialias=shrink
        )
    return out.to(x.dtype).reshape(*x.shape[:-2], h, w)


def _channel_stats(x: Tensor, values: object, call: str, argument: str) -> Tensor:
    channels = x.shape[-3]
    try:
        stats = torch.as_tensor(values, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        stats = None
    if stats is None or stats.numel() not in (1, channels) or not bool(stats.isfinite().all()):
        wanted = "1 finite number" if channels == 1 else f"1 or {channels} finite numbers"
        raise fail(
            call,
            argument,
            f"expected {wanted} for {describe(x)}, got {describe(values)}",
            f"pass one value per channel ({channels}), or one for all",
        )
    return stats.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1)


def _normalize_args(x, mean, std, call: str) -> tuple[Tensor, Tensor]:
    check_tensor(x, call, "x", (3, 4), "an image [C, H, W] or [B, C, H, W]", "add or drop a dim")
    m, s = _channel_stats(x, mean, call, "mean"), _channel_stats(x, std, call, "std")
    if not bool((s > 0).all()):
        raise fail(call, "std", f"std must be positive, got {describe(std)}", "pass values > 0")
    return m, s


def normalize(
    x: Tensor,
    mean: float | Sequence[float] | Tensor = IMAGENET_MEAN,
    std: float | Sequence[float] | Tensor = IMAGENET_STD,
) -> Tensor:
    """``(x - mean) / std`` per channel, for ``[C, H, W]`` or ``[B, C, H, W]`` in [0, 1].

    >>> import torch
    >>> normalize(torch.full((3, 1, 1), 0.5)).flatten().tolist()  # doctest: +ELLIPSIS
    [0.065..., 0.196..., 0.417...]
    """
    m, s = _normalize_args(x, mean, std, "occlens.image.normalize")
    return (x - m) / s


def denormalize(
    x: Tensor,
    mean: float | Sequence[float] | Tensor = IMAGENET_MEAN,
    std: float | Sequence[float] | Tensor = IMAGENET_STD,
) -> Tensor:
    """``x * std + mean`` per channel: the inverse of `normalize`, back to [0, 1] pixels.

    >>> import torch
    >>> x = torch.rand(2, 3, 4, 4)
    >>> torch.allclose(denormalize(normalize(x)), x, atol=1e-6)
    True
    """
    m, s = _normalize_args(x, mean, std, "occlens.image.denormalize")
    return x * s + m


def to_pil(x: Tensor, *, scale: Literal["clip", "minmax"] = "clip") -> Image.Image:
    """An RGB (``[3, H, W]``) or grayscale (``[1, H, W]`` or ``[H, W]``) tensor as a PIL image.

    ``scale="clip"`` clamps values to [0, 1]; ``"minmax"`` maps the global min to 0 and max to 1,
    and a constant image to black (no division by zero). Colour maps with `colorize` first.

    >>> import torch
    >>> to_pil(torch.full((4, 4), 7.0), scale="minmax").getextrema()
    (0, 0)
    """
    call = "occlens.image.to_pil"
    fix = "pass [3, H, W], [1, H, W] or [H, W]; take x[0] of a batch, colorize a map"
    check_tensor(x, call, "x", (2, 3), "[3, H, W], [1, H, W] or [H, W]", fix)
    if x.ndim == 3 and x.shape[0] not in (1, 3):
        raise fail(call, "x", f"expected 1 or 3 channels, got {describe(x)}", fix)
    values = x.detach().to("cpu", torch.float64)
    if scale == "clip":
        values = values.clamp(0, 1)
    elif scale == "minmax":
        lo, hi = values.min(), values.max()
        values = (values - lo) / (hi - lo) if hi > lo else torch.zeros_like(values)
    else:
        raise fail(call, "scale", f"unknown scale {scale!r}", "use 'clip' or 'minmax'")
    pixels = (values * 255).round().to(torch.uint8)
    if pixels.ndim == 3:
        pixels = pixels.permute(1, 2, 0) if pixels.shape[0] == 3 else pixels[0]
    return Image.fromarray(np.ascontiguousarray(pixels.numpy()))


def _rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img) or img
    if img.mode.startswith("I;16"):
        gray = np.asarray(img, dtype=np.float32) / 65535
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255


def from_pil(img: Image.Image, *, size: int | tuple[int, int] | None = None) -> Tensor:
    """A PIL image as ``Tensor[3, H, W]`` float32 RGB in [0, 1], read as `load` reads files.

    Grayscale is repeated to RGB, transparency is composited onto white, EXIF rotation is applied,
    16-bit images keep their precision. `size` resizes with antialiasing. The inverse is
    `to_pil`.

    >>> from PIL import Image
    >>> x = from_pil(Image.new("RGB", (6, 4), (255, 0, 0)))
    >>> x.shape, x[:, 0, 0].tolist()
    (torch.Size([3, 4, 6]), [1.0, 0.0, 0.0])
    >>> from_pil(Image.new("L", (8, 8), 128), size=4).shape
    torch.Size([3, 4, 4])
    """
    call = "occlens.image.from_pil"
    if not isinstance(img, Image.Image):
        raise fail(
            call,
            "img",
            f"expected a PIL image, got {describe(img)}",
            "open one with PIL.Image.open(path), or read the file with occlens.image.load(path)",
        )
    target = None if size is None else positive_pair(size, call, "size")
    x = torch.from_numpy(np.ascontiguousarray(_rgb(img).transpose(2, 0, 1)))
    return x if target is None else resize(x, target)


def load(path: str | os.PathLike[str], *, size: int | tuple[int, int] | None = None) -> Tensor:
    """Read an image file as ``Tensor[3, H, W]`` float32 RGB in [0, 1].

    Grayscale is repeated to RGB, transparency is composited onto white, EXIF rotation is applied,
    16-bit files keep their precision. `size` (an int means a square, or ``(h, w)``) resizes with
    antialiasing.

    >>> import pathlib, tempfile, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save(torch.rand(3, 8, 8), pathlib.Path(folder) / "new" / "x.png")
    ...     load(path, size=4).shape
    torch.Size([3, 4, 4])
    """
    call = "occlens.image.load"
    target = None if size is None else positive_pair(size, call, "size")
    if not isinstance(path, (str, os.PathLike)):
        raise fail(call, "path", f"expected a file path, got {describe(path)}", "pass a str/Path")
    path = Path(path)
    try:
        with Image.open(path) as img:
            x = from_pil(img)
    except FileNotFoundError:
        raise fail(
            call, "path", f"no such file: '{path}'", f"check the path (cwd is '{Path.cwd()}')"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
        raise fail(
            call,
            "path",
            f"cannot read '{path}' as an image ({type(err).__name__}: {err})",
            "pass a PNG, JPEG or another file Pillow can open",
        ) from None
    return x if target is None else resize(x, target)


def save(image: Tensor | Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write a PIL image or a tensor (as `to_pil` with ``scale="clip"``) to `path`; return the path.

    Missing parent folders are created; the format follows the extension.

    >>> import pathlib, tempfile, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save(torch.zeros(8, 8), pathlib.Path(folder) / "a" / "b" / "map.png").name
    'map.png'
    """
    call = "occlens.image.save"
    if isinstance(image, Tensor):
        image = to_pil(image)
    elif not isinstance(image, Image.Image):
        raise fail(
            call, "image", f"expected a Tensor or a PIL image, got {describe(image)}", "pass one"
        )
    if not isinstance(path, (str, os.PathLike)):
        raise fail(call, "path", f"expected a file path, got {describe(path)}", "pass a str/Path")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    except (OSError, ValueError, KeyError) as err:
        raise fail(
            call,
            "path",
            f"cannot write '{path}' ({type(err).__name__}: {err})",
            "use a writable folder and an image extension such as .png",
        ) from None
    return path
