"""Map functions: one map in, one map out, pure and safe under ``torch.func.vmap``.

A map is a gradient-style ``[C, H, W]`` or a heat map ``[H, W]``. Validation reads shapes,
dtypes and Python arguments only, never tensor values, so every function runs under ``vmap``.
Percentiles use linear interpolation between sorted values (numpy's and torch.quantile's default).
"""

from __future__ import annotations

import math
import operator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import positive_pair
from ._errors import close_matches, describe, fail
from ._ops import gaussian_blur

__all__ = [
    "abs",
    "blur",
    "clip",
    "l2_channels",
    "max_channels",
    "mean_channels",
    "normalize",
    "recenter",
    "sum_channels",
    "threshold",
    "upsample",
]

_NORMALIZE_KINDS = ("minmax", "max_abs")
_MODES = ("bilinear", "bicubic", "nearest")


def _check_map(m: object, call: str, ranks: tuple[int, ...] = (2, 3)) -> Tensor:
    what = " or ".join({2: "a heat map [H, W]", 3: "a map [C, H, W]"}[r] for r in ranks)
    if not isinstance(m, Tensor):
        raise fail(call, "m", f"expected {what}, got {describe(m)}", "pass a torch.Tensor")
    if m.ndim == 2 and ranks == (3,):
        raise fail(call, "m", f"{describe(m)} is already one channel", "drop this reduction")
    if m.ndim not in ranks:
        raise fail(call, "m", f"expected {what}, got {describe(m)}", "map one sample at a time")
    if not m.dtype.is_floating_point:
        raise fail(call, "m", f"expected floating-point values, got {describe(m)}", "use m.float()")
    if m.numel() == 0:
        raise fail(call, "m", f"the map is empty: {describe(m)}", "pass a non-empty map")
    return m


def _check_choice(value: object, options: tuple[str, ...], call: str, argument: str) -> None:
    if value not in options:
        near = close_matches(str(value), options)
        raise fail(
            call, argument, f"unknown {argument} {value!r} (close: {near})", f"use {options}"
        )


def _check_percentile(value: object, call: str, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise fail(call, argument, f"got {describe(value)}", "pass a number from 0 to 100")
    return float(value)


def _percentile(m: Tensor, q: float) -> Tensor:
    """The `q`-th percentile of all of `m`'s values, linear interpolation (numpy's default)."""
    values = m.flatten().sort().values
    position = q / 100.0 * (values.shape[0] - 1)
    low = math.floor(position)
    high = min(low + 1, values.shape[0] - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def abs(m: Tensor) -> Tensor:  # shadows the builtin on purpose: occlens.maps.abs
    """Elementwise absolute value: ``[C, H, W] -> [C, H, W]`` or ``[H, W] -> [H, W]``.

    >>> import torch
    >>> abs(torch.tensor([[-1.0, 2.0]]))
    tensor([[1., 2.]])
    """
    return torch.abs(_check_map(m, "maps.abs"))


def max_channels(m: Tensor) -> Tensor:
    """Maximum over channels: ``[C, H, W] -> [H, W]`` (as in guided-backprop heat maps).

    >>> import torch
    >>> max_channels(torch.tensor([[[1.0, -2.0]], [[3.0, -4.0]]]))
    tensor([[ 3., -2.]])
    """
    return _check_map(m, "maps.max_channels", (3,)).amax(dim=0)


def sum_channels(m: Tensor) -> Tensor:
    """Sum over channels: ``[C, H, W] -> [H, W]``.

    >>> import torch
    >>> sum_channels(torch.tensor([[[1.0, -2.0]], [[3.0, -4.0]]]))
    tensor([[ 4., -6.]])
    """
    return _check_map(m, "maps.sum_channels", (3,)).sum(dim=0)


def mean_channels(m: Tensor) -> Tensor:
    """Mean over channels: ``[C, H, W] -> [H, W]``.

    >>> import torch
    >>> mean_channels(torch.tensor([[[1.0, -2.0]], [[3.0, -4.0]]]))
    tensor([[ 2., -3.]])
    """
    return _check_map(m, "maps.mean_channels", (3,)).mean(dim=0)


def l2_channels(m: Tensor) -> Tensor:
    """Euclidean norm over channels: ``[C, H, W] -> [H, W]``.

    >>> import torch
    >>> l2_channels(torch.tensor([[[3.0, 0.0]], [[4.0, -2.0]]]))
    tensor([[5., 2.]])
    """
    return torch.linalg.vector_norm(_check_map(m, "maps.l2_channels", (3,)), dim=0)


def normalize(m: Tensor, *, kind: Literal["minmax", "max_abs"] = "minmax") -> Tensor:
    """Rescale a whole map (all channels together); same shape out.

    ``kind="minmax"`` maps ``[min, max]`` onto ``[0, 1]``; ``kind="max_abs"`` divides by
    ``max |m|``, keeping signs, into ``[-1, 1]``. Nothing is divided by zero: a constant map
    becomes all zeros under ``"minmax"``, and an all-zero map stays zeros under ``"max_abs"``
    (captum#959). For maps to compare across images, leave them unnormalized.

    >>> import torch
    >>> normalize(torch.tensor([[1.0, 3.0, 2.0]]))
    tensor([[0.0000, 1.0000, 0.5000]])
    >>> normalize(torch.tensor([[-4.0, 2.0]]), kind="max_abs")
    tensor([[-1.0000, 0.5000]])
    >>> normalize(torch.full((2, 2), 7.0))
    tensor([[0., 0.],
            [0., 0.]])
    """
    call = "maps.normalize"
    _check_map(m, call)
    _check_choice(kind, _NORMALIZE_KINDS, call, "kind")
    if kind == "minmax":
        shifted, scale = m - m.amin(), m.amax() - m.amin()
    else:
        shifted, scale = m, m.abs().amax()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, shifted / safe, torch.zeros_like(m))


def clip(m: Tensor, *, percentile: float = 99.0, lower: float | None = None) -> Tensor:
    """Clamp values above the `percentile`-th percentile of the map (and below the `lower`-th).

    Percentiles are taken over all elements, ``[C, H, W]`` or ``[H, W]``; same shape out.

    >>> import torch
    >>> m = torch.arange(5.0).reshape(1, 5)  # percentiles of 0..4: 25th is 1, 75th is 3
    >>> clip(m, percentile=75)
    tensor([[0., 1., 2., 3., 3.]])
    >>> clip(m, percentile=75, lower=25)
    tensor([[1., 1., 2., 3., 3.]])
    """
    call = "maps.clip"
    _check_map(m, call)
    top = _check_percentile(percentile, call, "percentile")
    out = torch.minimum(m, _percentile(m, top))
    if lower is not None:
        bottom = _check_percentile(lower, call, "lower")
        if bottom > top:
            raise fail(call, "lower", f"{lower} is above percentile={percentile}", "swap them")
        out = torch.maximum(out, _percentile(m, bottom))
    return out


def threshold(
    m: Tensor, *, percentile: float = 50.0, below: Literal["zero", "clip"] = "zero"
) -> Tensor:
    """Suppress values below the `percentile`-th percentile of the map; same shape out.

    ``below="zero"`` sets them to 0; ``below="clip"`` raises them to the percentile value,
    ``np.clip(m, np.percentile(m, percentile), None)`` as in DNNBrain's upsampling maps.

    >>> import torch
    >>> m = torch.tensor([[4.0, 1.0], [3.0, 2.0]])  # 50th percentile: 2.5
    >>> threshold(m)
    tensor([[4., 0.],
            [3., 0.]])
    >>> threshold(m, below="clip")
    tensor([[4.0000, 2.5000],
            [3.0000, 2.5000]])
    """
    call = "maps.threshold"
    _check_map(m, call)
    level = _percentile(m, _check_percentile(percentile, call, "percentile"))
    _check_choice(below, ("zero", "clip"), call, "below")
    if below == "clip":
        return torch.maximum(m, level)
    return torch.where(m < level, torch.zeros_like(m), m)


def _nearest(m: Tensor, h: int, w: int) -> Tensor:
    """Nearest-neighbour by pixel centres (torch's ``"nearest-exact"``), in exact integers."""
    height, width = m.shape[-2:]
    rows = ((2 * torch.arange(h) + 1) * height // (2 * h)).clamp(max=height - 1)
    cols = ((2 * torch.arange(w) + 1) * width // (2 * w)).clamp(max=width - 1)
    return m[..., rows.to(m.device)[:, None], cols.to(m.device)[None, :]]


def upsample(
    m: Tensor,
    *,
    size: int | tuple[int, int],
    mode: Literal["bilinear", "bicubic", "nearest"] = "bilinear",
) -> Tensor:
    """Resize a map ``[H, W]`` or ``[C, H, W]`` to `size` (an int means a square).

    As `occlens.image.resize`: ``align_corners=False``, antialiased when shrinking, and
    ``"nearest"`` picks by pixel centres (torch's ``"nearest-exact"``). Bicubic can overshoot.

    >>> import torch
    >>> upsample(torch.rand(7, 7), size=224).shape
    torch.Size([224, 224])
    >>> upsample(torch.tensor([[0.0, 1.0]]), size=(1, 4), mode="nearest")
    tensor([[0., 0., 1., 1.]])
    """
    call = "maps.upsample"
    _check_map(m, call)
    _check_choice(mode, _MODES, call, "mode")
    h, w = positive_pair(size, call, "size")
    height, width = m.shape[-2:]
    if (h, w) == (height, width):
        return m.clone()
    if mode == "nearest":
        return _nearest(m, h, w)
    planes = m.reshape(-1, 1, height, width)
    work = planes.float() if planes.dtype in (torch.float16, torch.bfloat16) else planes
    shrink = h < height or w < width
    out = F.interpolate(work, size=(h, w), mode=mode, align_corners=False, antialias=shrink)
    return out.to(m.dtype).reshape(*m.shape[:-2], h, w)


def blur(m: Tensor, *, sigma: float = 1.0) -> Tensor:
    """Gaussian blur of each channel (standard deviation `sigma` pixels, replicated borders).

    ``[C, H, W] -> [C, H, W]``, ``[H, W] -> [H, W]``; ``sigma=0`` returns a copy.

    >>> import torch
    >>> blur(torch.ones(3, 8, 8), sigma=2.0).allclose(torch.ones(3, 8, 8))
    True
    """
    call = "maps.blur"
    _check_map(m, call)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < math.inf:
        raise fail(call, "sigma", f"got {describe(sigma)}", "pass a finite number >= 0")
    return gaussian_blur(m, float(sigma))


def _center(center: object, call: str, device: torch.device) -> Tensor:
    if isinstance(center, Tensor):
        if center.shape != (2,) or center.dtype.is_floating_point or center.dtype == torch.bool:
            raise fail(call, "center", f"got {describe(center)}", "pass a LongTensor [2] (y, x)")
        return center.to(device=device, dtype=torch.long)
    try:
        y, x = (operator.index(v) for v in center)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise fail(call, "center", f"got {describe(center)}", "pass (y, x) ints") from None
    return torch.tensor([y, x], device=device)


def recenter(m: Tensor, *, center: tuple[int, int] | Tensor, size: int | tuple[int, int]) -> Tensor:
    """The `size` window of a map centred on ``center=(y, x)``, zero where it leaves the map.

    ``out[..., i, j] = m[..., y - h // 2 + i, x - w // 2 + j]`` (0 outside): ``[H, W] -> [h, w]``,
    ``[C, H, W] -> [C, h, w]``. `center` may be a ``LongTensor[2]``, e.g. one per sample under
    ``vmap``, to re-centre discrepancy maps on each unit's peak (Zhou et al. 2015).

    >>> import torch
    >>> recenter(torch.arange(9.0).reshape(3, 3), center=(0, 0), size=3)
    tensor([[0., 0., 0.],
            [0., 0., 1.],
            [0., 3., 4.]])
    """
    call = "maps.recenter"
    _check_map(m, call)
    h, w = positive_pair(size, call, "size")
    yx = _center(center, call, m.device)
    height, width = m.shape[-2:]
    rows = yx[0] - h // 2 + torch.arange(h, device=m.device)
    cols = yx[1] - w // 2 + torch.arange(w, device=m.device)
    inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
    picked = m[..., rows.clamp(0, height - 1)[:, None], cols.clamp(0, width - 1)[None, :]]
    return torch.where(inside, picked, torch.zeros_like(picked))
