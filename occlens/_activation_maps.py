"""A channel's activation, resized to the image: DNNBrain's ``UpsamplingActivationMapping``."""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vmap

from ._checks import check_model, check_output, image_batch, model_errors, positive_pair
from ._errors import close_matches, describe, fail
from ._maps import threshold as threshold_map
from ._types import ModelFn

__all__ = ["upsample_activation"]

CALL = "upsample_activation"
MODES = ("bicubic", "bilinear", "nearest", "nearest-exact", "area")
_BELOW = ("clip", "zero")

Mode = Literal["bicubic", "bilinear", "nearest", "nearest-exact", "area"]


def upsample_activation(
    model_fn: ModelFn,
    x: Tensor,
    channel: int,
    *,
    size: int | tuple[int, int] | None = None,
    mode: Mode = "bicubic",
    threshold: float | None = None,
    below: Literal["clip", "zero"] = "clip",
) -> Tensor:
    """Channel `channel` of the feature map ``model_fn(x)``, resized to the image, thresholded.

    DNNBrain's ``UpsamplingActivationMapping``: the map ``[h, w]`` is resized to `size` (default:
    the image's ``(H, W)``) by ``F.interpolate`` with `mode` exactly as DNNBrain calls it
    (``align_corners=False``, no antialiasing, so ``"nearest"`` is torch's legacy nearest rule;
    bicubic can overshoot). `model_fn` must return a feature map ``[B, C, h, w]``: for a layer
    inside a network pass ``occlens.layer(model, name)``. `channel` is 0-based (DNNBrain counts
    from 1).

    `threshold` is a fraction ``p`` in ``[0, 1]``: the level is the ``100 p``-th percentile of
    each resized map (linear interpolation, numpy's default, as DNNBrain's ``np.percentile``).
    ``below="clip"`` raises the values under it to the level, ``np.clip(map, level, None)``
    (DNNBrain); ``below="zero"`` sets them to 0.

    The model runs without autograd and is never changed. Shapes: ``x [C, H, W] -> [H, W]`` and
    ``x [B, C, H, W] -> [B, H, W]`` (or `size`).

    >>> import torch
    >>> fmap = lambda x: torch.nn.functional.avg_pool2d(x, 2)  # [B, C, H/2, W/2]
    >>> x = torch.zeros(1, 4, 4); x[0, :2, :2] = 4.0
    >>> upsample_activation(fmap, x, 0, mode="nearest")
    tensor([[4., 4., 0., 0.],
            [4., 4., 0., 0.],
            [0., 0., 0., 0.],
            [0., 0., 0., 0.]])
    >>> upsample_activation(fmap, x, 0, mode="bilinear")
    tensor([[4.0000, 3.0000, 1.0000, 0.0000],
            [3.0000, 2.2500, 0.7500, 0.0000],
            [1.0000, 0.7500, 0.2500, 0.0000],
            [0.0000, 0.0000, 0.0000, 0.0000]])
    >>> upsample_activation(fmap, x, 0, mode="bilinear", threshold=0.75, below="zero")
    tensor([[4.0000, 3.0000, 0.0000, 0.0000],
            [3.0000, 2.2500, 0.0000, 0.0000],
            [0.0000, 0.0000, 0.0000, 0.0000],
            [0.0000, 0.0000, 0.0000, 0.0000]])
    """
    batch, single = image_batch(x, CALL)
    _check_channel(channel)
    height, width = batch.shape[-2:] if size is None else positive_pair(size, CALL, "size")
    _check_choice(mode, MODES, "mode")
    level = _check_threshold(threshold)
    _check_choice(below, _BELOW, "below")
    check_model(model_fn, batch, CALL)
    with torch.no_grad():
        with model_errors(CALL, batch):
            out = check_output(model_fn(batch), batch, CALL)
        _check_feature_map(out, channel)
        maps = out[:, channel : channel + 1]
        work = maps.float() if maps.dtype in (torch.float16, torch.bfloat16) else maps
        corners = False if mode in ("bilinear", "bicubic") else None
        resized = F.interpolate(work, size=(height, width), mode=mode, align_corners=corners)
        heat = resized[:, 0].to(out.dtype)
        if level is not None:
            heat = vmap(partial(threshold_map, percentile=100 * level, below=below))(heat)
    return heat[0] if single else heat


def _check_channel(channel: object) -> None:
    if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
        raise fail(
            CALL,
            "channel",
            f"got {describe(channel)}",
            "pass a channel index, an int >= 0 (0-based: DNNBrain's channel c is c - 1)",
        )


def _check_choice(value: object, options: tuple[str, ...], argument: str) -> None:
    if value not in options:
        near = close_matches(str(value), options)
        raise fail(
            CALL, argument, f"got {describe(value)} (close: {near})", f"use one of {options}"
        )


def _check_threshold(threshold: object) -> float | None:
    if threshold is None:
        return None
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not 0 <= threshold <= 1
    ):
        raise fail(
            CALL,
            "threshold",
            f"got {describe(threshold)}",
            "pass a fraction p in [0, 1], meaning the 100p-th percentile (0.58 for the 58th), "
            "or None",
        )
    return float(threshold)


def _check_feature_map(out: Tensor, channel: int) -> None:
    if out.ndim != 4:
        raise fail(
            CALL,
            "model_fn",
            f"the model returned {describe(out)}, not a feature map [B, C, h, w]",
            "pass the model truncated at a convolutional layer: occlens.layer(model, name)",
        )
    if channel >= out.shape[1]:
        raise fail(
            CALL,
            "channel",
            f"channel {channel} out of range for a feature map {describe(out)}",
            f"use a channel in 0..{out.shape[1] - 1} (0-based)",
        )
