"""Activation maximization: gradient ascent on an image to drive a target score up.

DNNBrain's ``SynthesisImage`` without its bugs. One Adam optimizer lives for the whole run (the
reference re-created it after every blur, discarding its moment estimates); the blur acts on each
channel alone (the reference blurred across channels); the Fourier gradient filter uses the true
FFT frequencies; and the gradient is taken with ``torch.autograd.grad`` on the image alone, so no
parameter, ``.grad``, flag, hook or mode of the model changes.

Two parameterisations: ``"pixel"`` optimises the pixels, projected back into `value_range` after
every step; ``"fourier"`` optimises a spectrum scaled by ``1 / frequency`` (lucid/lucent), colour
decorrelated for RGB, mapped into `value_range` by a sigmoid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from ._checks import check_model, check_model_fn, check_output, image_batch, model_errors
from ._errors import describe, fail
from ._gradients import require_autograd
from ._keys import generator
from ._layers import split_at
from ._progress import progress as progress_bar
from ._regularizers import Blur, FourierFilter
from ._regularizers import blur as make_blur
from ._regularizers import fourier as make_fourier
from ._targets import TargetBase, as_target
from ._types import Key, ModelFn, TargetLike

__all__ = ["Maximized", "maximize"]

CALL = "maximize"
Parameterization = Literal["pixel", "fourier"]

# The square root of ImageNet's RGB colour correlation (lucid), scaled to unit column norm.
_COLOR_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))
_FOURIER_DIVISOR = 4.0  # lucid's constant: keeps the initial image near the middle of the range
_FOURIER_SD = 0.01


class Maximized(NamedTuple):
    """The result of `maximize`.

    * `image`: the optimised image, ``[C, H, W]`` (or ``[B, C, H, W]`` for a batch).
    * `scores`: the target score before each step, ``[steps]`` (or ``[steps, B]``).
    * `score`: the target score of `image`, ``[]`` (or ``[B]``).

    >>> import torch, occlens as ol
    >>> model = lambda x: x.mean(dim=(1, 2, 3))[:, None]  # score: the mean pixel
    >>> out = ol.maximize(model, 0, shape=(3, 8, 8), steps=5, key=0)
    >>> out.image.shape, out.scores.shape, bool(out.score > out.scores[0])
    (torch.Size([3, 8, 8]), torch.Size([5]), True)
    """

    image: Tensor
    scores: Tensor
    score: Tensor


def maximize(
    model_fn: ModelFn,
    target: TargetLike,
    *,
    init: Tensor | None = None,
    shape: Sequence[int] | None = None,
    layer: str | None = None,
    steps: int = 128,
    lr: float = 0.05,
    regularizers: Sequence[Callable[[Tensor], Tensor]] = (),
    precondition: Blur | float | None = None,
    gradient_filter: FourierFilter | Callable[[Tensor], Tensor] | float | None = None,
    parameterization: Parameterization = "pixel",
    decorrelate: bool | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    normalize: tuple[Sequence[float] | Tensor, Sequence[float] | Tensor] | None = None,
    jitter: int = 0,
    progress: bool | None = None,
    key: Key | None = None,
) -> Maximized:
    """Synthesize an image that maximizes `target` by gradient ascent (DNNBrain's SynthesisImage).

    Each step scores the image, subtracts the `regularizers`' penalties, takes the gradient with
    respect to the image (or its spectrum), applies `gradient_filter` and takes an Adam step
    (learning rate `lr`); one optimizer serves the whole run. Then, for ``"pixel"``, every
    ``precondition.every`` steps the image is blurred in place, and it is clamped to
    `value_range`.

    * `target`: a class index, a ``LongTensor[B]`` or a target from `occlens.targets`. With
      `layer` (a name from `occlens.layers`) the target scores that layer's activation, e.g.
      ``T.channel(c)`` (DNNBrain's mean metric), ``T.channel(c, "max")`` or ``T.unit(c, y, x)``.
      A `T.peak` is pinned on the starting image.
    * Start: `init` ``[C, H, W]`` / ``[B, C, H, W]`` (never modified), or `shape` with noise
      drawn from `key` (an ``int`` or ``torch.Generator``): uniform over `value_range` for
      ``"pixel"``, a small random spectrum for ``"fourier"``. Same key, same result.
    * `regularizers`: `occlens.reg.l1`, `l2`, `tv`, or any function ``[B, C, H, W] -> [B]``.
    * `precondition`: `occlens.reg.blur(sigma, every=k)` (a number is ``blur(sigma)``).
    * `gradient_filter`: `occlens.reg.fourier(factor)` (a number is ``fourier(factor)``) or any
      function ``[B, C, H, W] -> [B, C, H, W]`` on the image gradient.
    * `parameterization`: ``"pixel"`` or ``"fourier"`` (decorrelated colour when `decorrelate`,
      by default for 3 channels). `precondition` and `gradient_filter` need ``"pixel"``.
    * `value_range`: ``(lo, hi)`` pixel range, or ``None`` for unconstrained pixels.
    * `normalize`: ``(mean, std)`` per channel; the model sees ``(image - mean) / std`` while the
      returned image stays in pixel space (e.g. ``occlens.image.IMAGENET_MEAN``, ``IMAGENET_STD``).
    * `jitter`: the model sees the image rolled by a random shift of up to `jitter` pixels in
      each direction, a new shift every step, drawn from `key` (lucid's transformation
      robustness). `scores` are those of the shifted images; `score` is of the image unshifted.

    The model is never changed, and must be in eval mode where that matters (no dropout/batch
    norm in training mode). Returns `Maximized`: the image, the score before each step and the
    final score.

    DNNBrain's ``SynthesisImage(dnn, layer, chn, activ_metric, regular_metric, regular_lambda,
    precondition_metric="GB", GB_radius=r, smooth_metric="Fourier", factor=f)`` with
    ``synthesize(lr=0.1, n_iter=30)`` is ``maximize(model, T.channel(chn - 1, activ_metric),
    layer=layer, regularizers=[reg.tv(regular_lambda)], precondition=reg.blur(r),
    gradient_filter=reg.fourier(f), lr=0.1, steps=30, value_range=None, key=...)`` (its channels
    count from 1; its unit ``(row, col)`` is ``T.unit(chn - 1, row, col)``), minus its bugs.

    >>> import torch, occlens as ol
    >>> from occlens import reg, zoo
    >>> model = zoo.shapes()
    >>> out = ol.maximize(model, 4, shape=(3, 64, 64), steps=32, regularizers=[reg.tv(1e-3)], key=0)
    >>> out.image.shape, out.scores.shape
    (torch.Size([3, 64, 64]), torch.Size([32]))
    >>> float(out.scores[0]) < 10 < 50 < float(out.score)  # real stars score about 13
    True

    Smoother, more recognisable images come from the Fourier parameterisation with jitter:

    >>> star = ol.maximize(model, 4, shape=(3, 64, 64), parameterization="fourier", jitter=2, key=0)
    >>> float(star.score) > 50
    True
    """
    spec = _Spec.check(
        model_fn,
        steps=steps,
        lr=lr,
        regularizers=regularizers,
        precondition=precondition,
        gradient_filter=gradient_filter,
        parameterization=parameterization,
        value_range=value_range,
        progress=progress,
        jitter=jitter,
    )
    require_autograd(CALL, "model_fn")
    model = _truncated(model_fn, layer)
    start, single = _start(model_fn, init, shape, spec.value_range)
    rng = None
    if not isinstance(start, Tensor) or spec.jitter:
        rng = generator(key, CALL, "starting from noise (init=None)" if init is None else "jitter")
    channels = start.shape[1] if isinstance(start, Tensor) else start[1]
    decorrelate = _check_decorrelate(decorrelate, parameterization, channels)
    mean_std = _check_normalize(normalize, channels)
    image_fn, param = _parameterize(
        parameterization, start, spec.value_range, decorrelate, rng, _dtype_device(model_fn)
    )
    prepare = _normalizer(mean_std, param)
    shifts = None
    if spec.jitter and rng is not None:  # rng is always drawn when jitter > 0
        shifts = torch.randint(-spec.jitter, spec.jitter + 1, (spec.steps, 2), generator=rng)

    def forward(p: Tensor, step: int | None = None) -> tuple[Tensor, Tensor]:
        image = image_fn(p)
        seen = image
        if shifts is not None and step is not None:
            seen = torch.roll(image, shifts=shifts[step].tolist(), dims=(-2, -1))
        with model_errors(CALL, image):
            output = model(prepare(seen))
        return image, check_output(output, image, CALL)

    check_model(model, image_fn(param.detach()), CALL)
    with torch.no_grad():  # check the target, and pin a peak, on the starting image
        goal = _resolve(target, forward(param)[1])
    optimizer = torch.optim.Adam([param], lr=spec.lr, maximize=True)
    history: list[Tensor] = []
    with progress_bar(spec.steps, CALL, spec.progress) as advance:
        for step in range(spec.steps):
            with torch.enable_grad():
                image, output = forward(param, step)
                score = goal(output)
                objective = score.sum() - _penalty(spec.regularizers, image)
                (gradient,) = torch.autograd.grad(objective, param)
            history.append(score.detach())
            if spec.gradient_filter is not None:
                gradient = _filtered(spec.gradient_filter, gradient)
            param.grad = gradient
            optimizer.step()
            param.grad = None
            with torch.no_grad():
                if spec.precondition is not None and (step + 1) % spec.precondition.every == 0:
                    param.copy_(spec.precondition(param))
                if parameterization == "pixel" and spec.value_range is not None:
                    param.clamp_(*spec.value_range)
            advance(1)
    with torch.no_grad():
        image, output = forward(param)
        final = goal(output)
    scores = torch.stack(history) if history else final.new_zeros(0, final.shape[0])
    image = image.detach()
    if single:
        return Maximized(image[0], scores[:, 0], final[0])
    return Maximized(image, scores, final)


def _resolve(target: TargetLike, output: Tensor) -> TargetBase:
    goal = as_target(target, CALL)
    goal.check(output, CALL)
    return goal.resolve(output)


class _Spec(NamedTuple):
    steps: int
    lr: float
    regularizers: tuple[Callable[[Tensor], Tensor], ...]
    precondition: Blur | None
    gradient_filter: Callable[[Tensor], Tensor] | None
    value_range: tuple[float, float] | None
    progress: bool | None
    jitter: int

    @classmethod
    def check(
        cls,
        model_fn: object,
        *,
        steps: object,
        lr: object,
        regularizers: object,
        precondition: object,
        gradient_filter: object,
        parameterization: object,
        value_range: object,
        progress: object,
        jitter: object,
    ) -> _Spec:
        check_model_fn(model_fn, CALL)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise fail(CALL, "steps", f"got {describe(steps)}", "pass a whole number >= 0")
        if (
            isinstance(lr, bool)
            or not isinstance(lr, (int, float))
            or not math.isfinite(lr)
            or lr <= 0
        ):
            raise fail(CALL, "lr", f"got {describe(lr)}", "pass a finite learning rate > 0")
        if parameterization not in ("pixel", "fourier"):
            raise fail(
                CALL,
                "parameterization",
                f"got {describe(parameterization)}",
                "use 'pixel' or 'fourier'",
            )
        if progress is not None and not isinstance(progress, bool):
            raise fail(CALL, "progress", f"got {describe(progress)}", "pass True, False or None")
        if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
            raise fail(
                CALL, "jitter", f"got {describe(jitter)}", "pass a whole number of pixels >= 0"
            )
        blur = _check_precondition(precondition)
        filt = _check_filter(gradient_filter)
        if parameterization == "fourier":
            for name, value in (("precondition", blur), ("gradient_filter", filt)):
                if value is not None:
                    raise fail(
                        CALL,
                        name,
                        "acts on pixels, and the 'fourier' parameterization optimises a spectrum "
                        "that is already scaled towards low frequencies",
                        f"use parameterization='pixel' with {name}, or drop it",
                    )
        return cls(
            steps=steps,
            lr=float(lr),
            regularizers=_check_regularizers(regularizers),
            precondition=blur,
            gradient_filter=filt,
            value_range=_check_range(value_range),
            progress=progress,
            jitter=jitter,
        )


def _check_regularizers(regularizers: object) -> tuple[Callable[[Tensor], Tensor], ...]:
    if callable(regularizers):
        regularizers = (regularizers,)
    if isinstance(regularizers, (str, bytes)) or not isinstance(regularizers, Sequence):
        raise fail(
            CALL,
            "regularizers",
            f"got {describe(regularizers)}",
            "pass a list such as [reg.l2(1e-3), reg.tv(1e-2)], or () for none",
        )
    for item in regularizers:
        if not callable(item):
            raise fail(
                CALL,
                "regularizers",
                f"{describe(item)} is not a regularizer",
                "use occlens.reg.l1/l2/tv or a function Tensor[B, C, H, W] -> Tensor[B]",
            )
    return tuple(regularizers)


def _check_precondition(precondition: object) -> Blur | None:
    if precondition is None or isinstance(precondition, Blur):
        return precondition
    if isinstance(precondition, (int, float)) and not isinstance(precondition, bool):
        try:
            return make_blur(precondition)
        except ValueError as error:
            raise fail(CALL, "precondition", str(error), "pass a sigma > 0") from None
    raise fail(
        CALL,
        "precondition",
        f"got {describe(precondition)}",
        "pass occlens.reg.blur(sigma, every=k), a sigma, or None",
    )


def _check_filter(gradient_filter: object) -> Callable[[Tensor], Tensor] | None:
    if gradient_filter is None or isinstance(gradient_filter, FourierFilter):
        return gradient_filter
    if isinstance(gradient_filter, (int, float)) and not isinstance(gradient_filter, bool):
        try:
            return make_fourier(gradient_filter)
        except ValueError as error:
            raise fail(CALL, "gradient_filter", str(error), "pass a factor >= 0") from None
    if callable(gradient_filter):
        return gradient_filter  # type: ignore[return-value]
    raise fail(
        CALL,
        "gradient_filter",
        f"got {describe(gradient_filter)}",
        "pass occlens.reg.fourier(factor), a factor, a function on the gradient, or None",
    )


def _check_range(value_range: object) -> tuple[float, float] | None:
    if value_range is None:
        return None
    if (
        not isinstance(value_range, (tuple, list))
        or len(value_range) != 2
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value_range
        )
        or not value_range[0] < value_range[1]
    ):
        raise fail(
            CALL,
            "value_range",
            f"got {describe(value_range)}",
            "pass (lo, hi) with finite lo < hi, or None for unconstrained pixels",
        )
    return float(value_range[0]), float(value_range[1])


def _check_decorrelate(decorrelate: object, parameterization: str, channels: int) -> bool:
    if decorrelate is None:
        return parameterization == "fourier" and channels == 3
    if not isinstance(decorrelate, bool):
        raise fail(CALL, "decorrelate", f"got {describe(decorrelate)}", "pass True, False or None")
    if decorrelate and parameterization != "fourier":
        raise fail(
            CALL,
            "decorrelate",
            "colour decorrelation is part of the 'fourier' parameterization",
            "pass parameterization='fourier', or drop decorrelate",
        )
    if decorrelate and channels != 3:
        raise fail(
            CALL,
            "decorrelate",
            f"colour decorrelation needs 3 (RGB) channels, the image has {channels}",
            "pass decorrelate=False",
        )
    return decorrelate


def _check_normalize(normalize: object, channels: int) -> tuple[Tensor, Tensor] | None:
    if normalize is None:
        return None
    fix = "pass (mean, std), each a number or one value per channel, with std > 0"
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise fail(CALL, "normalize", f"got {describe(normalize)}", fix)
    parts = []
    for value in normalize:
        try:
            part = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise fail(CALL, "normalize", f"got {describe(normalize)}", fix) from None
        if part.numel() not in (1, channels) or not bool(torch.isfinite(part).all()):
            raise fail(
                CALL,
                "normalize",
                f"{describe(value)} does not give one finite value per channel ({channels})",
                fix,
            )
        parts.append(part)
    if not bool((parts[1] > 0).all()):
        raise fail(CALL, "normalize", f"std {parts[1].tolist()} is not positive", fix)
    return parts[0], parts[1]


def _normalizer(mean_std: tuple[Tensor, Tensor] | None, like: Tensor) -> Callable[[Tensor], Tensor]:
    if mean_std is None:
        return lambda image: image
    mean, std = (t.to(dtype=like.dtype, device=like.device).view(1, -1, 1, 1) for t in mean_std)
    return lambda image: (image - mean) / std


def _truncated(model_fn: ModelFn, layer: object) -> ModelFn:
    if layer is None:
        return model_fn
    if not isinstance(model_fn, nn.Module):
        raise fail(
            CALL,
            "layer",
            "a target at a layer needs the model as an nn.Module, to find the layer in",
            "pass the nn.Module itself, or a function returning that layer's activation",
        )
    head, _ = split_at(model_fn, layer, CALL, "layer")  # type: ignore[arg-type]
    return head


def _start(
    model_fn: object, init: object, shape: object, value_range: tuple[float, float] | None
) -> tuple[Tensor | tuple[int, int, int, int], bool]:
    """The initial batch, or the batch shape to draw noise for; and whether it was one image."""
    if init is not None and shape is not None:
        raise fail(CALL, "shape", "both init and shape were given", "pass one of them")
    if init is not None:
        batch, single = image_batch(init, CALL, "init")
        batch = batch.detach()
        wanted = _model_dtype_device(model_fn)
        if wanted is not None and (batch.dtype, batch.device) != wanted:
            dtype, device = wanted
            raise fail(
                CALL,
                "init",
                f"{describe(batch)} on {batch.device}, but the model's tensors are "
                f"{str(dtype).removeprefix('torch.')} on {device}",
                f"convert it: init.to({str(device)!r}, {dtype})",
            )
        if value_range is not None:
            low, high = float(batch.min()), float(batch.max())
            if low < value_range[0] or high > value_range[1]:
                raise fail(
                    CALL,
                    "init",
                    f"its pixels span [{low:.4g}, {high:.4g}], outside value_range={value_range}",
                    "pass an image inside value_range (normalise with normalize=, not by hand), "
                    "or value_range=None",
                )
        return batch.clone(), single
    if shape is None:
        raise fail(
            CALL,
            "shape",
            "neither init nor shape was given",
            "pass shape=(C, H, W) (e.g. (3, 64, 64)) to start from noise, or an init image",
        )
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) not in (3, 4)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise fail(
            CALL,
            "shape",
            f"got {describe(shape)}",
            "pass (C, H, W) or (B, C, H, W) with positive sizes",
        )
    single = len(shape) == 3
    full = (1, *shape) if single else tuple(shape)
    return full, single  # type: ignore[return-value]


def _model_dtype_device(model_fn: object) -> tuple[torch.dtype, torch.device] | None:
    """The dtype and device of an ``nn.Module``'s first floating-point tensor, if it has one."""
    if isinstance(model_fn, nn.Module):
        for tensor in (*model_fn.parameters(), *model_fn.buffers()):
            if tensor.dtype.is_floating_point:
                return tensor.dtype, tensor.device
    return None


def _dtype_device(model_fn: object) -> tuple[torch.dtype, torch.device]:
    """Where noise for a `shape` start goes: the model's dtype and device, else the defaults."""
    found = _model_dtype_device(model_fn)
    return found if found is not None else (torch.get_default_dtype(), torch.device("cpu"))


def _parameterize(
    parameterization: str,
    start: Tensor | tuple[int, int, int, int],
    value_range: tuple[float, float] | None,
    decorrelate: bool,
    rng: torch.Generator | None,
    dtype_device: tuple[torch.dtype, torch.device],
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``(image_fn, param)``: the image is ``image_fn(param)``, and `param` is what Adam moves.

    Noise is drawn in float64 on the CPU from `key`, then cast to the model's dtype and device.
    """
    if isinstance(start, Tensor):
        dtype, device, shape = start.dtype, start.device, tuple(start.shape)
    else:
        dtype, device = dtype_device
        shape = start
    if parameterization == "pixel":
        if not isinstance(start, Tensor):
            low, high = value_range if value_range is not None else (0.0, 1.0)
            noise = torch.rand(shape, generator=rng, dtype=torch.float64)
            start = (low + (high - low) * noise).to(dtype=dtype, device=device)
        return (lambda p: p), start.clone().requires_grad_()
    fourier = _Fourier(shape, value_range, decorrelate, dtype, device)
    if not isinstance(start, Tensor):
        _, _, height, width = shape
        spectrum = torch.randn(
            (*shape[:2], height, width // 2 + 1, 2), generator=rng, dtype=torch.float64
        )
        param = (spectrum * _FOURIER_SD).to(dtype=dtype, device=device)
    else:
        param = fourier.invert(start)  # type: ignore[arg-type]
    return fourier.image, param.requires_grad_()


class _Fourier:
    """lucid's image parameterisation: a spectrum scaled by ``1 / frequency``, then colour."""

    def __init__(
        self,
        shape: tuple[int, ...],
        value_range: tuple[float, float] | None,
        decorrelate: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        height, width = shape[-2:]
        fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
        fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
        frequency = torch.sqrt(fy**2 + fx**2).clamp(min=1.0 / max(height, width))
        self.scale = (1.0 / frequency).to(dtype=dtype, device=device)
        self.size = (height, width)
        self.value_range = value_range
        self.color: Tensor | None = None
        if decorrelate:
            color = torch.tensor(_COLOR_SQRT, dtype=torch.float64)
            color = color / torch.linalg.vector_norm(color, dim=0).max()
            self.color = color.to(dtype=dtype, device=device)

    def image(self, param: Tensor) -> Tensor:
        spectrum = torch.view_as_complex(param) * self.scale
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / _FOURIER_DIVISOR
        if self.color is not None:
            image = torch.einsum("ij,bjhw->bihw", self.color, image)
        if self.value_range is None:
            return image
        low, high = self.value_range
        return low + (high - low) * torch.sigmoid(image)

    def invert(self, image: Tensor) -> Tensor:
        """The parameter whose image is `image` (up to the sigmoid's clamp at the range ends)."""
        raw = image.detach()
        if self.value_range is not None:
            low, high = self.value_range
            eps = 1e-4
            raw = torch.logit(((raw - low) / (high - low)).clamp(eps, 1 - eps))
        if self.color is not None:
            raw = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.color), raw)
        spectrum = torch.fft.rfft2(raw * _FOURIER_DIVISOR, norm="ortho") / self.scale
        return torch.view_as_real(spectrum).contiguous()


def _penalty(regularizers: tuple[Callable[[Tensor], Tensor], ...], image: Tensor) -> Tensor:
    total = image.new_zeros(())
    for regularizer in regularizers:
        value = regularizer(image)
        if not isinstance(value, Tensor) or value.shape not in ((), image.shape[:1]):
            raise fail(
                CALL,
                "regularizers",
                f"{describe(regularizer)} returned {describe(value)} for the image "
                f"{describe(image)}",
                "return one penalty per image, Tensor[B] (or a scalar)",
            )
        total = total + value.sum()
    return total


def _filtered(gradient_filter: Callable[[Tensor], Tensor], gradient: Tensor) -> Tensor:
    out = gradient_filter(gradient)
    if not isinstance(out, Tensor) or out.shape != gradient.shape:
        raise fail(
            CALL,
            "gradient_filter",
            f"returned {describe(out)} for a gradient {describe(gradient)}",
            "return a tensor of the gradient's shape",
        )
    return out
