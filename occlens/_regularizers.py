"""Image priors for `occlens.maximize`: penalties, a blur preconditioner and a gradient filter.

* `Regularizer` (`l1`, `l2`, `tv`): ``weight * value(image)``, subtracted from the target score.
  Each value is DNNBrain's closed form: ``sum |x - c|``, ``sqrt(sum (x - c)^2)`` and the
  anisotropic total variation ``sum |x[h+1, w] - x[h, w]| + sum |x[h, w+1] - x[h, w]|``.
* `Blur` (`blur`): a Gaussian blur of each channel on its own (depthwise), applied to the image
  every `every` steps. DNNBrain's ``GB`` blurred across channels and then re-created its Adam
  optimizer, discarding the moment estimates; `maximize` keeps one optimizer throughout.
* `FourierFilter` (`fourier`): scales each spatial frequency of the gradient by
  ``1 / max(1, |k|^(2 factor))``, with ``|k|`` the integer frequency from ``torch.fft.fftfreq``
  and ``rfftfreq``, normalised to mean 1 over the full spectrum. ``factor = 0`` is the identity.
  DNNBrain's version indexed frequencies off by one (``min(k, n - 1 - k)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ._errors import describe, fail
from ._ops import gaussian_blur

__all__ = ["Blur", "FourierFilter", "Regularizer", "blur", "fourier", "l1", "l2", "tv"]

Kind = Literal["l1", "l2", "tv"]


def _number(value: object, call: str, argument: str, *, positive: bool = False) -> float:
    """A finite real number, >= 0 (or > 0 with `positive`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(call, argument, f"got {describe(value)}", "pass a finite number")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise fail(call, argument, f"got {value!r}; it must be {bound}", f"pass a number {bound}")
    return float(value)


def _image_dims(image: object, call: str) -> tuple[int, ...]:
    if not isinstance(image, Tensor) or image.ndim not in (3, 4):
        raise fail(
            call,
            "image",
            f"expected an image [C, H, W] or a batch [B, C, H, W], got {describe(image)}",
            "pass the image being optimised",
        )
    return (-3, -2, -1)


@dataclass(frozen=True)
class Regularizer:
    """A penalty ``weight * value(image)``: ``[C, H, W] -> []``, ``[B, C, H, W] -> [B]``.

    Build one with `occlens.reg.l1`, `l2` or `tv`; ``value`` gives the unweighted closed form.

    >>> import torch
    >>> from occlens import reg
    >>> image = torch.tensor([[[1.0, -2.0], [0.0, 2.0]]])  # [1, 2, 2]
    >>> penalty = reg.l1(0.5)
    >>> penalty.kind, penalty.weight, float(penalty.value(image)), float(reg.tv(1.0).value(image))
    ('l1', 0.5, 5.0, 10.0)
    """

    kind: Kind
    weight: float
    center: float = 0.0

    def value(self, image: Tensor) -> Tensor:
        """The unweighted penalty of each image."""
        dims = _image_dims(image, f"reg.{self.kind}")
        if self.kind == "tv":
            down = (image[..., 1:, :] - image[..., :-1, :]).abs().sum(dim=dims)
            right = (image[..., :, 1:] - image[..., :, :-1]).abs().sum(dim=dims)
            return down + right
        shifted = image - self.center if self.center else image
        if self.kind == "l1":
            return shifted.abs().sum(dim=dims)
        # vector_norm has the subgradient 0 at 0, where sqrt(sum x^2) would give NaN.
        return torch.linalg.vector_norm(shifted, dim=dims)

    def __call__(self, image: Tensor) -> Tensor:
        return self.weight * self.value(image)


def l1(weight: float = 1.0, *, center: float = 0.0) -> Regularizer:
    """L1 penalty ``weight * sum |x - center|`` of each image (DNNBrain's ``L1``).

    >>> import torch
    >>> from occlens import reg
    >>> reg.l1(0.5)(torch.tensor([[[1.0, -2.0], [0.0, 3.0]]]))  # 0.5 * (1 + 2 + 0 + 3)
    tensor(3.)
    """
    return Regularizer(
        "l1", _number(weight, "reg.l1", "weight"), _signed(center, "reg.l1", "center")
    )


def l2(weight: float = 1.0, *, center: float = 0.0) -> Regularizer:
    """L2 penalty ``weight * sqrt(sum (x - center)^2)`` of each image (DNNBrain's ``L2``).

    >>> import torch
    >>> from occlens import reg
    >>> reg.l2(2.0)(torch.tensor([[[3.0, 4.0]]]))  # 2 * 5
    tensor(10.)
    """
    return Regularizer(
        "l2", _number(weight, "reg.l2", "weight"), _signed(center, "reg.l2", "center")
    )


def tv(weight: float = 1.0) -> Regularizer:
    """Anisotropic total variation ``weight * sum(|x[h+1,w] - x[h,w]| + |x[h,w+1] - x[h,w]|)``.

    Summed over channels, per image (DNNBrain's ``TV``).

    >>> import torch
    >>> from occlens import reg
    >>> reg.tv()(torch.tensor([[[0.0, 1.0], [3.0, 3.0]]]))  # down 3 + 2, right 1 + 0
    tensor(6.)
    """
    return Regularizer("tv", _number(weight, "reg.tv", "weight"))


def _signed(value: object, call: str, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(call, argument, f"got {describe(value)}", "pass a finite number")
    return float(value)


@dataclass(frozen=True)
class Blur:
    """Preconditioner: blur each channel of the image with a Gaussian every `every` steps.

    Made by `occlens.reg.blur` and given to `maximize` as ``precondition``.

    >>> import torch
    >>> from occlens import reg
    >>> smooth = reg.blur(1.0, every=4)
    >>> smooth.every, smooth(torch.ones(3, 6, 6)).allclose(torch.ones(3, 6, 6))
    (4, True)
    """

    sigma: float
    every: int = 1

    def __call__(self, image: Tensor) -> Tensor:
        _image_dims(image, "reg.blur")
        return gaussian_blur(image, self.sigma)


def blur(sigma: float = 0.5, *, every: int = 1) -> Blur:
    """Blur the image channel by channel (standard deviation `sigma` pixels) every `every` steps.

    The kernel reaches ``ceil(3 sigma)`` pixels with replicated borders; channels never mix.
    `maximize` blurs the image in place between steps and keeps its optimizer's state.

    >>> import torch
    >>> from occlens import reg
    >>> image = torch.zeros(2, 5, 5); image[0, 2, 2] = 1.0
    >>> out = reg.blur(1.0)(image)
    >>> round(float(out[0].sum()), 4), float(out[1].abs().max())  # mass kept, no channel mixing
    (1.0, 0.0)
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise fail("reg.blur", "every", f"got {describe(every)}", "pass a whole number >= 1")
    return Blur(_number(sigma, "reg.blur", "sigma", positive=True), every)


def frequency_weights(
    height: int, width: int, factor: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The ``[H, W // 2 + 1]`` filter on the ``rfft2`` half-spectrum, mean 1 over the full one."""
    fy = torch.fft.fftfreq(height, d=1.0 / height, dtype=torch.float64)  # 0, 1, .., -1
    full_x = torch.fft.fftfreq(width, d=1.0 / width, dtype=torch.float64)
    half_x = torch.fft.rfftfreq(width, d=1.0 / width, dtype=torch.float64)

    def weights(fx: Tensor) -> Tensor:
        squared = fy[:, None] ** 2 + fx[None, :] ** 2
        return 1.0 / torch.clamp(squared**factor, min=1.0)

    return (weights(half_x) / weights(full_x).mean()).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class FourierFilter:
    """Gradient filter: damp high spatial frequencies by ``1 / max(1, |k|^(2 factor))``.

    Made by `occlens.reg.fourier` and given to `maximize` as ``gradient_filter``.

    >>> import torch
    >>> from occlens import reg
    >>> flat = torch.ones(1, 8, 8)
    >>> checker = (-1.0) ** (torch.arange(8)[:, None] + torch.arange(8))[None]  # the top frequency
    >>> smooth = reg.fourier(0.5)
    >>> smooth.factor, float(smooth(checker).abs().max()) < float(smooth(flat).abs().max())
    (0.5, True)
    """

    factor: float

    def __call__(self, gradient: Tensor) -> Tensor:
        _image_dims(gradient, "reg.fourier")
        if self.factor == 0:
            return gradient
        height, width = gradient.shape[-2:]
        weights = frequency_weights(height, width, self.factor, gradient.dtype, gradient.device)
        spectrum = torch.fft.rfft2(gradient)
        return torch.fft.irfft2(spectrum * weights, s=(height, width))


def fourier(factor: float = 0.25) -> FourierFilter:
    """Filter the gradient in Fourier space: frequency ``k`` is scaled by ``1 / max(1, |k|^(2f))``.

    ``|k| = sqrt(ky^2 + kx^2)`` in cycles per image (``torch.fft.fftfreq`` / ``rfftfreq``), and the
    filter is normalised to mean 1 over the spectrum. ``factor = 0.25`` is DNNBrain's
    ``1 / sqrt(f)``; ``factor = 0`` returns the gradient unchanged. ``[C, H, W]`` or
    ``[B, C, H, W]`` in and out.

    >>> import torch
    >>> from occlens import reg
    >>> g = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> reg.fourier(0.0)(g) is g
    True
    >>> smooth = reg.fourier(0.5)(g)  # 1 / |k| damping
    >>> bool((smooth.diff(dim=-1).abs().mean() < g.diff(dim=-1).abs().mean()))
    True
    """
    return FourierFilter(_number(factor, "reg.fourier", "factor"))
