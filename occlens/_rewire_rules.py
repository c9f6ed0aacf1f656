"""The backward rules of `guided` and `deconvnet`, and which torch functions they apply to.

`RECTIFIERS` maps each rectifier function to a parser of its call's arguments; `SMOOTH` lists the
smooth activations, by how they may write in place. See `occlens._rewire` for the policy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._errors import fail

__all__ = [
    "RECTIFIERS",
    "SMOOTH",
    "PositiveGrad",
    "PositiveStraightThrough",
    "Rectified",
    "RectifiedInPlace",
    "name_of",
    "write_back",
    "writes_in_place",
]


Gate = Callable[[Tensor], Tensor]


class Rectified(torch.autograd.Function):
    """``fn(x)`` forward; backward ``gate(saved) * relu(g)`` (guided) or ``relu(g)`` (deconvnet).

    `gate` reads the output, or the input when ``from_input``: gates read from the output stay
    valid when an in-place spelling later overwrites the input.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, fn: Callable, gate: Gate, guided: bool, from_input: bool) -> Tensor:
        return fn(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, _, gate, guided, from_input = inputs
        ctx.gate, ctx.guided = gate, guided
        ctx.save_for_backward(x if from_input else output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        (saved,) = ctx.saved_tensors
        return rectified_gradient(grad, saved, ctx.gate, ctx.guided), None, None, None, None


class RectifiedInPlace(torch.autograd.Function):
    """``torch.relu_(x)`` with the rules of `Rectified`, written into `x` as the model asked.

    For plain autograd only (no vmap rule): it saves the copy and the second pass that an
    out-of-place result written back into `x` costs, which is most of the price of guided
    backpropagation on a model with in-place ReLUs.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, guided: bool) -> Tensor:
        torch.relu_(x)
        ctx.mark_dirty(x)
        ctx.guided = guided
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        (saved,) = ctx.saved_tensors
        return rectified_gradient(grad, saved, _relu_gate, ctx.guided), None


def rectified_gradient(grad: Tensor, saved: Tensor, gate: Gate, guided: bool) -> Tensor:
    """``gate(saved) * relu(grad)`` (guided) or ``relu(grad)`` (deconvnet)."""
    if not guided:
        return grad.clamp(min=0)
    if gate is _relu_gate:  # two passes and, outside torch.func transforms, one new tensor
        gated = torch.ops.aten.threshold_backward(grad, saved, 0)
        if torch._C._functorch.maybe_current_level() is None:
            return gated.clamp_(min=0)
        return gated.clamp(min=0)
    return gate(saved).to(grad.dtype) * grad.clamp(min=0)


class PositiveGrad(torch.autograd.Function):
    """Identity forward; ``relu(g)`` backward. After a smooth ``f`` this makes ``f'(x) relu(g)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(y: Tensor) -> Tensor:
        return y.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


class PositiveStraightThrough(torch.autograd.Function):
    """``fn(x)`` forward; ``relu(g)`` backward, whatever ``fn`` is (deconvnet on smooth units)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, fn: Callable) -> Tensor:
        return fn(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        return grad.clamp(min=0), None


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: object) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def write_back(x: Tensor, out: Tensor) -> Tensor:
    x.copy_(out)
    return x


def _relu_gate(y: Tensor) -> Tensor:
    return y > 0


# Rectifiers: func -> (x, fn, gate, in_place, from_input) from the call's arguments.
def _relu(in_place_default: bool):
    def parse(args, kwargs):
        in_place = _arg(args, kwargs, 1, "inplace", in_place_default) or in_place_default
        return args[0], F.relu, _relu_gate, in_place, False

    return parse


def _hardtanh(lo_default: float, hi_default: float, in_place_default: bool = False):
    def parse(args, kwargs):
        lo = _arg(args, kwargs, 1, "min_val", lo_default)
        hi = _arg(args, kwargs, 2, "max_val", hi_default)
        in_place = _arg(args, kwargs, 3, "inplace", False) or in_place_default
        return args[0], lambda t: t.clamp(lo, hi), lambda y: (y > lo) & (y < hi), in_place, False

    return parse


def _relu6(args, kwargs):
    in_place = _arg(args, kwargs, 1, "inplace", False)
    return args[0], lambda t: t.clamp(0.0, 6.0), lambda y: (y > 0) & (y < 6), in_place, False


def _leaky(in_place_default: bool):
    def parse(args, kwargs):
        slope = _arg(args, kwargs, 1, "negative_slope", 0.01)
        in_place = _arg(args, kwargs, 2, "inplace", False) or in_place_default
        return args[0], lambda t: F.leaky_relu(t, slope), _slope_gate(slope), in_place, False

    return parse


def _slope_gate(slope: float) -> Gate:
    if slope < 0:
        raise fail(
            "guided",
            "model_fn",
            f"leaky_relu with a negative slope ({slope}) has no guided rule here",
            "use a slope >= 0, or vanilla saliency",
        )
    return lambda y: torch.where(y > 0, 1.0, slope)


def _prelu(args, kwargs):
    x, weight = args[0], _arg(args, kwargs, 1, "weight", None)
    shape = [1] * x.ndim
    if weight.numel() > 1:
        shape[1] = weight.numel()
    slope = weight.reshape(shape)
    return x, lambda t: F.prelu(t, weight), lambda s: torch.where(s > 0, 1.0, slope), False, True


def _rrelu(in_place_default: bool):
    def parse(args, kwargs):
        lower = _arg(args, kwargs, 1, "lower", 1.0 / 8)
        upper = _arg(args, kwargs, 2, "upper", 1.0 / 3)
        if _arg(args, kwargs, 3, "training", False):
            raise fail(
                "guided",
                "model_fn",
                "rrelu in training mode draws random slopes",
                "call model.eval() first",
            )
        in_place = _arg(args, kwargs, 4, "inplace", False) or in_place_default
        slope = (lower + upper) / 2
        return args[0], lambda t: F.leaky_relu(t, slope), _slope_gate(slope), in_place, False

    return parse


def _threshold(in_place_default: bool):
    def parse(args, kwargs):
        level = _arg(args, kwargs, 1, "threshold", 0.0)
        value = _arg(args, kwargs, 2, "value", 0.0)
        if value > level:
            raise fail(
                "guided",
                "model_fn",
                f"threshold(threshold={level}, value={value}) lifts inputs above the threshold",
                "use value <= threshold, or vanilla saliency",
            )
        in_place = _arg(args, kwargs, 3, "inplace", False) or in_place_default
        return args[0], lambda t: F.threshold(t, level, value), lambda y: y > level, in_place, False

    return parse


RECTIFIERS: dict[Callable, Callable] = {
    F.relu: _relu(False),
    torch.relu: _relu(False),
    torch.Tensor.relu: _relu(False),
    torch.relu_: _relu(True),
    torch.Tensor.relu_: _relu(True),
    F.hardtanh: _hardtanh(-1.0, 1.0),
    F.hardtanh_: _hardtanh(-1.0, 1.0, True),
    F.relu6: _relu6,
    F.leaky_relu: _leaky(False),
    F.leaky_relu_: _leaky(True),
    F.prelu: _prelu,
    torch.prelu: _prelu,
    F.rrelu: _rrelu(False),
    F.rrelu_: _rrelu(True),
    F.threshold: _threshold(False),
    F.threshold_: _threshold(True),
}

# Smooth activations, by how they may write in place: an `inplace` flag, always, or never.
SMOOTH: dict[Callable, str] = {
    F.silu: "flag",
    F.elu: "flag",
    F.selu: "flag",
    F.celu: "flag",
    F.mish: "flag",
    F.hardswish: "flag",
    F.elu_: "always",
    F.selu_: "always",
    F.celu_: "always",
    F.gelu: "never",
    F.softplus: "never",
}


def _aten_ops(names: dict[str, object]) -> dict[Callable, object]:
    """The same rules for the ATen operators that exported and traced graphs call directly."""
    table: dict[Callable, object] = {}
    for name, rule in names.items():
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            table[packet] = rule
            table[packet.default] = rule
    return table


# torch.export and make_fx graphs call ATen operators (``aten.relu_.default``), not functions.
RECTIFIERS.update(
    _aten_ops(
        {
            "relu": _relu(False),
            "relu_": _relu(True),
            "relu6": _relu6,
            "hardtanh": _hardtanh(-1.0, 1.0),
            "hardtanh_": _hardtanh(-1.0, 1.0, True),
            "leaky_relu": _leaky(False),
            "leaky_relu_": _leaky(True),
            "prelu": _prelu,
            "rrelu": _rrelu(False),
            "rrelu_": _rrelu(True),
            "threshold": _threshold(False),
            "threshold_": _threshold(True),
        }
    )
)
SMOOTH.update(
    _aten_ops(
        {
            **dict.fromkeys(["silu", "gelu", "elu", "selu", "celu", "softplus", "mish"], "never"),
            **dict.fromkeys(["hardswish"], "never"),
            **dict.fromkeys(["silu_", "gelu_", "elu_", "selu_", "celu_", "mish_"], "always"),
            **dict.fromkeys(["hardswish_"], "always"),
        }
    )
)


def writes_in_place(func: Callable, args: tuple, kwargs: dict) -> bool:
    kind = SMOOTH[func]
    if kind != "flag":
        return kind == "always"
    return bool(inspect.signature(func).bind(*args, **kwargs).arguments.get("inplace", False))


def name_of(func: Callable) -> str:
    module = getattr(func, "__module__", None) or "torch"
    qualname = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
    return f"{module}.{qualname}".replace("torch._C._nn.", "torch.nn.functional.")
