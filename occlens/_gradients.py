"""Gradients of a target score: `saliency` and `input_x_gradient`, and the core they share.

One forward pass and one backward pass, via ``torch.func.vjp``: the forward's output is checked
and the target resolved on it (a `peak` on the clean input) before the backward runs. Unless the
caller differentiates the result (an input that requires grad, or a ``torch.func.grad`` around
the call), no graph is recorded through the parameters. Gradients
of a batch come from the summed score, which equals per-sample gradients for a model in eval
mode. Everything is a ``torch.func`` transform, so these functions compose with ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor
from torch.func import grad, vjp

from ._checks import check_model, check_output, image_batch, model_errors
from ._errors import fail
from ._fast_kernels import fast_kernels
from ._layers import split_at
from ._rewire import Rewired
from ._targets import TargetBase, as_target
from ._types import Key, ModelFn, TargetLike

__all__ = [
    "autograd_leaf",
    "input_x_gradient",
    "require_autograd",
    "saliency",
    "score_gradient",
    "transformed",
]


def require_autograd(call: str, argument: str = "x") -> None:
    """Refuse a gradient method called inside ``torch.inference_mode()``, which records nothing."""
    if torch.is_inference_mode_enabled():
        raise fail(
            call,
            argument,
            "called inside torch.inference_mode(), where no gradient can be recorded",
            "call it outside the inference_mode block (torch.no_grad() around it is fine: occlens "
            "turns gradients on where it needs them)",
        )


def autograd_leaf(point: Tensor) -> Tensor:
    """A leaf holding `point`'s values that records gradients. An inference tensor (one made
    under ``torch.inference_mode()``) cannot record them, so it is copied."""
    return (point.clone() if point.is_inference() else point.detach()).requires_grad_()


def _split(model_fn: ModelFn, at: str, call: str) -> tuple[ModelFn, Callable]:
    """``(head, tail)`` at layer `at`; a rewired model keeps its backward rules in the tail."""
    inner = model_fn.model if isinstance(model_fn, Rewired) else model_fn
    if not isinstance(inner, torch.nn.Module):
        raise fail(
            call,
            "at",
            "a gradient at a layer needs the model as an nn.Module, to find the layer in",
            "pass the nn.Module (or guided(module)), not a function wrapping it",
        )
    head, tail = split_at(inner, at, call)
    if not isinstance(model_fn, Rewired):
        return head, tail

    def rewired_tail(x: Tensor, activation: Tensor) -> Tensor:
        with model_fn.mode():
            return tail(x, activation)

    return head, rewired_tail


def _differentiated(inputs: Tensor) -> bool:
    """Whether a caller's autograd or ``torch.func.grad`` is tracking `inputs` (under vmap too)."""
    if not torch.is_grad_enabled():
        return False
    functorch = torch._C._functorch
    tensor = inputs
    while True:
        if tensor.requires_grad or functorch.is_gradtrackingtensor(tensor):
            return True
        if not functorch.is_batchedtensor(tensor):
            return False
        tensor = functorch.get_unwrapped(tensor)


def transformed() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, ...) is running around this call."""
    return torch._C._functorch.maybe_current_level() is not None


def score_gradient(
    model_fn: ModelFn,
    inputs: Tensor,
    target: TargetLike,
    call: str,
    *,
    at: str | None = None,
) -> tuple[Tensor, Tensor, TargetBase]:
    """``d sum_b score_b / d inputs`` (or ``/ d activation of at``), the point, and the target.

    Returns the gradient, the tensor it is taken at (`inputs`, or the layer's activation) and the
    target as resolved on this forward pass. The model sees a copy of the point, so a model that
    writes into its input in place neither fails nor changes the caller's tensor.
    """
    require_autograd(call)
    check_model(model_fn, inputs, call)
    if inputs.is_inference():  # it could not enter a computation that autograd records
        inputs = inputs.clone()
    if at is None:
        point, function = inputs, model_fn
    else:
        head, tail = _split(model_fn, at, call)
        with (
            torch.no_grad() if not _differentiated(inputs) else nullcontext(),
            model_errors(call, inputs),
        ):
            point = head(inputs)

        def function(activation: Tensor) -> Tensor:
            return tail(inputs, activation)

    if not transformed() and not _differentiated(inputs):
        return _eager_gradient(function, point, inputs, target, call)
    return _functional_gradient(function, point, inputs, target, call)


def _eager_gradient(
    function: Callable[[Tensor], Tensor],
    point: Tensor,
    inputs: Tensor,
    target: TargetLike,
    call: str,
) -> tuple[Tensor, Tensor, TargetBase]:
    """Plain autograd, for a call that nothing differentiates or transforms: the fastest path.

    Custom ``autograd.Function`` backward rules (guided, deconvnet) cost noticeably more under
    ``torch.func.vjp`` than under plain autograd. A stem convolution onto the colour channels
    gets its input gradient from faster kernels, and max pools run channels-last
    (`occlens._fast_kernels`).
    """
    leaf = autograd_leaf(point)
    with torch.enable_grad(), model_errors(call, inputs), fast_kernels():
        output = function(leaf.clone())
    check_output(output, inputs, call)
    goal = _resolved(target, output, call)
    with torch.enable_grad(), model_errors(call, inputs):
        (gradient,) = torch.autograd.grad(goal(output).sum(), leaf)
    return gradient, point, goal


def _functional_gradient(
    function: Callable[[Tensor], Tensor],
    point: Tensor,
    inputs: Tensor,
    target: TargetLike,
    call: str,
) -> tuple[Tensor, Tensor, TargetBase]:
    """``torch.func.vjp``: composes with vmap, and with a caller's grad for second derivatives."""
    # torch.func.vjp ignores an outer no_grad; it only stops plain autograd from recording a graph
    # through the parameters, which a caller who differentiates the gradient itself needs.
    recording = torch.enable_grad if _differentiated(inputs) else torch.no_grad
    with recording(), model_errors(call, inputs):
        output, pullback = vjp(lambda p: function(p.clone()), point)
    check_output(output, inputs, call)
    goal = _resolved(target, output, call)
    with recording(), model_errors(call, inputs):
        seed = grad(lambda out: goal(out).sum())(output)
        (gradient,) = pullback(seed)
    return gradient, point, goal


def _resolved(target: TargetLike, output: Tensor, call: str) -> TargetBase:
    goal = as_target(target, call)
    goal.check(output, call)
    return goal.resolve(output)


def saliency(
    model_fn: ModelFn,
    x: Tensor,
    target: TargetLike,
    *,
    at: str | None = None,
    key: Key | None = None,
) -> Tensor:
    """Gradient of the target score with respect to the input, or to the activation of layer `at`.

    `at` is a layer name as in `occlens.layer` (DNNBrain's ``to_layer``). Pass ``guided(model)``
    or ``deconvnet(model)`` for those backward rules. `target` is a class index, a
    ``LongTensor[B]`` (one per image) or a target from `occlens.targets`. No absolute value is
    taken: compose with ``occlens.maps.abs``. `key` is accepted for composition and unused.

    Shapes: ``x [C, H, W] -> [C, H, W]``, ``x [B, C, H, W] -> [B, C, H, W]``; with `at`, the
    activation's shape ``[C', H', W']`` / ``[B, C', H', W']``.

    >>> import torch, occlens as ol
    >>> model = lambda x: (3 * x).sum(dim=(1, 2, 3))[:, None] ** 2  # score (3 sum x)^2
    >>> ol.saliency(model, torch.ones(1, 2, 2), 0)  # 2 * (3 * 4) * 3 everywhere
    tensor([[[72., 72.],
             [72., 72.]]])
    """
    batch, single = image_batch(x, "saliency")
    gradient, _, _ = score_gradient(model_fn, batch, target, "saliency", at=at)
    return gradient[0] if single else gradient


def input_x_gradient(
    model_fn: ModelFn,
    x: Tensor,
    target: TargetLike,
    *,
    at: str | None = None,
    key: Key | None = None,
) -> Tensor:
    """The input times the gradient of the target score (Captum's ``InputXGradient``).

    With `at`, the activation of that layer times the gradient with respect to it. Shapes as in
    `saliency`. `key` is accepted for composition and unused.

    >>> import torch, occlens as ol
    >>> model = lambda x: (x**2).sum(dim=(1, 2, 3))[:, None]  # gradient 2x, so x * 2x
    >>> ol.input_x_gradient(model, torch.full((1, 1, 2), 3.0), 0)
    tensor([[[18., 18.]]])
    """
    batch, single = image_batch(x, "input_x_gradient")
    gradient, point, _ = score_gradient(model_fn, batch, target, "input_x_gradient", at=at)
    product = point * gradient
    return product[0] if single else product
