"""The incremental engine's view of a model: a pure fx graph split into patch and dense parts.

The model is traced with ``torch.fx`` and *functionalised*: every in-place op becomes its
out-of-place form, and later readers of the mutated value read the new node instead. The clean
image is then run through the graph once, recording every node's value. Each node is classified:

- ``const``: does not depend on the image (parameters, shapes of constants);
- ``patch``: a spatial map ``[1, C, H, W]`` computed by a local rule (conv, pool, pointwise op,
  eval-mode batch norm, residual add, channel concat) that the engine evaluates only on the
  changed patch of each occluder;
- ``dense``: anything else that depends on the image; run per occluder on full tensors, under
  ``vmap``, once its spatial inputs have been pasted into copies of the clean activation.

A graph the engine cannot run exactly gives an `Unsupported` with the reason.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ._checks import int_pair
from ._layers import HookedLayer, HookedTail

__all__ = [
    "Graph",
    "GraphFailed",
    "Step",
    "Unsupported",
    "Window",
    "analyse",
]


class Unsupported(Exception):
    """The incremental engine cannot run this model exactly; the message says why."""


class GraphFailed(Unsupported):
    """The traced graph raised while running a node: the model's own error, or the trace's."""


@dataclass(frozen=True)
class Window:
    """A sliding window along (rows, cols): kernel, stride, dilation, low and high padding."""

    k: tuple[int, int]
    s: tuple[int, int]
    d: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]  # high padding, extended so that every output's window fits

    def reach(self, axis: int) -> int:
        return self.d[axis] * (self.k[axis] - 1) + 1

    def read(self, axis: int, out: int) -> int:
        """Input rows (padded) read by `out` consecutive outputs."""
        return (out - 1) * self.s[axis] + self.reach(axis)


@dataclass
class Step:
    """One patch node: how its patch is computed from its spatial sources."""

    node: fx.Node
    kind: str  # "input", "window", "pointwise", "merge"
    sources: tuple[fx.Node, ...]
    size: tuple[int, int]
    channels: int
    window: Window | None = None
    pad_value: float = 0.0
    apply: Callable[..., Tensor] | None = None
    divisor: Tensor | None = None  # avg pools: [H_out, W_out] divisors of each window's sum
    flops: float = 0.0  # per output position, for the cost model
    inplace: Callable[[Tensor], Tensor] | None = None  # pointwise: the same op, in place
    conv: tuple | None = None  # convolutions: (weight, bias, stride, dilation, groups)


@dataclass
class Graph:
    """A traced, functionalised model with its clean activations and node classes."""

    root: nn.Module
    graph: fx.Graph
    nodes: list[fx.Node]  # live computing nodes in order
    clean: dict[fx.Node, object]
    kinds: dict[fx.Node, str]
    steps: dict[fx.Node, Step]
    dense: list[fx.Node]
    boundary: list[fx.Node]  # patch nodes read by dense nodes or by the output
    output: fx.Node
    input: fx.Node
    dense_flops: float = 0.0
    full_flops: float = 0.0
    notes: list[str] = field(default_factory=list)
    deferred: bool = False  # dense linear layers hold zero stand-ins (see `analyse`)


# ---------------------------------------------------------------- tracing and functionalising


def _trace(model: nn.Module) -> fx.Graph:
    if isinstance(model, (HookedLayer, HookedTail)):
        raise Unsupported("the layer is reached by a forward hook (the model does not trace)")
    try:
        return fx.Tracer().trace(model)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Unsupported(f"torch.fx cannot trace {type(model).__name__}: {first}") from error


_IN_PLACE_OPS = {
    getattr(operator, f"i{name}"): getattr(operator, f"{name}_" if name in ("and", "or") else name)
    for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor")
}


def _out_of_place(node: fx.Node, root: nn.Module) -> None:
    """Rewrite `node` to its out-of-place form (modules are cloned into at run time)."""
    if node.op == "call_module":
        return
    if node.op == "call_method":
        name = str(node.target)
        if name.endswith("_") and not name.startswith("_") and hasattr(Tensor, name[:-1]):
            node.target = name[:-1]
            return
        raise Unsupported(f"the in-place method .{name}() has no out-of-place form")
    target = node.target
    if target in _IN_PLACE_OPS:
        node.target = _IN_PLACE_OPS[target]
        return
    name = getattr(target, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        for owner in (torch, F):
            plain = getattr(owner, name[:-1], None)
            if plain is not None and getattr(owner, name, None) is target:
                node.target = plain
                return
        raise Unsupported(f"the in-place function {name} has no out-of-place form")
    try:
        bound = inspect.signature(target).bind(*node.args, **node.kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise Unsupported(f"cannot read the arguments of {name or target}") from error
    if bound.arguments.get("inplace") is True:
        bound.arguments["inplace"] = False
        node.args, node.kwargs = tuple(bound.args), dict(bound.kwargs)
        return
    raise Unsupported(f"{name or target} writes into a tensor")


def _mutates(node: fx.Node, root: nn.Module) -> bool:
    """Whether `node` may write into one of its arguments (every in-place spelling)."""
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("_")
    if node.op != "call_function":
        return False
    target = node.target
    if target in _IN_PLACE_OPS or target is operator.setitem:
        return True
    name = getattr(target, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        return True
    if node.kwargs.get("inplace") is True or node.kwargs.get("out") is not None:
        return True
    try:
        bound = inspect.signature(target).bind(*node.args, **node.kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return bound.arguments.get("inplace") is True


def _functionalise(graph: fx.Graph, root: nn.Module) -> None:
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if not _mutates(node, root):
            continue
        if node.kwargs.get("out") is not None:
            raise Unsupported(f"{node.name} writes into an out= tensor")
        first = node.args[0] if node.args else None
        if not isinstance(first, fx.Node):
            raise Unsupported(f"{node.name} writes into something that is not a graph value")
        if node.target is operator.setitem:
            raise Unsupported(f"{node.name} assigns into a tensor (x[...] = v)")
        _out_of_place(node, root)
        here = order[node]
        first.replace_all_uses_with(node, delete_user_cb=lambda user, h=here: order[user] > h)


def _live(graph: fx.Graph) -> tuple[list[fx.Node], fx.Node]:
    outputs = [n for n in graph.nodes if n.op == "output"]
    out = outputs[0]
    result = out.args[0]
    if not isinstance(result, fx.Node):
        raise Unsupported("the model does not return one tensor")
    needed: set[fx.Node] = set()
    stack = [result]
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        stack.extend(node.all_input_nodes)
    return [n for n in graph.nodes if n in needed], result


# ---------------------------------------------------------------- running nodes


def _fetch(root: nn.Module, target: str) -> object:
    value: object = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def run_node(node: fx.Node, env: dict[fx.Node, object], root: nn.Module) -> object:
    """Evaluate one (functionalised) node with the values in `env`."""
    args = fx.node.map_arg(node.args, lambda n: env[n])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
    if node.op == "get_attr":
        return _fetch(root, str(node.target))
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        if getattr(module, "inplace", False) and args and isinstance(args[0], Tensor):
            args = (args[0].clone(), *args[1:])
        return module(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        self, *rest = args
        return getattr(self, str(node.target))(*rest, **kwargs)
    raise Unsupported(f"unexpected node {node.op} {node.name}")


# ---------------------------------------------------------------- classification


def _names(owner: object, names: str) -> list:
    return [getattr(owner, n) for n in names.split() if hasattr(owner, n)]


_UNARY_FUNCTIONS = {
    *_names(F, "relu relu6 elu selu celu gelu silu mish hardswish hardsigmoid hardtanh"),
    *_names(F, "leaky_relu sigmoid tanh softplus softsign logsigmoid threshold"),
    *_names(torch, "relu sigmoid tanh abs exp log sqrt rsqrt square neg clamp clip"),
    *_names(operator, "neg pos abs"),
}
_UNARY_METHODS = {
    "relu",
    "sigmoid",
    "tanh",
    "abs",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "square",
    "neg",
    "clamp",
    "clip",
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
}
_BINARY_FUNCTIONS = {
    *_names(torch, "add sub mul div true_divide maximum minimum"),
    *_names(operator, "add sub mul truediv"),
}
_BINARY_METHODS = {"add", "sub", "mul", "div", "maximum", "minimum"}
_CAT = set(_names(torch, "cat concat concatenate"))
_POINTWISE_MODULES: tuple[type[nn.Module], ...] = tuple(
    _names(
        nn,
        "ReLU ReLU6 LeakyReLU ELU SELU CELU GELU SiLU Mish Hardswish Hardsigmoid Hardtanh Sigmoid "
        "Tanh Softplus Softsign Tanhshrink Threshold LogSigmoid Hardshrink Softshrink Identity "
        "LocalResponseNorm",
    )
)
_TRAINABLE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _spatial(value: object) -> bool:
    return (
        isinstance(value, Tensor)
        and value.ndim == 4
        and value.shape[0] == 1
        and value.dtype.is_floating_point
    )


def _literal(node: fx.Node, index: int, name: str, default: object) -> object:
    value = node.args[index] if len(node.args) > index else node.kwargs.get(name, default)
    if isinstance(value, fx.Node):
        raise _Dense
    return value


class _Dense(Exception):
    """The node is computed densely (not a local rule the engine knows)."""


def _const_broadcast(value: object) -> bool:
    """A constant operand that is the same at every spatial position."""
    if not isinstance(value, Tensor):
        return isinstance(value, (int, float))
    return value.ndim < 2 or (value.shape[-1] == 1 and value.shape[-2] == 1)


class _Builder:
    def __init__(self, root: nn.Module, clean: dict, kinds: dict, steps: dict, live: set) -> None:
        self.root, self.clean, self.kinds, self.steps, self.live = root, clean, kinds, steps, live

    def module(self, node: fx.Node) -> nn.Module:
        return self.root.get_submodule(str(node.target))

    def spatial_sources(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if self.kinds[n] == "patch"]

    def step(self, node: fx.Node) -> Step:
        value = self.clean[node]
        if not _spatial(value):
            raise _Dense
        sources = self.spatial_sources(node)
        for other in node.all_input_nodes:
            if self.kinds[other] == "dense":
                raise _Dense
        size = (value.shape[2], value.shape[3])  # type: ignore[union-attr]
        channels = value.shape[1]  # type: ignore[union-attr]
        if node.op == "call_module":
            return self._module_step(node, self.module(node), sources, size, channels)
        if len(sources) == 1 and node.args and node.args[0] is sources[0]:
            return self._function_step(node, sources[0], size, channels)
        if len(sources) >= 2 or (len(sources) == 1 and self._is_binary(node)):
            return self._merge_step(node, sources, size, channels)
        raise _Dense

    # -- modules
    def _module_step(self, node, module, sources, size, channels) -> Step:
        if len(sources) != 1 or not node.args or node.args[0] is not sources[0] or node.kwargs:
            raise _Dense
        (source,) = sources
        inp = self.clean[source]
        if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward:
            if module.padding_mode != "zeros":
                raise _Dense
            return self._conv(
                node,
                source,
                inp,
                module.weight,
                module.bias,
                module.stride,
                module.padding,
                module.dilation,
                module.groups,
                size,
                channels,
            )
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            if isinstance(module, nn.MaxPool2d) and module.return_indices:
                raise _Dense
            return self._pool(node, source, module, size, channels)
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return self._adaptive(node, source, module, size, channels)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training or module.running_mean is None:
                raise Unsupported(f"{type(module).__name__} at {node.target!r} is in training mode")
            folded = self._fold(node, source, module)
            if folded is not None:
                return folded
            return self._pointwise(node, source, lambda p, m=module: m(p), size, channels)
        if isinstance(module, nn.ReLU):
            step = self._pointwise(node, source, F.relu, size, channels)
            step.inplace = torch.relu_
            return step
        if isinstance(module, nn.modules.dropout._DropoutNd):
            if module.training:
                raise Unsupported(f"{type(module).__name__} at {node.target!r} is in training mode")
            return self._pointwise(node, source, lambda p: p, size, channels)
        if isinstance(module, _POINTWISE_MODULES):
            if getattr(module, "inplace", False):
                return self._pointwise(
                    node, source, lambda p, m=module: m(p.clone()), size, channels
                )
            return self._pointwise(node, source, lambda p, m=module: m(p), size, channels)
        raise _Dense

    def _conv(
        self, node, source, inp, weight, bias, stride, padding, dilation, groups, size, channels
    ) -> Step:
        k = (int(weight.shape[2]), int(weight.shape[3]))
        s, d = int_pair(stride), int_pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                lo, hi = (0, 0), (0, 0)
            else:
                total = [d[i] * (k[i] - 1) for i in (0, 1)]
                lo = (total[0] // 2, total[1] // 2)
                hi = (total[0] - lo[0], total[1] - lo[1])
        else:
            lo = hi = int_pair(padding)
        window = _window(k, s, d, lo, hi, inp.shape[2:], size)

        def apply(u: Tensor, w=weight, b=bias) -> Tensor:
            return F.conv2d(u, w, b, s, 0, d, groups)

        flops = 2.0 * weight.shape[1] * k[0] * k[1] * channels
        return Step(
            node,
            "window",
            (source,),
            size,
            channels,
            window,
            0.0,
            apply,
            flops=flops,
            conv=(weight, bias, s, d, groups),
        )

    def _fold(self, node: fx.Node, source: fx.Node, bn: nn.Module) -> Step | None:
        """Batch norm (eval) after a conv read by nothing else: one conv with folded weights."""
        conv = self.steps.get(source)
        if conv is None or conv.conv is None or sum(u in self.live for u in source.users) != 1:
            return None
        weight, bias, stride, dilation, groups = conv.conv

        @functools.cache
        def folded() -> tuple[Tensor, Tensor]:  # on first use: planning alone never pays for it
            var = bn.running_var.double()  # type: ignore[union-attr]
            scale = (var + bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale  # type: ignore[union-attr]
            if bias is not None:
                shift = shift + bias.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            w = (weight.double() * scale[:, None, None, None]).to(weight.dtype)
            return w, shift.to(weight.dtype)

        def apply(u: Tensor) -> Tensor:
            w, b = folded()
            return F.conv2d(u, w, b, stride, 0, dilation, groups)

        self.kinds[source] = "folded"
        del self.steps[source]
        return Step(
            node,
            "window",
            conv.sources,
            conv.size,
            conv.channels,
            conv.window,
            0.0,
            apply,
            flops=conv.flops,
        )

    def _pool(self, node, source, module, size, channels) -> Step:
        inp = self.clean[source]
        k = int_pair(module.kernel_size)
        s = int_pair(module.stride if module.stride is not None else module.kernel_size)
        p = int_pair(module.padding)
        if isinstance(module, nn.MaxPool2d):
            d = int_pair(module.dilation)
            window = _window(k, s, d, p, p, inp.shape[2:], size)

            def apply_max(u: Tensor) -> Tensor:
                return F.max_pool2d(u, k, s, 0, d)

            return _pool_step(node, source, size, channels, window, -math.inf, apply_max, k)
        window = _window(k, s, (1, 1), p, p, inp.shape[2:], size)
        divisor = _avg_divisor(module, inp.shape[2:], inp.dtype).to(inp.device)

        def apply_avg(u: Tensor) -> Tensor:
            return F.avg_pool2d(u, k, s, 0, divisor_override=1)

        return _pool_step(node, source, size, channels, window, 0.0, apply_avg, k, divisor)

    def _adaptive(self, node, source, module, size, channels) -> Step:
        inp = self.clean[source]
        n = (inp.shape[2], inp.shape[3])
        if getattr(module, "return_indices", False) or n[0] % size[0] or n[1] % size[1]:
            raise _Dense
        k = (n[0] // size[0], n[1] // size[1])
        window = _window(k, k, (1, 1), (0, 0), (0, 0), n, size)
        if isinstance(module, nn.AdaptiveMaxPool2d):

            def apply_max(u: Tensor) -> Tensor:
                return F.max_pool2d(u, k, k)

            return _pool_step(node, source, size, channels, window, -math.inf, apply_max, k)

        def apply_avg(u: Tensor) -> Tensor:
            return F.avg_pool2d(u, k, k)

        return _pool_step(node, source, size, channels, window, 0.0, apply_avg, k)

    def _pointwise(self, node, source, fn, size, channels) -> Step:
        return Step(node, "pointwise", (source,), size, channels, apply=fn, flops=float(channels))

    # -- functions and methods
    def _is_binary(self, node: fx.Node) -> bool:
        if node.op == "call_function":
            return node.target in _BINARY_FUNCTIONS
        return node.op == "call_method" and node.target in _BINARY_METHODS

    def _function_step(self, node, source, size, channels) -> Step:
        """An op whose first argument is the one spatial input; the rest are constants."""
        target = node.target
        known = (node.op == "call_function" and target in _UNARY_FUNCTIONS) or (
            node.op == "call_method" and target in _UNARY_METHODS
        )
        if target is F.conv2d and node.op == "call_function":
            return self._conv_function(node, source, size, channels)
        if target in (F.max_pool2d, F.avg_pool2d) and node.op == "call_function":
            raise _Dense  # functional pools: left to the dense part (rare in practice)
        if not known:
            if self._is_binary(node):
                return self._merge_step(node, [source], size, channels)
            raise _Dense
        consts = [self.clean[n] for n in node.all_input_nodes if n is not source]
        if not all(_const_broadcast(c) for c in consts):
            raise _Dense
        for key in ("inplace",):
            if node.kwargs.get(key):
                raise _Dense
        if node.op == "call_function":

            def fn(p: Tensor, node=node, source=source) -> Tensor:
                args = fx.node.map_arg(node.args, lambda n: p if n is source else self.clean[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: self.clean[n])
                return node.target(*args, **kwargs)  # type: ignore[operator]

        else:

            def fn(p: Tensor, node=node, source=source) -> Tensor:
                args = fx.node.map_arg(node.args, lambda n: p if n is source else self.clean[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: self.clean[n])
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)

        return self._pointwise(node, source, fn, size, channels)

    def _conv_function(self, node, source, size, channels) -> Step:
        weight_node = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        bias_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if not isinstance(weight_node, fx.Node) or self.kinds[weight_node] != "const":
            raise _Dense
        if isinstance(bias_node, fx.Node) and self.kinds[bias_node] != "const":
            raise _Dense
        weight = self.clean[weight_node]
        bias = self.clean[bias_node] if isinstance(bias_node, fx.Node) else bias_node
        stride = _literal(node, 3, "stride", 1)
        padding = _literal(node, 4, "padding", 0)
        dilation = _literal(node, 5, "dilation", 1)
        groups = _literal(node, 6, "groups", 1)
        inp = self.clean[source]
        return self._conv(
            node, source, inp, weight, bias, stride, padding, dilation, groups, size, channels
        )

    def _merge_step(self, node, sources, size, channels) -> Step:
        """A pointwise op of several spatial inputs (add, mul, cat along channels)."""
        for source in sources:
            shape = self.clean[source].shape  # type: ignore[union-attr]
            if tuple(shape[2:]) != size:
                raise _Dense
        others = [n for n in node.all_input_nodes if n not in sources]
        if not all(_const_broadcast(self.clean[n]) for n in others):
            raise _Dense
        if node.op == "call_function" and node.target in _CAT:
            tensors = node.args[0] if node.args else node.kwargs.get("tensors")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if not isinstance(tensors, (list, tuple)) or not all(t in sources for t in tensors):
                raise _Dense
            if isinstance(dim, fx.Node) or int(dim) % 4 != 1:
                raise _Dense
        elif not self._is_binary(node):
            raise _Dense
        if node.kwargs.get("out") is not None:
            raise _Dense

        def fn(*patches: Tensor, node=node, sources=tuple(sources)) -> Tensor:
            values = dict(zip(sources, patches, strict=True))
            args = fx.node.map_arg(node.args, lambda n: values.get(n, self.clean[n]))
            kwargs = fx.node.map_arg(node.kwargs, lambda n: values.get(n, self.clean[n]))
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            return node.target(*args, **kwargs)  # type: ignore[operator]

        return Step(node, "merge", tuple(sources), size, channels, apply=fn, flops=float(channels))


def _pool_step(
    node: fx.Node,
    source: fx.Node,
    size: tuple[int, int],
    channels: int,
    window: Window,
    pad_value: float,
    apply: Callable[[Tensor], Tensor],
    kernel: tuple[int, int],
    divisor: Tensor | None = None,
) -> Step:
    """A pooling step: `apply` on the patch padded with `pad_value` (-inf for max, 0 for sums)."""
    flops = float(kernel[0] * kernel[1] * channels)
    return Step(
        node, "window", (source,), size, channels, window, pad_value, apply, divisor, flops=flops
    )


def _window(k, s, d, lo, hi, n_in, n_out) -> Window:
    """A window whose high padding is extended so that every output's window fits."""
    ext = []
    for i in (0, 1):
        span = (n_out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1
        ext.append(max(hi[i], span - n_in[i] - lo[i], 0))
    return Window(tuple(k), tuple(s), tuple(d), tuple(lo), (ext[0], ext[1]))


def _avg_divisor(module: nn.AvgPool2d, n_in, dtype) -> Tensor:
    """The divisor of each output of an average pool, so that output = window sum / divisor."""
    ones = torch.ones(1, 1, *n_in, dtype=torch.float64)
    k, s, p = module.kernel_size, module.stride, module.padding
    if module.divisor_override:
        out = F.avg_pool2d(ones, k, s, p, module.ceil_mode, module.count_include_pad)
        return torch.full(out.shape[2:], float(module.divisor_override), dtype=dtype)
    total = F.avg_pool2d(ones, k, s, p, module.ceil_mode, module.count_include_pad, 1)
    mean = F.avg_pool2d(ones, k, s, p, module.ceil_mode, module.count_include_pad)
    return (total / mean).round()[0, 0].to(dtype)


# ---------------------------------------------------------------- analysis


def _traced(model: nn.Module) -> tuple[fx.Graph, list[fx.Node], fx.Node, fx.Node]:
    """The model's functionalised graph, its live nodes, its output and its input node."""
    if not isinstance(model, nn.Module):
        raise Unsupported("model_fn is not an nn.Module, so torch.fx cannot trace it")
    for where, module in model.named_modules():
        if module.training and isinstance(module, _TRAINABLE):
            raise Unsupported(
                f"{type(module).__name__} at {where or 'the root'!r} is in training mode"
            )
    graph = _trace(model)
    _functionalise(graph, model)
    nodes, result = _live(graph)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise Unsupported("the model's forward takes more than one input")
    return graph, nodes, result, placeholders[0]


def analyse(
    model: nn.Module, image: Tensor, like: Graph | None = None, *, defer_dense: bool = False
) -> Graph:
    """Trace `model`, run the clean `image` ``[1, C, H, W]`` through it and classify the nodes.

    `like`, the analysis of another image of the same call, lends its trace: only the clean pass
    and the classification run again. With `defer_dense`, a linear layer after the first dense
    node is not run: its clean value is a zero stand-in of the right shape, which is all that
    planning reads (at batch 1 the dense layers of AlexNet and VGG16 are memory-bound, 35-60% of
    the clean pass). `complete_dense` computes the real values before the graph is run.
    """
    if like is not None:
        graph, nodes, result, inp = like.graph, like.nodes, like.output, like.input
    else:
        graph, nodes, result, inp = _traced(model)
    clean: dict[fx.Node, object] = {}
    kinds: dict[fx.Node, str] = {}
    steps: dict[fx.Node, Step] = {}
    builder = _Builder(model, clean, kinds, steps, set(nodes))
    dense: list[fx.Node] = []
    deferred = False
    with torch.no_grad():
        for node in nodes:
            if node is inp:
                clean[node] = image
                kinds[node] = "patch"
                steps[node] = Step(node, "input", (), tuple(image.shape[2:]), image.shape[1])
                continue
            stand_in = _linear_stand_in(node, clean, kinds, model) if defer_dense else None
            if stand_in is not None:
                clean[node], kinds[node], deferred = stand_in, "dense", True
                dense.append(node)
                continue
            clean[node] = _clean_value(node, clean, model)
            inputs = node.all_input_nodes
            if node.op == "get_attr" or all(kinds[n] == "const" for n in inputs):
                kinds[node] = "const"
                continue
            try:
                steps[node] = builder.step(node)
                kinds[node] = "patch"
            except _Dense:
                kinds[node] = "dense"
                dense.append(node)
    for node, value in clean.items():
        if kinds[node] == "patch" and isinstance(value, Tensor):
            clean[node] = value[0]  # [C, H, W]
    if kinds[result] == "const":
        raise Unsupported("the model's output does not depend on the image")
    users = set(dense) | {result}
    boundary = [
        n
        for n in nodes
        if kinds[n] == "patch" and (n is result or any(u in users for u in n.users))
    ]
    full = sum(s.flops * s.size[0] * s.size[1] for s in steps.values())
    out = Graph(model, graph, nodes, clean, kinds, steps, dense, boundary, result, inp)
    out.full_flops = full
    out.dense_flops = _dense_flops(out)
    out.deferred = deferred
    return out


def _linear_stand_in(node: fx.Node, clean: dict, kinds: dict, root: nn.Module) -> Tensor | None:
    """Zeros shaped like the output of a linear layer that reads a dense node, or None."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    source = node.args[0]
    if kinds.get(source) != "dense" or not isinstance(clean.get(source), Tensor):
        return None
    module = root.get_submodule(str(node.target)) if node.op == "call_module" else None
    if type(module) is nn.Linear:
        features = module.out_features
    elif node.op == "call_function" and node.target is F.linear and len(node.args) > 1:
        weight = clean.get(node.args[1]) if isinstance(node.args[1], fx.Node) else None
        if not isinstance(weight, Tensor) or weight.ndim != 2:
            return None
        features = weight.shape[0]
    else:
        return None
    value = clean[source]
    return value.new_zeros((*value.shape[:-1], features))


def complete_dense(g: Graph) -> None:
    """Replace the stand-ins of a deferred analysis with the dense layers' clean values."""
    if not g.deferred:
        return
    values = {
        n: v[None] if g.kinds[n] == "patch" and isinstance(v, Tensor) else v
        for n, v in g.clean.items()
    }
    with torch.no_grad():
        for node in g.dense:
            values[node] = g.clean[node] = _clean_value(node, values, g.root)
    g.deferred = False


def _clean_value(node: fx.Node, values: dict, root: nn.Module) -> object:
    """`run_node` on the clean image, its failure a `GraphFailed` naming the node."""
    try:
        return run_node(node, values, root)
    except Exception as error:
        raise GraphFailed(f"the traced graph fails at {node.name}: {error}") from error


def _dense_flops(g: Graph) -> float:
    total = 0.0
    for node in g.dense:
        value = g.clean[node]
        if node.op == "call_module":
            module = g.root.get_submodule(str(node.target))
            if isinstance(module, nn.Linear):
                total += 2.0 * module.in_features * module.out_features
                continue
            if isinstance(module, nn.Conv2d) and isinstance(value, Tensor):
                k = module.kernel_size[0] * module.kernel_size[1]
                total += 2.0 * value.numel() * k * module.in_channels / module.groups
                continue
        if isinstance(value, Tensor):
            total += float(value.numel())
    return total
