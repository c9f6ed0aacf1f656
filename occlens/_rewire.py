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

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._errors import describe, fail
from ._rewire_rules import (
    RECTIFIERS,
    SMOOTH,
    PositiveGrad,
    PositiveStraightThrough,
    Rectified,
    RectifiedInPlace,
    name_of,
    write_back,
    writes_in_place,
)

__all__ = ["Rewired", "deconvnet", "guided"]


class _RewireMode(TorchFunctionMode):
    def __init__(self, guided: bool, smooth: str, call: str) -> None:
        super().__init__()
        self.guided, self.smooth, self.call = guided, smooth, call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parse = RECTIFIERS.get(func)
        if parse is not None:
            x, fn, gate, in_place, from_input = parse(args, kwargs)
            if in_place and fn is F.relu and torch._C._functorch.maybe_current_level() is None:
                return RectifiedInPlace.apply(x, self.guided)
            out = Rectified.apply(x, fn, gate, self.guided, from_input)
            return write_back(x, out) if in_place else out
        if func in SMOOTH:
            return self._smooth(func, args, kwargs)
        return func(*args, **kwargs)

    def _smooth(self, func: Callable, args: tuple, kwargs: dict) -> Tensor:
        if self.smooth == "error":
            raise fail(
                self.call,
                "model_fn",
                f"the model calls {name_of(func)}, a smooth activation with no "
                f"{'guided-backpropagation' if self.guided else 'deconvnet'} rule",
                "pass smooth='gate' to use the rule with the activation's own derivative, or use "
                "vanilla saliency",
            )
        in_place = writes_in_place(func, args, kwargs)
        x, rest = args[0], args[1:]

        def fn(t: Tensor) -> Tensor:  # on a copy when the call writes in place
            return func(t.clone() if in_place else t, *rest, **kwargs)

        guided = self.guided
        out = PositiveGrad.apply(fn(x)) if guided else PositiveStraightThrough.apply(x, fn)
        return write_back(x, out) if in_place else out


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
