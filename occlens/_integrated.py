"""Integrated gradients (Sundararajan et al. 2017), chunked over the integration points.

``IG(x) = (x - x0) * sum_k w_k * grad f(x0 + a_k (x - x0))`` with the points ``a_k`` and weights
``w_k`` of Captum's approximation methods, so the same settings give Captum's numbers.
Completeness: ``IG(x).sum()`` approaches ``f(x) - f(x0)`` as `steps` grows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._checks import clean_forward, image_batch, optional_positive_int
from ._errors import describe, fail
from ._fills import plan_fill
from ._gradients import require_autograd, score_gradient
from ._memory import backward_copies
from ._progress import progress as progress_bar
from ._stem import linear_stem
from ._targets import as_target
from ._types import Key, ModelFn, TargetLike

__all__ = ["integrated_gradients", "integration_points"]

CALL = "integrated_gradients"
METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def integration_points(method: str, steps: int) -> tuple[Tensor, Tensor]:
    """Points in ``[0, 1]`` and their weights, ``float64 [steps]`` each, as Captum places them.

    >>> points, weights = integration_points("riemann_trapezoid", 3)
    >>> points.tolist(), weights.tolist()
    ([0.0, 0.5, 1.0], [0.25, 0.5, 0.25])
    """
    if method not in METHODS:
        raise fail(CALL, "method", f"got {method!r}", f"use one of {', '.join(map(repr, METHODS))}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise fail(CALL, "steps", f"got {describe(steps)}", "pass a positive int, e.g. 50")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise fail(
                CALL, "steps", "the trapezoid rule needs at least 2 steps", "pass steps >= 2"
            )
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    points = (torch.arange(steps, dtype=torch.float64) + offset) / steps
    return points, torch.full((steps,), 1.0 / steps, dtype=torch.float64)


def integrated_gradients(
    model_fn: ModelFn,
    x: Tensor,
    target: TargetLike,
    *,
    baseline: object = 0.0,
    steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    key: Key | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Integrated gradients of the target score from `baseline` to `x`.

    `baseline` is a number, a tensor (``[C]``, ``[C, 1, 1]``, ``[C, H, W]`` or ``[B, C, H, W]``),
    ``"mean"`` or ``fills.blur(sigma)``. `method` is Captum's: ``"gausslegendre"`` (its default)
    or ``"riemann_left" | "riemann_right" | "riemann_middle" | "riemann_trapezoid"``. `chunk_size`
    bounds the integration points per forward/backward pass (by default from `memory_budget`).
    A `peak` target is resolved on `x`. `key` is accepted for composition and unused. Where the
    input reaches the model only through a linear first layer (AlexNet, VGG, ResNet), the
    gradients are summed at that layer's output and pulled back through it once.

    Shapes: ``x [C, H, W] -> [C, H, W]``, ``x [B, C, H, W] -> [B, C, H, W]``.

    >>> import torch, occlens as ol
    >>> model = lambda x: (x**2).sum(dim=(1, 2, 3))[:, None]  # f(x) = sum x^2, f(0) = 0
    >>> ig = ol.integrated_gradients(model, torch.tensor([[[1.0, 2.0]]]), 0, steps=20)
    >>> ig, float(ig.sum())  # completeness: sums to f(x) - f(0) = 5
    (tensor([[[1., 4.]]]), 5.0)
    """
    batch, single = image_batch(x, CALL)
    require_autograd(CALL)
    points, weights = integration_points(method, steps)
    plan = plan_fill(baseline, batch, CALL, argument="baseline")
    if plan.static is None:
        raise fail(
            CALL,
            "baseline",
            f"a {'random' if plan.noise else 'function'} baseline is no fixed point to start from",
            "pass a number, a tensor, 'mean' or fills.blur(sigma)",
        )
    optional_positive_int(chunk_size, CALL, "chunk_size")
    optional_positive_int(memory_budget, CALL, "memory_budget")
    start = plan.static.expand_as(batch)
    clean, work = clean_forward(model_fn, batch, CALL, measure=chunk_size is None)
    goal = as_target(target, CALL)
    goal.check(clean, CALL)
    goal = goal.resolve(clean)
    per_call = chunk_size or backward_copies(work.bytes, batch, memory_budget)
    path = batch - start
    stem = linear_stem(model_fn, batch, CALL, copies=steps)
    total = torch.zeros((), dtype=torch.float64, device=batch.device)
    with progress_bar(steps, CALL, progress) as advance:
        for first in range(0, steps, per_call):
            alphas = points[first : first + per_call].to(batch.dtype).to(batch.device)
            count = alphas.shape[0]
            inputs = (start + alphas.view(-1, 1, 1, 1, 1) * path).reshape(-1, *batch.shape[1:])
            if stem is not None:  # gradients at the stem's output, pulled back once at the end
                grads = stem.gradient(stem.forward(inputs), goal.tile(count), CALL)
            else:
                grads, _, _ = score_gradient(model_fn, inputs, goal.tile(count), CALL)
            # The weighted sum over this chunk's points is one matrix-vector product; the chunks
            # are summed in float64.
            w = weights[first : first + per_call].to(grads.dtype).to(batch.device)
            total = total + (w @ grads.reshape(count, -1)).double().view(-1, *grads.shape[1:])
            advance(count)
    if stem is not None:
        total = stem.pull_back(total, batch)
    result = (total.double() * path.double()).to(batch.dtype)
    return result[0] if single else result
