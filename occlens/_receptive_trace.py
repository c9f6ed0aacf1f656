"""The analytic receptive field: each unit's input interval, propagated through a torch.fx graph.

Along one axis, unit ``i`` of a feature map can depend on the input pixels
``[lo + i * jump, lo + i * jump + size)`` before clipping (an `Axis`). A conv or pool with kernel
``k``, stride ``s``, padding ``p`` and dilation ``d`` maps ``(lo, size, jump)`` to
``(lo - p * jump, size + d * (k - 1) * jump, jump * s)``: DNNBrain's recursion, written with the
first pixel instead of the centre. Pointwise layers keep the field; adds, products and channel
concatenations take the smallest interval holding every operand's. A ``jump`` of 0 marks an axis
along which every unit sees the whole input (after ``Linear``, or a gate from a global pool).

A node the rules do not cover gives a `Bad` state rather than an error, so that only problems on
the way to the requested layer are reported.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._errors import fail
from ._layers import _IN_PLACE, _locate, _trace

__all__ = ["CALL", "GRADIENT", "Axis", "Field", "analytic_field"]

CALL = "receptive_field"
GRADIENT = "use method='gradient', which measures the field from the layer's gradient"


class _Unreadable(Exception):
    """A setting known only at run time (a graph node), or of a form the rules do not read."""


@dataclass(frozen=True)
class Axis:
    """Unit ``i`` sees ``[lo + i * jump, lo + i * jump + size)``; `n` units along the axis."""

    lo: int
    size: int
    jump: int
    n: int

    def window(self, k: int, s: int, pad_lo: int, pad_hi: int, d: int, ceil: bool) -> Axis:
        """After a sliding window, with PyTorch's output-size rule (``ceil_mode`` included)."""
        span = self.n + pad_lo + pad_hi - d * (k - 1) - 1
        n = (span + (s - 1 if ceil else 0)) // s + 1
        if ceil and (n - 1) * s >= self.n + pad_lo:  # the last window must start inside
            n -= 1
        return Axis(
            self.lo - pad_lo * self.jump, self.size + d * (k - 1) * self.jump, self.jump * s, n
        )

    def whole(self, length: int) -> bool:
        """Whether every unit sees the whole axis of `length` pixels."""
        return self.lo + (self.n - 1) * self.jump <= 0 and self.lo + self.size >= length


@dataclass(frozen=True)
class Field:
    """A feature map whose units have an affine field along both axes."""

    rows: Axis
    cols: Axis


@dataclass(frozen=True)
class Flat:
    """A tensor with no (size, jump, start): flattened, or pooled with unequal windows."""

    problem: str


@dataclass(frozen=True)
class Bad:
    """What the rules cannot describe, kept as the error to raise if the layer needs it."""

    problem: str
    fix: str = GRADIENT


class _Const:
    """A value that does not depend on the input: parameters, shapes, numbers."""


CONST = _Const()
State = Field | Flat | Bad | _Const


@dataclass(frozen=True)
class _Ctx:
    height: int
    width: int
    what: str = ""  # the node, for messages: "Conv2d at 'features.0'"
    root: nn.Module | None = None


def _literal(value: object) -> object:
    if isinstance(value, fx.Node):
        raise _Unreadable
    return value


def _two(value: object) -> tuple[int, int]:
    value = _literal(value)
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise _Unreadable
    return int(pair[0]), int(pair[1])


def _global(c: _Ctx, n: tuple[int, int] = (1, 1)) -> Field:
    return Field(Axis(0, c.height, 0, n[0]), Axis(0, c.width, 0, n[1]))


def _spatial(x: State) -> State | None:
    """None for a field; otherwise what an op on `x` gives when it needs a spatial map."""
    if isinstance(x, Flat):
        return Bad(x.problem, "ask for a layer before it, or for one after a Linear layer")
    return None if isinstance(x, Field) else x


def _window(c: _Ctx, x: State, *axes: tuple | None) -> State:
    """One window per axis, ``(k, s, pad_lo, pad_hi, d, ceil)``, or None to keep the axis."""
    if not isinstance(x, Field):
        return _spatial(x)
    new = [a if w is None else a.window(*w) for a, w in zip((x.rows, x.cols), axes, strict=True)]
    for axis, old, name in zip(new, (x.rows, x.cols), ("rows", "columns"), strict=True):
        if axis.n < 1:
            return Bad(
                f"an input of {c.height}x{c.width} is too small: {c.what} gets {old.n} units "
                f"along the {name} and leaves none",
                "use a larger input_size",
            )
    return Field(*new)


def _conv(c: _Ctx, x: State, kernel, stride, padding, dilation, mode="zeros") -> State:
    k, s, d = _two(kernel), _two(stride), _two(dilation)
    if isinstance(padding, str):
        total = [0 if padding == "valid" else di * (ki - 1) for di, ki in zip(d, k, strict=True)]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(p, p) for p in _two(padding)]
    reach = [di * (ki - 1) for di, ki in zip(d, k, strict=True)]
    mirrored = s == (1, 1) and all(2 * p <= r for (p, _), r in zip(pads, reach, strict=True))
    if mode != "zeros" and (mode == "circular" or not mirrored):
        return Bad(f"{c.what} pads with padding_mode={mode!r}, which reads pixels far from a unit")
    axes = [(k[i], s[i], *pads[i], d[i], False) for i in (0, 1)]
    return _window(c, x, *axes)


def _conv_call(c, x, states, weight=None, stride=1, padding=0, dilation=1, **_) -> State:
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        raise _Unreadable
    kernel = tuple(operator.attrgetter(str(weight.target))(c.root).shape[-2:])
    return _conv(c, x, kernel, stride, padding, dilation)


def _pool(c, x, states, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
          return_indices=False, **_) -> State:  # fmt: skip
    if _literal(return_indices):
        return Bad(f"{c.what} returns indices")
    k = _two(kernel_size)
    s = k if stride is None or stride == [] else _two(stride)
    p, d, ceil = _two(padding), _two(dilation), bool(_literal(ceil_mode))
    return _window(c, x, *[(k[i], s[i], p[i], p[i], d[i], ceil) for i in (0, 1)])


def _adaptive(c, x, states, output_size, return_indices=False, **_) -> State:
    if _literal(return_indices):
        return Bad(f"{c.what} returns indices")
    if not isinstance(x, Field):
        return _spatial(x)
    out = _literal(output_size)
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out, out)
    axes = []
    for axis, o in zip((x.rows, x.cols), outs, strict=True):
        o = axis.n if o is None else int(o)
        if axis.n % o:
            return Flat(f"{c.what} pools {axis.n} units into {o}, with windows of unequal sizes")
        axes.append((axis.n // o, axis.n // o, 0, 0, 1, False))
    return _window(c, x, *axes)


def _flatten(c: _Ctx, x: State) -> State:
    if not isinstance(x, Field):
        return x
    if x.rows.whole(c.height) and x.cols.whole(c.width):
        return _global(c)
    return Flat(f"{c.what} flattens a map whose units see different parts of the input")


def _flatten_dims(c, x, states, start_dim=0, end_dim=-1, **_) -> State:
    start, end = int(_literal(start_dim)) % 4, int(_literal(end_dim)) % 4
    if start == end:
        return x
    return (
        _flatten(c, x) if end == 3 and start <= 2 else Bad(f"{c.what} flattens dims {start}..{end}")
    )


def _view(c, x, states, *shape, **_) -> State:
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return _flatten(c, x) if len(shape) == 2 else Bad(f"{c.what} reshapes a map to {shape}")


def _linear(c, x, states, **_) -> State:
    if isinstance(x, Field) and not (x.rows.whole(c.height) and x.cols.whole(c.width)):
        return Bad(f"{c.what} is applied to a [B, C, H, W] map and mixes only along its width")
    return _global(c) if isinstance(x, (Field, Flat)) else x


def _pad(c, x, states, pad, mode="constant", **_) -> State:
    if _literal(mode) != "constant":
        return Bad(f"{c.what} pads with mode={mode!r}, which reads pixels far from a unit")
    pads = tuple(_literal(pad)) if isinstance(pad, (tuple, list)) else (pad,) * 4
    left, right, top, bottom = (*pads, 0, 0)[:4]
    return _window(c, x, (1, 1, top, bottom, 1, False), (1, 1, left, right, 1, False))


def _cat(c, x, states, dim=0, **_) -> State:
    if int(_literal(dim)) % 4 in (2, 3):
        return Bad(f"{c.what} concatenates along a spatial dim")
    return _merge(c, states)


def _reduce(c, x, states, dim=None, keepdim=False, **_) -> State:
    """A mean, sum, max or min: a window as large as the map along each reduced spatial dim."""
    given, keep = _literal(dim), bool(_literal(keepdim))
    dims = set(
        given if isinstance(given, (tuple, list)) else [0, 1, 2, 3] if given is None else [given]
    )
    dims = {int(d) % 4 for d in dims}
    if not isinstance(x, Field):
        return _spatial(x)
    spatial = dims & {2, 3}
    if 0 in dims or not (spatial or keep):
        return Bad(f"{c.what} reduces over dims {sorted(dims)}")
    reduced = _window(c, x, *[(a.n, a.n, 0, 0, 1, False) if i in dims else None
                              for i, a in ((2, x.rows), (3, x.cols))])  # fmt: skip
    if keep or isinstance(reduced, Bad):
        return reduced
    return _flatten(c, reduced) if spatial == {2, 3} else Bad(f"{c.what} drops a spatial dim")


def _index(c, x, states, index=None, **_) -> State:
    """``x[index]``: fine along the batch and channel dims only."""
    items = index if isinstance(index, tuple) else (index,)
    slices = all(isinstance(i, slice) for i in items) and len(items) <= 2
    bounds = [v for i in items if isinstance(i, slice) for v in (i.start, i.stop, i.step)]
    if x is CONST or (slices and items[0] == slice(None) and not _has_node(bounds)):
        return _merge(c, states)
    return Bad(f"{c.what} indexes a map with {index!r}")


def _has_node(values: list) -> bool:
    return any(isinstance(v, fx.Node) for v in values)


def _merge(c: _Ctx, states: list[State]) -> State:
    """The field of a value computed pointwise from `states`, broadcasting single units."""
    live = [s for s in states if s is not CONST]
    if not live:
        return CONST
    fields = [s for s in live if isinstance(s, Field)]
    if len(fields) < len(live):  # flattened operands: fine among themselves
        return live[0] if not fields else Bad(f"{c.what} combines a flattened and a spatial map")
    merged = fields[0]
    for other in fields[1:]:
        axes = []
        for a, b, length, name in ((merged.rows, other.rows, c.height, "rows"),
                                   (merged.cols, other.cols, c.width, "columns")):  # fmt: skip
            axis = _merge_axis(a, b, length)
            if axis is None:
                return Bad(
                    f"{c.what} combines maps whose units move by {a.jump} and {b.jump} pixels "
                    f"({a.n} and {b.n} units) along the {name}; no single jump describes the sum"
                )
            axes.append(axis)
        merged = Field(*axes)
    return merged


def _merge_axis(a: Axis, b: Axis, length: int) -> Axis | None:
    n = max(a.n, b.n)
    if (a.jump == 0 and a.whole(length)) or (b.jump == 0 and b.whole(length)):
        return Axis(0, length, 0, n)
    if a.n != b.n:  # broadcasting: only a single unit that sees everything keeps a field
        single = a if a.n == 1 else b if b.n == 1 else None
        return Axis(0, length, 0, n) if single is not None and single.whole(length) else None
    if a.jump != b.jump and n > 1:
        return None
    lo = min(a.lo, b.lo)
    return Axis(lo, max(a.lo + a.size, b.lo + b.size) - lo, max(a.jump, b.jump), n)


def _pointwise(c, x, states, *args, **_) -> State:
    return _merge(c, states)


def _const(c, x, states, *args, **_) -> State:
    return CONST


def _names(module: object, names: str) -> list:
    return [getattr(module, n) for n in names.split() if hasattr(module, n)]


def _words(names: str) -> list[str]:
    return names.split()


_POINTWISE = [
    *_names(F, "relu relu_ relu6 elu elu_ selu celu gelu silu mish hardswish hardsigmoid hardtanh"),
    *_names(F, "hardtanh_ leaky_relu leaky_relu_ sigmoid tanh softplus softsign logsigmoid prelu"),
    *_names(F, "rrelu threshold dropout dropout2d alpha_dropout feature_alpha_dropout batch_norm"),
    *_names(F, "local_response_norm"),
    *_names(torch, "relu relu_ sigmoid sigmoid_ tanh tanh_ abs exp log sqrt rsqrt square neg"),
    *_names(torch, "clamp clamp_ clip add sub mul div true_divide maximum minimum where pow"),
    *_names(operator, "add sub mul truediv floordiv mod pow neg pos abs iadd isub imul itruediv"),
    *_words("relu relu_ sigmoid sigmoid_ tanh tanh_ clamp clamp_ clip clip_ abs abs_ exp neg"),
    *_words("add add_ sub sub_ mul mul_ div div_ pow sqrt square contiguous clone detach float"),
    *_words("double half to type_as expand_as expand"),
]
_REDUCTIONS = [*_names(torch, "mean sum amax amin"), *_words("mean sum amax amin")]
_INPUT, _FLATTEN = ("input",), ("input", "start_dim", "end_dim")
_CALLS: dict[object, tuple[Callable[..., State], tuple[str, ...] | None]] = {
    F.conv2d: (_conv_call, ("input", "weight", "bias", "stride", "padding", "dilation")),
    F.max_pool2d: (_pool, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    F.avg_pool2d: (_pool, ("input", "kernel_size", "stride", "padding", "ceil_mode")),
    F.adaptive_avg_pool2d: (_adaptive, ("input", "output_size")),
    F.adaptive_max_pool2d: (_adaptive, ("input", "output_size", "return_indices")),
    F.pad: (_pad, ("input", "pad", "mode", "value")),
    torch.flatten: (_flatten_dims, _FLATTEN),
    "flatten": (_flatten_dims, _FLATTEN),
    "view": (_view, None),
    "reshape": (_view, None),
    F.linear: (_linear, _INPUT),
    torch.matmul: (_linear, _INPUT),
    operator.getitem: (_index, ("input", "index")),
    **dict.fromkeys(_names(torch, "cat concat concatenate"), (_cat, ("tensors", "dim"))),
    **dict.fromkeys(_REDUCTIONS, (_reduce, ("input", "dim", "keepdim"))),
    **dict.fromkeys([builtins.getattr, "size", "dim", "numel"], (_const, _INPUT)),
    **dict.fromkeys(_POINTWISE, (_pointwise, _INPUT)),
}
_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    *_names(nn, "ReLU ReLU6 LeakyReLU PReLU RReLU ELU SELU CELU GELU SiLU Mish Hardswish"),
    *_names(nn, "Hardsigmoid Hardtanh Sigmoid Tanh Softplus Softsign Tanhshrink Threshold"),
    *_names(nn, "LogSigmoid Hardshrink Softshrink Identity AlphaDropout FeatureAlphaDropout"),
    *_names(nn, "LocalResponseNorm ChannelShuffle"),  # across channels only
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,  # a per-channel affine map in eval mode
)
_STATISTICS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _module(c: _Ctx, m: nn.Module, x: State, states: list[State], node, env, where) -> State:
    if isinstance(m, _POINTWISE_MODULES):
        return _merge(c, states)
    if isinstance(m, nn.Conv2d):
        return _conv(c, x, m.kernel_size, m.stride, m.padding, m.dilation, m.padding_mode)
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        d, indices = getattr(m, "dilation", 1), getattr(m, "return_indices", False)
        return _pool(c, x, states, m.kernel_size, m.stride, m.padding, d, m.ceil_mode, indices)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return _adaptive(c, x, states, m.output_size, getattr(m, "return_indices", False))
    if isinstance(m, nn.Flatten):
        return _flatten_dims(c, x, states, m.start_dim, m.end_dim)
    if isinstance(m, nn.Linear):
        return _linear(c, x, states)
    if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)):
        return _pad(c, x, states, m.padding)
    if isinstance(m, _STATISTICS):
        return Bad(
            f"{c.what} normalises with statistics over all positions, so every unit after it "
            "depends on the whole input",
            "ask for a layer before it",
        )
    if isinstance(m, nn.Sequential) or not type(m).__module__.startswith("torch."):
        graph = _trace(m, None)  # a container or the user's own module: look inside
        if graph is None:
            return Bad(f"{c.what} cannot be traced with torch.fx")
        inputs = [env[a] if isinstance(a, fx.Node) else CONST for a in node.args]
        named = {k: env[v] for k, v in node.kwargs.items() if isinstance(v, fx.Node)}
        return walk(graph, m, None, inputs, named, replace(c, root=m), where + ".")
    return Bad(f"the analytic method does not know {c.what}")


def _state(node: fx.Node, root: nn.Module, env: dict, c: _Ctx, prefix: str) -> State:
    states = [env[n] for n in node.all_input_nodes]
    bad = next((s for s in states if isinstance(s, Bad)), None)
    if bad is not None:
        return bad
    first = node.args[0] if node.args else None
    x = env[first] if isinstance(first, fx.Node) else CONST
    if node.op == "call_module":
        where, module = prefix + str(node.target), root.get_submodule(str(node.target))
        c = replace(c, what=f"{type(module).__name__} at {where!r}", root=root)
    else:
        where, module = prefix + node.name, None
        name = getattr(node.target, "__name__", str(node.target))
        c = replace(
            c, what=f"{'Tensor.' * (node.op == 'call_method')}{name} at {where!r}", root=root
        )
    try:
        if module is not None:
            return _module(c, module, x, states, node, env, where)
        handler, names = _CALLS.get(node.target, (None, None))
        if handler is None:
            if all(s is CONST for s in states):
                return CONST
            return Bad(f"the analytic method does not know {c.what}")
        if names is None:
            return handler(c, x, states, *node.args[1:], **node.kwargs)
        bound = {**dict(zip(names[1:], node.args[1:], strict=False)), **node.kwargs}
        return handler(c, x, states, **bound)
    except (_Unreadable, TypeError, ValueError, AttributeError) as error:
        return Bad(f"the analytic method cannot read the settings of {c.what} ({error!r})")


def _mutates(node: fx.Node, root: nn.Module) -> bool:
    """Whether a node writes into its first argument: ``x += y``, ``x.add_(y)``, ``inplace``."""
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(str(node.target)), "inplace", False))
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    return node.kwargs.get("inplace") is True or name.endswith("_") or node.target in _IN_PLACE


def walk(graph: fx.Graph, root: nn.Module, stop, inputs, named, c: _Ctx, prefix: str) -> State:
    """The state of node `stop`, or of the graph's output when `stop` is None."""
    env: dict[fx.Node, State] = {}
    position = 0
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node] = (
                inputs[position] if position < len(inputs) else named.get(node.target, CONST)
            )
            position += 1
        elif node.op == "get_attr":
            env[node] = CONST
        elif node.op == "output":
            result = node.args[0]
            if isinstance(result, fx.Node):
                return env[result]
            return Bad(f"{prefix[:-1]!r} returns a {type(result).__name__}, not one tensor")
        else:
            env[node] = _state(node, root, env, c, prefix)
            first = node.args[0] if node.args else None
            if isinstance(first, fx.Node) and _mutates(node, root):
                env[first] = env[node]  # an in-place op changes what later readers see
        if node is stop:
            return env[node]
    return CONST


def analytic_field(model: nn.Module, name: str, size: tuple[int, int]) -> Field:
    """The field of layer `name` of `model` for an input of `size` ``(H, W)``; else raises."""
    graph, node = _locate(model, name, CALL, "layer")
    argument = f"layer={name!r}"
    if node is None:
        problem = f"{type(model).__name__} cannot be traced with torch.fx"
        raise fail(CALL, argument, problem, GRADIENT)
    start = Field(Axis(0, 1, 1, size[0]), Axis(0, 1, 1, size[1]))
    state = walk(graph, model, node, [start], {}, _Ctx(*size), "")
    state = _spatial(state) or state
    if isinstance(state, Bad):
        raise fail(CALL, argument, state.problem, state.fix)
    if not isinstance(state, Field):
        raise fail(CALL, argument, "the layer does not depend on the input", "pick another layer")
    return state
