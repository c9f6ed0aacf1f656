"""What an occluder puts in place of the pixels it covers.

A fill is one of: a number; a tensor (per channel ``[C]``/``[C, 1, 1]``, a baseline image
``[C, H, W]``, or one baseline per image ``[B, C, H, W]``); ``"mean"``, the image's per-channel
mean; `uniform`, fresh noise per occluder drawn from ``key``; `blur`, a Gaussian-blurred copy of
the image; or a function ``(image, mask, generator) -> image``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._errors import describe, fail
from ._ops import gaussian_blur

__all__ = ["Blur", "FillPlan", "Uniform", "blur", "plan_fill", "uniform"]

FillFn = Callable[[Tensor, Tensor, "torch.Generator | None"], Tensor]


@dataclass(frozen=True)
class Uniform:
    """Noise ``U[lo, hi)`` per pixel and channel, fresh for every occluder.

    Made by `occlens.fills.uniform`; the noise comes from the call's ``key``.

    >>> import torch, occlens as ol
    >>> fill = ol.fills.uniform(-1, 1)
    >>> fill.lo, fill.hi
    (-1.0, 1.0)
    >>> model = lambda x: x.sum(dim=(1, 2, 3))[:, None]
    >>> heat = ol.occlusion(model, torch.zeros(3, 4, 4), 0, window=2, stride=2, fill=fill, key=0)
    >>> torch.equal(heat, ol.occlusion(model, torch.zeros(3, 4, 4), 0, window=2, stride=2,
    ...                                fill=fill, key=0))  # same key, same noise
    True
    """

    lo: float = -1.0
    hi: float = 1.0


@dataclass(frozen=True)
class Blur:
    """The image blurred by a Gaussian of standard deviation `sigma` pixels, per channel.

    Made by `occlens.fills.blur`; a constant image blurs to itself, so occluding it changes nothing.

    >>> import torch, occlens as ol
    >>> model = lambda x: x.sum(dim=(1, 2, 3))[:, None]
    >>> heat = ol.occlusion(model, torch.ones(3, 8, 8), 0, window=4, fill=ol.fills.blur(1.0))
    >>> ol.fills.blur(1.0).sigma, float(heat.abs().max()) < 1e-4
    (1.0, True)
    """

    sigma: float = 5.0


def uniform(lo: float = -1.0, hi: float = 1.0) -> Uniform:
    """Occlude with fresh noise ``U[lo, hi)`` per occluder, drawn from the call's ``key``.

    The default ``U[-1, 1)`` is the RF-mapping script's occluder. The noise of occluder ``p`` is
    the same for every image of a batch and for every ``chunk_size``.

    >>> import occlens as ol
    >>> ol.fills.uniform(-1, 1)
    Uniform(lo=-1.0, hi=1.0)
    """
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise fail(
            "fills.uniform", "lo, hi", f"got lo={lo}, hi={hi}", "pass finite bounds with lo < hi"
        )
    return Uniform(lo, hi)


def blur(sigma: float = 5.0) -> Blur:
    """Occlude with a Gaussian-blurred copy of the image (per channel, replicated borders).

    >>> import occlens as ol
    >>> ol.fills.blur(3.0)
    Blur(sigma=3.0)
    """
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise fail(
            "fills.blur", "sigma", f"got {sigma}", "pass a positive standard deviation in pixels"
        )
    return Blur(sigma)


@dataclass(frozen=True)
class FillPlan:
    """A fill resolved against a batch: exactly one of the three fields is set."""

    static: Tensor | None = None  # [B, C, H, W] or broadcastable to it
    noise: Uniform | None = None
    function: FillFn | None = None

    def image(self, row: int) -> Tensor:
        """The static fill of image `row`, broadcastable to ``[C, H, W]``."""
        if self.static is None:
            raise RuntimeError("not a static fill")
        return self.static[row] if self.static.shape[0] > 1 else self.static[0]

    @property
    def is_random(self) -> bool:
        return self.noise is not None


def plan_fill(fill: object, batch: Tensor, call: str, argument: str = "fill") -> FillPlan:
    """Resolve and check `fill` for ``batch [B, C, H, W]``."""
    if isinstance(fill, bool):
        raise fail(
            call,
            argument,
            f"got the bool {fill}",
            "pass a number, a tensor, 'mean' or a fill from occlens.fills",
        )
    if isinstance(fill, (int, float)):
        if not math.isfinite(fill):
            raise fail(call, argument, f"got {fill}", "pass a finite fill value")
        return FillPlan(
            static=torch.full((1, 1, 1, 1), float(fill), dtype=batch.dtype, device=batch.device)
        )
    if isinstance(fill, str):
        if fill != "mean":
            raise fail(
                call,
                argument,
                f"unknown fill {fill!r}",
                "use 'mean', a number, a tensor or a fill from occlens.fills",
            )
        return FillPlan(static=batch.mean(dim=(2, 3), keepdim=True))
    if isinstance(fill, Uniform):
        return FillPlan(noise=fill)
    if isinstance(fill, Blur):
        return FillPlan(static=gaussian_blur(batch, fill.sigma))
    if isinstance(fill, Tensor):
        return FillPlan(static=_fill_tensor(fill, batch, call, argument))
    if callable(fill):
        return FillPlan(function=fill)  # type: ignore[arg-type]
    raise fail(
        call,
        argument,
        f"cannot use {describe(fill)} as a fill",
        "pass a number, a tensor, 'mean' or a fill from occlens.fills",
    )


def _fill_tensor(fill: Tensor, batch: Tensor, call: str, argument: str) -> Tensor:
    n, c, h, w = batch.shape
    shape = tuple(fill.shape)
    accepted = {
        (): "a scalar",
        (c,): "[C]",
        (c, 1, 1): "[C, 1, 1]",
        (c, h, w): "[C, H, W]",
        (n, c, h, w): "[B, C, H, W]",
    }
    if shape not in accepted:
        raise fail(
            call,
            argument,
            f"a fill tensor of shape {list(shape)} does not fit the input {describe(batch)}",
            f"pass a scalar, [C]=[{c}], [C, 1, 1], [C, H, W]=[{c}, {h}, {w}] or "
            f"[B, C, H, W]=[{n}, {c}, {h}, {w}]",
        )
    if not fill.dtype.is_floating_point and fill.dtype not in (
        torch.int32,
        torch.int64,
        torch.uint8,
    ):
        raise fail(call, argument, f"got {describe(fill)}", "pass a floating-point tensor")
    if not bool(torch.isfinite(fill.double()).all()):
        raise fail(call, argument, f"{describe(fill)} holds NaN/Inf", "pass finite fill values")
    value = fill.to(dtype=batch.dtype, device=batch.device)
    if len(shape) == 4:
        return value
    if len(shape) == 1:
        value = value.view(c, 1, 1)
    return value.reshape(1, *value.shape) if value.ndim == 3 else value.view(1, 1, 1, 1)
