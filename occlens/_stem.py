"""A model's linear stem: one backward pass through the first layer for many gradients.

When the input reaches the network only through one linear layer ``L`` (a convolution or
``nn.Linear``, as in AlexNet, VGG and ResNet), possibly after affine preprocessing such as
``(x - mean) / std``, the input gradient of any score is ``L^T g``, with ``g`` the gradient at
``L``'s output. A weighted sum of input gradients over many inputs is then
``L^T (sum_k w_k g_k)``: one backward pass through ``L`` instead of one per input. The forward
passes still run on the real inputs (interpolating ``L``'s outputs instead would move max-pool
ties by rounding and change the gradients).

The stem's transposed convolution on three colour channels is a slow kernel: on the AlexNet
reference it is 14% of a forward and backward pass, on ResNet18 9%. The results equal the
per-input gradients up to rounding (the sums are taken in another order).

Only plain eager calls take this path: under ``vmap`` or ``grad``, for a model that does not
trace with ``torch.fx``, or for a first layer with hooks or an overridden ``forward``, the
gradients are taken image by image as before. Finding the stem traces the model (2-40 ms, the
shapes model to ResNet18): on a call of a few milliseconds that costs more than it saves, but a
timed choice would make the same call give different roundings from run to run.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from ._checks import check_output, model_errors
from ._fast_kernels import fast_kernels
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
    head: Callable[[Tensor], Tensor]
    tail: Callable[[Tensor], Tensor]

    def forward(self, inputs: Tensor) -> Tensor:
        """The stem's output on `inputs`, without recording a graph."""
        with torch.no_grad():
            return self.head(inputs)

    def gradient(self, activation: Tensor, target: TargetBase, call: str) -> Tensor:
        """``d sum_b score_b / d activation`` for a batch of stem outputs."""
        leaf = autograd_leaf(activation)
        # The tail starts with a copy of its input (see `split_at`), so in-place layers after the
        # stem cannot write into the leaf.
        with torch.enable_grad(), model_errors(call, activation), fast_kernels():
            output = check_output(self.tail(leaf), activation, call)
            goal = _resolved(target, output, call)
            (gradient,) = torch.autograd.grad(goal(output).sum(), leaf)
        return gradient

    def pull_back(self, cotangent: Tensor, inputs: Tensor) -> Tensor:
        """``L^T cotangent``: the input gradient, shaped like `inputs`, that the stem's output
        gradient `cotangent` stands for."""
        leaf = autograd_leaf(inputs)
        with torch.enable_grad(), fast_kernels():
            output = self.head(leaf)
            (gradient,) = torch.autograd.grad(output, leaf, cotangent.to(output.dtype))
        return gradient


_AFFINE_FUNCTIONS = {
    operator.add: "either",
    operator.sub: "either",
    operator.mul: "either",
    operator.truediv: "first",
    operator.neg: "only",
    torch.add: "either",
    torch.sub: "either",
    torch.mul: "either",
    torch.div: "first",
    torch.neg: "only",
}
_AFFINE_METHODS = {"add": "either", "sub": "either", "mul": "either", "div": "first", "neg": "only"}


def _affine_step(node: fx.Node, value: fx.Node) -> bool:
    """Whether `node` maps `value` affinely: ``value * c``, ``c - value``, ``value / c``, ...
    with ``c`` a number or a model tensor (so ``(x - mean) / std`` preprocessing passes)."""
    if node.op == "call_function":
        where = _AFFINE_FUNCTIONS.get(node.target)  # type: ignore[call-overload]
    elif node.op == "call_method":
        where = _AFFINE_METHODS.get(str(node.target))
    else:
        return False
    if where is None or node.kwargs or node.args.count(value) != 1:
        return False
    others = [a for a in node.args if a is not value]
    constant = all(
        isinstance(a, (int, float)) or (isinstance(a, fx.Node) and a.op == "get_attr")
        for a in others
    )
    position_ok = {"either": True, "first": node.args[0] is value, "only": not others}[where]
    return constant and position_ok


def _first_linear_layer(start: fx.Node) -> fx.Node | None:
    """The module call that the input reaches through affine steps alone, each read once."""
    node = start
    while len(node.users) == 1:
        (user,) = node.users
        if user.op == "call_module":
            return user if user.args == (node,) and not user.kwargs else None
        if not _affine_step(user, node):
            return None
        node = user
    return None


def _hidden_hooks(model: nn.Module, graph: fx.Graph) -> bool:
    """Hooks on a module that the trace inlined, where the traced graph would not run them."""
    called = {node.target for node in graph.nodes if node.op == "call_module"}
    return any(
        (module._forward_hooks or module._forward_pre_hooks) and name not in called
        for name, module in model.named_modules()
    )


def _hooked(module: nn.Module) -> bool:
    hooks = torch.nn.modules.module
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
    )


def linear_stem(model_fn: object, inputs: Tensor, call: str, *, copies: int) -> LinearStem | None:
    """The model's linear stem, or None where the gradients must be taken input by input.

    `inputs` is the batch the call explains: a caller differentiating it, or a ``torch.func``
    transform around the call, rules the shortcut out; so does a single copy (`copies` gradients
    of the batch are to be summed), which has nothing to share. The choice depends on the model
    and the call alone, never on timings, so the same call always gives the same numbers.
    """
    if copies < 2 or transformed() or _differentiated(inputs):
        return None
    if torch.is_inference_mode_enabled():
        return None
    inner = model_fn.model if isinstance(model_fn, Rewired) else model_fn
    if not isinstance(inner, nn.Module):
        return None
    graph = _trace(inner, None)
    if graph is None or _hidden_hooks(inner, graph):
        return None
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    first = _first_linear_layer(placeholders[0])
    if first is None:
        return None
    name = str(first.target)
    layer = inner.get_submodule(name)
    calls = sum(node.op == "call_module" and node.target == name for node in graph.nodes)
    if type(layer).forward not in _LINEAR_FORWARDS or _hooked(layer) or calls != 1:
        return None
    head, tail = split_at(inner, name, call)
    if not isinstance(tail, fx.GraphModule) or not isinstance(head, fx.GraphModule):
        return None
    log.debug("occlens: %s pulls gradients back through the linear stem %r once", call, name)

    def rest(activation: Tensor) -> Tensor:
        # The input is not read after the stem: the tail's first argument is a stand-in.
        if isinstance(model_fn, Rewired):
            with model_fn.mode():
                return tail(activation, activation)
        return tail(activation, activation)

    return LinearStem(name, head, rest)
