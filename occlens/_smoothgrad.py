"""SmoothGrad (Smilkov et al. 2017) as a transform of any attribution function.

The wrapped method runs on ``n`` noisy copies of the input, stacked into its batch dimension, and
the maps are averaged (or their squares, or their variance). The noise is drawn from the call's
``key`` outside any ``vmap``, one copy of the batch at a time, so the same key gives the same
numbers for every ``chunk_size``. It is drawn in float32 and cast, so a float64 input gets the
same noise as its float32 copy. Its standard deviation is ``sigma * (max - min)`` of each
input image; the input itself is never modified (DNNBrain's ``backprop_smooth`` adds its noise in
place and squares its sigma: not here).
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
from torch import Tensor

from ._checks import clean_forward, image_batch, optional_positive_int
from ._combine import call_method, derive_key
from ._errors import describe, fail
from ._gradients import saliency
from ._keys import generator
from ._memory import backward_copies
from ._stem import LinearStem, linear_stem
from ._targets import TargetBase, as_target
from ._types import AttributionFn, Key, Transform

__all__ = ["smoothgrad"]

CALL = "smoothgrad"
KINDS = ("mean", "square", "var")


def _check(n: object, sigma: object, kind: object, chunk_size: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise fail(CALL, "n", f"got {describe(n)}", "pass the number of noisy samples, e.g. 50")
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, numbers.Real)
        or not (math.isfinite(sigma) and sigma >= 0)
    ):
        raise fail(CALL, "sigma", f"got {describe(sigma)}", "pass a noise level >= 0, e.g. 0.15")
    if kind not in KINDS:
        raise fail(CALL, "kind", f"got {kind!r}", f"use one of {', '.join(map(repr, KINDS))}")
    optional_positive_int(chunk_size, CALL, "chunk_size")


def _plan(
    model_fn, batch: Tensor, target: object, chunk_size: int | None, n: int
) -> tuple[TargetBase, int]:
    """The target, checked and resolved on the clean input (a `peak` must not move with the
    noise), and the noisy copies per call: `chunk_size`, or from the memory budget as for a
    forward and backward pass per copy, measured on the same clean forward pass."""
    goal = as_target(target, CALL)
    clean, work = clean_forward(model_fn, batch, CALL, measure=chunk_size is None)
    goal.check(clean, CALL)
    goal = goal.resolve(clean)
    return goal, chunk_size or min(n, backward_copies(work.bytes, batch, None))


def _stem(method, options: dict, kind: str, model_fn, batch: Tensor, n: int) -> LinearStem | None:
    """The model's linear stem, where the mean of saliency maps can be pulled back through it
    once (see `occlens._stem`); None for other methods and kinds (not linear in the gradient)."""
    if method is not saliency or kind != "mean" or any(v is not None for v in options.values()):
        return None
    return linear_stem(model_fn, batch, CALL, copies=n)


def _accumulate(
    state: tuple[int, Tensor, Tensor] | None, value: Tensor, kind: str
) -> tuple[int, Tensor, Tensor]:
    """One step of ``(count, total, spread)`` in float64, one noisy copy at a time, in place.

    `total` is the running sum (``"mean"``, ``"square"``) or Welford's running mean (``"var"``);
    the spread is the sum of squares (``"square"``) or Welford's running sum of squared
    deviations (``"var"``), which does not cancel the way ``E[m^2] - E[m]^2`` does. Copies enter
    in the order they were drawn, so the result does not depend on how they were chunked.
    """
    if state is None:
        state = (0, torch.zeros_like(value, dtype=torch.float64), None)
        if kind != "mean":
            state = (0, state[1], torch.zeros_like(state[1]))
    count, total, spread = state
    count += 1
    if kind == "mean":
        total.add_(value)
    elif kind == "square":
        value = value.double()
        total.add_(value)
        spread.addcmul_(value, value)
    else:
        delta = value.double() - total
        total.add_(delta, alpha=1.0 / count)
        spread.add_(delta * (value - total))
    return count, total, spread


def _result(state: tuple[int, Tensor, Tensor], kind: str) -> Tensor:
    count, total, spread = state
    return total / count if kind == "mean" else spread / count


def smoothgrad(
    n: int = 50, sigma: float = 0.15, *, kind: str = "mean", chunk_size: int | None = None
) -> Transform:
    """A transform that averages a method's maps over `n` noisy copies of the input.

    Noise is Gaussian with standard deviation ``sigma * (max(x) - min(x))`` per image, drawn from
    the call's ``key`` (an int or a ``torch.Generator``; required unless ``sigma == 0``). Copy
    ``i`` of every image in a batch takes the same standard-normal draw, scaled per image, so an
    image gets the same noise, and the same map, in a batch as alone.
    `kind` is ``"mean"`` (SmoothGrad), ``"square"`` (the mean of squared maps, Captum's
    ``smoothgrad_sq``) or ``"var"`` (their variance, VarGrad). `chunk_size` bounds the noisy
    copies per call of the method (by default from the memory budget, as if each copy cost one
    forward and backward pass; the same key gives the same noise either way). Under ``vmap`` of
    a whole pipeline, pass ``randomness="same"``: every image then gets the noise it gets alone.
    The mean of `saliency` maps is summed at the output of a linear first layer, where the model
    has one, and pulled back through it once (see ``integrated_gradients``).

    >>> import torch, occlens as ol
    >>> smooth = ol.smoothgrad(n=8, sigma=0.1)(ol.saliency)
    >>> model, x = ol.testing.tiny_cnn(), torch.rand(3, 16, 16)
    >>> torch.equal(smooth(model, x, 2, key=0), smooth(model, x, 2, key=0))
    True
    >>> exact = ol.smoothgrad(n=8, sigma=0.0)(ol.saliency)
    >>> torch.equal(exact(model, x, 2), ol.saliency(model, x, 2))
    True
    """
    _check(n, sigma, kind, chunk_size)

    def transform(method: AttributionFn) -> AttributionFn:
        @functools.wraps(method)
        def smoothed(model_fn, x, target, *, key: Key | None = None, **options) -> Tensor:
            if sigma == 0:
                plain = call_method(method, model_fn, x, target, key=key, **options)
                return {"mean": plain, "square": plain * plain, "var": plain * 0}[kind]
            batch, single = image_batch(x, CALL)
            rng = generator(key, CALL, "the noise")
            inner_key = derive_key(rng)
            goal, step = _plan(model_fn, batch, target, chunk_size, n)
            stem = _stem(method, options, kind, model_fn, batch, n)
            scale = sigma * (batch.amax(dim=(1, 2, 3)) - batch.amin(dim=(1, 2, 3)))
            scale = scale.view(-1, 1, 1, 1)
            state, total = None, None
            for start in range(0, n, step):
                copies = min(step, n - start)
                noise = torch.empty((copies, 1, *batch.shape[1:]), dtype=torch.float32)
                for draw in noise:
                    draw.normal_(generator=rng)
                noise = noise.to(dtype=batch.dtype, device=batch.device)
                noisy = (batch + scale * noise).reshape(-1, *batch.shape[1:])
                if stem is not None:  # gradients at the stem's output, summed in float64
                    grads = stem.gradient(stem.forward(noisy), goal.tile(copies), CALL)
                    part = grads.reshape(copies, -1, *grads.shape[1:]).sum(0, dtype=torch.float64)
                    total = part if total is None else total + part
                    continue
                maps = call_method(
                    method, model_fn, noisy, goal.tile(copies), key=inner_key, **options
                )
                maps = maps.reshape(copies, batch.shape[0], *maps.shape[1:])
                for copy in maps:
                    state = _accumulate(state, copy, kind)
            if stem is not None:  # the mean gradient at the stem's output, pulled back once
                maps = stem.pull_back(total / n, batch)
                return maps[0] if single else maps
            result = _result(state, kind).to(maps.dtype)
            return result[0] if single else result

        return smoothed

    return transform
