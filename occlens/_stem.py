"""A model's linear stem: one backward pass through the first layer for many gradients.

When the input reaches the network only through one linear layer ``L`` (a convolution or
``nn.Linear``, as in AlexNet, VGG and ResNet), the input gradient of any score is ``L^T g``,
with ``g`` the gradient at ``L``'s output. A weighted sum of input gradients over many inputs
is then ``L^T (sum_k w_k g_k)``: one backward pass through ``L`` instead of one per input.
Integrated gradients also gets ``L``'s forward pass for free, since ``L`` is affine:
``L(x0 + a (x - x0)) = L(x0) + a (L(x) - L(x0))``.

The stem's transposed convolution on three colour channels is a slow kernel: on the AlexNet
reference it is 14% of a forward and backward pass, on ResNet18 9%. The results equal the
per-input gradients up to rounding (the sums are taken in another order).

Only plain eager calls take this path: under ``vmap`` or ``grad``, for a model that does not
trace with ``torch.fx``, or for a first layer with hooks or an overridden ``forward``,
the gradients are taken image by image as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from ._checks import check_output, model_errors
from ._gradients import _differentiated, _resolved, autograd_leaf, transformed
from ._layers import _trace, split_at
from ._rewire import Rewired
from ._targets import TargetBase

__all__ = ["LinearStem", "linear_stem"]

log = logging.getLogger("occlens")

# The forward of these classes is linear in the input whatever the padding mode, groups,
# dilation or stride; a subclass that overrides forward may not be.
_LINEAR_FORWARDS = {cls.forward for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)}


@dataclass(frozen=True)
class LinearStem:
    """The first layer of a model, linear in the input, and the rest of the model after it."""

    name: str
    layer: nn.Module
    tail: Callable[[Tensor], Tensor]

    def forward(self, inputs: Tensor) -> Tensor:
        """The stem's output on `inputs`, without recording a graph."""
        with torch.no_grad():
            return self.layer(inputs)

    def gradient(self, activation: Tensor, target: TargetBase, call: str) -> Tensor:
        """``d sum_b score_b / d activation`` for a batch of stem outputs."""
        leaf = autograd_leaf(activation)
        # The tail starts with a copy of its input (see `split_at`), so in-place layers after the
        # stem cannot write into the leaf.
        with torch.enable_grad(), model_errors(call, activation):
            output = check_output(self.tail(leaf), activation, call)
            goal = _resolved(target, output, call)
            (gradient,) = torch.autograd.grad(goal(output).sum(), leaf)
        return gradient

    def pull_back(self, cotangent: Tensor, inputs: Tensor) -> Tensor:
        """``L^T cotangent``: the input gradient, shaped like `inputs`, that the stem's output
        gradient `cotangent` stands for."""
        leaf = autograd_leaf(inputs)
        with torch.enable_grad():
            output = self.layer(leaf)
            (gradient,) = torch.autograd.grad(output, leaf, cotangent.to(output.dtype))
        return gradient


def _hooked(module: nn.Module) -> bool:
    hooks = torch.nn.modules.module
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
    )


def linear_stem(model_fn: object, inputs: Tensor, call: str) -> LinearStem | None:
    """The model's linear stem, or None where the gradients must be taken input by input.

    `inputs` is the batch the call explains: a caller differentiating it, or a ``torch.func``
    transform around the call, rules the shortcut out.
    """
    if transformed() or _differentiated(inputs) or torch.is_inference_mode_enabled():
        return None
    inner = model_fn.model if isinstance(model_fn, Rewired) else model_fn
    if not isinstance(inner, nn.Module):
        return None
    graph = _trace(inner, None)
    if graph is None:
        return None
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1 or len(placeholders[0].users) != 1:
        return None
    (first,) = placeholders[0].users
    if first.op != "call_module" or first.args != (placeholders[0],) or first.kwargs:
        return None
    name = str(first.target)
    layer = inner.get_submodule(name)
    calls = sum(node.op == "call_module" and node.target == name for node in graph.nodes)
    if type(layer).forward not in _LINEAR_FORWARDS or _hooked(layer) or calls != 1:
        return None
    _, tail = split_at(inner, name, call)
    if not isinstance(tail, fx.GraphModule):
        return None
    log.debug("occlens: %s pulls gradients back through the linear stem %r once", call, name)

    def rest(activation: Tensor) -> Tensor:
        # The input is not read after the stem: the tail's first argument is a stand-in.
        if isinstance(model_fn, Rewired):
            with model_fn.mode():
                return tail(activation, activation)
        return tail(activation, activation)

    return LinearStem(name, layer, rest)
