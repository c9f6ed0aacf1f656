"""Guided backpropagation and deconvnet: the model's rectifiers with another backward rule.

`guided(model_fn)` and `deconvnet(model_fn)` return model functions that compute the same outputs
and differ only in how gradients pass the rectifiers. A `TorchFunctionMode`, entered for the span
of each call and left even when the model raises, routes every rectifier call to an
``autograd.Function`` (with ``setup_context`` and ``generate_vmap_rule=True``, so it works under
``torch.func.grad`` and ``vmap``). No hook is registered and no module is swapped, so functional
calls (``F.relu``, ``torch.relu_``, ``x.relu_()``) are caught as surely as ``nn.ReLU`` modules.

The rules, for a rectifier ``y = f(x)`` with incoming gradient ``g``:

* guided (Springenberg et al. 2015): ``f'(x) * relu(g)``;
* deconvnet (Zeiler & Fergus 2014): ``relu(g)``, ignoring the forward pass.

Policy per activation:

========================================  ==================================================
``relu`` in every spelling, ``relu6``,     the rules above (``f'`` is the gate: 1 where the
``hardtanh``, ``leaky_relu``, ``prelu``,   input passes, the slope elsewhere)
``rrelu`` in eval, ``threshold``
``silu``, ``gelu``, ``elu``, ``selu``,     `OcclensError` naming the function by default;
``celu``, ``softplus``, ``mish``,          with ``smooth="gate"`` the same rules, using the
``hardswish``                              activation's own derivative as ``f'``
``sigmoid``, ``tanh``, ``softmax``, ...    not rectifiers: differentiated as usual
========================================  ==================================================

TorchScript models run outside Python, where no mode can see their calls: they are refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._errors import describe, fail

__all__ = ["Rewired", "deconvnet", "guided"]

Gate = Callable[[Tensor], Tensor]


class _Rectified(torch.autograd.Function):
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
        positive = grad.clamp(min=0)
        if ctx.guided and ctx.gate is _relu_gate:  # one fused pass for the common case
            positive = torch.ops.aten.threshold_backward(positive, saved, 0)
        elif ctx.guided:
            positive = ctx.gate(saved).to(positive.dtype) * positive
        return positive, None, None, None, None


class _PositiveGrad(torch.autograd.Function):
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


class _PositiveStraightThrough(torch.autograd.Function):
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


def _in_place(x: Tensor, out: Tensor) -> Tensor:
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


_RECTIFIERS: dict[Callable, Callable] = {
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
_SMOOTH: dict[Callable, str] = {
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


def _writes_in_place(func: Callable, args: tuple, kwargs: dict) -> bool:
    kind = _SMOOTH[func]
    if kind != "flag":
        return kind == "always"
    return bool(inspect.signature(func).bind(*args, **kwargs).arguments.get("inplace", False))


def _name(func: Callable) -> str:
    module = getattr(func, "__module__", None) or "torch"
    qualname = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
    return f"{module}.{qualname}".replace("torch._C._nn.", "torch.nn.functional.")


class _RewireMode(TorchFunctionMode):
    def __init__(self, guided: bool, smooth: str, call: str) -> None:
        super().__init__()
        self.guided, self.smooth, self.call = guided, smooth, call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parse = _RECTIFIERS.get(func)
        if parse is not None:
            x, fn, gate, in_place, from_input = parse(args, kwargs)
            out = _Rectified.apply(x, fn, gate, self.guided, from_input)
            return _in_place(x, out) if in_place else out
        if func in _SMOOTH:
            return self._smooth(func, args, kwargs)
        return func(*args, **kwargs)

    def _smooth(self, func: Callable, args: tuple, kwargs: dict) -> Tensor:
        if self.smooth == "error":
            raise fail(
                self.call,
                "model_fn",
                f"the model calls {_name(func)}, a smooth activation with no "
                f"{'guided-backpropagation' if self.guided else 'deconvnet'} rule",
                "pass smooth='gate' to use the rule with the activation's own derivative, or use "
                "vanilla saliency",
            )
        in_place = _writes_in_place(func, args, kwargs)
        x, rest = args[0], args[1:]

        def fn(t: Tensor) -> Tensor:  # on a copy when the call writes in place
            return func(t.clone() if in_place else t, *rest, **kwargs)

        guided = self.guided
        out = _PositiveGrad.apply(fn(x)) if guided else _PositiveStraightThrough.apply(x, fn)
        return _in_place(x, out) if in_place else out


class Rewired(nn.Module):
    """A model function whose rectifiers follow the guided or deconvnet backward rule."""

    def __init__(self, model_fn: Callable[[Tensor], Tensor], rule: str, smooth: str) -> None:
        super().__init__()
        if isinstance(model_fn, nn.Module):
            self.model = model_fn
        else:
            self.__dict__["model"] = model_fn
        self.rule, self.smooth = rule, smooth

    def mode(self) -> TorchFunctionMode:
        return _RewireMode(self.rule == "guided", self.smooth, self.rule)

    def forward(self, x: Tensor) -> Tensor:
        with self.mode():
            return self.model(x)

    def extra_repr(self) -> str:
        return f"rule={self.rule!r}, smooth={self.smooth!r}"


def _rewire(model_fn: object, rule: str, smooth: str) -> Rewired:
    if not callable(model_fn):
        raise fail(
            rule,
            "model_fn",
            f"expected a callable model, got {describe(model_fn)}",
            "pass an nn.Module or a function",
        )
    if isinstance(model_fn, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise fail(
            rule,
            "model_fn",
            "a TorchScript model runs its ReLUs outside Python, where occlens cannot reroute them",
            "pass the eager nn.Module the script was made from",
        )
    if isinstance(model_fn, Rewired):
        raise fail(
            rule,
            "model_fn",
            f"the model is already rewired by {model_fn.rule}()",
            "rewire the original model once",
        )
    if smooth not in ("error", "gate"):
        raise fail(rule, "smooth", f"got {smooth!r}", "use 'error' (default) or 'gate'")
    return Rewired(model_fn, rule, smooth)


def guided(model_fn: Callable[[Tensor], Tensor], *, smooth: str = "error") -> Rewired:
    """`model_fn` with guided-backpropagation rectifiers: ``saliency(guided(model), x, t)``.

    The outputs are unchanged; a gradient through a rectifier becomes ``f'(x) * relu(g)``. Every
    ReLU spelling is covered (``nn.ReLU`` with or without ``inplace``, ``F.relu``, ``torch.relu``,
    ``torch.relu_``, ``Tensor.relu``, ``Tensor.relu_``), and so are ``relu6``, ``hardtanh``,
    ``leaky_relu``, ``prelu``, ``rrelu`` (eval) and ``threshold``. A smooth activation (SiLU,
    GELU, ELU, ...) raises `OcclensError` unless ``smooth="gate"``. The model is never modified.

    >>> import torch, torch.nn as nn, occlens as ol
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> with torch.no_grad():
    ...     _ = net[1].weight.copy_(torch.eye(2)); _ = net[1].bias.zero_()
    ...     _ = net[3].weight.copy_(torch.tensor([[1.0, -1.0]]))
    >>> x = torch.tensor([[[1.0, 2.0]]])  # one image [C=1, H=1, W=2]
    >>> ol.saliency(net, x, 0)  # vanilla: the negative weight comes through
    tensor([[[ 1., -1.]]])
    >>> ol.saliency(ol.guided(net), x, 0)  # guided: negative gradients stop at the ReLU
    tensor([[[1., 0.]]])
    """
    return _rewire(model_fn, "guided", smooth)


def deconvnet(model_fn: Callable[[Tensor], Tensor], *, smooth: str = "error") -> Rewired:
    """`model_fn` with deconvnet rectifiers: a gradient through one becomes ``relu(g)``.

    Unlike guided backpropagation the forward pass does not gate the gradient (Zeiler & Fergus
    2014). Coverage and the smooth-activation policy are as in `guided`.

    >>> import torch, torch.nn as nn, occlens as ol
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(1, 1), nn.ReLU())
    >>> with torch.no_grad():
    ...     _ = net[1].weight.fill_(2.0); _ = net[1].bias.fill_(-5.0)
    >>> x = torch.ones(1, 1, 1)
    >>> ol.saliency(net, x, 0)  # the ReLU is off: zero gradient
    tensor([[[0.]]])
    >>> ol.saliency(ol.deconvnet(net), x, 0)  # deconvnet passes it anyway
    tensor([[[2.]]])
    """
    return _rewire(model_fn, "deconvnet", smooth)
