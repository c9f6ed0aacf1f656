"""Intermediate layers as model functions: ``layer(model, name)`` and ``layers(model)``.

The returned function computes the model only up to the named submodule or graph node. It is built
by ``torch.fx`` truncation where the model traces; otherwise a forward hook, registered only for the
duration of each call, captures the output and stops the forward early. The user's model is never
changed: the truncated graph shares its submodules, and the scoped hook is removed in ``finally``.
"""

from __future__ import annotations

import logging
import operator

from torch import Tensor, fx, nn

from ._errors import close_matches, describe, fail

__all__ = ["layer", "layers"]

log = logging.getLogger("occlens")


class _LeafAt(fx.Tracer):
    """Tracer that keeps `name` as one call (a leaf) and opens up every ancestor of it."""

    def __init__(self, name: str | None) -> None:
        super().__init__()
        self.name = name

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.name is not None:
            if module_qualified_name == self.name:
                return True
            if self.name.startswith(module_qualified_name + "."):
                return False
        return super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, leaf: str | None) -> fx.Graph | None:
    try:
        return _LeafAt(leaf).trace(model)
    except Exception as error:  # tracing fails on data-dependent control flow and more
        log.debug("occlens: torch.fx cannot trace %s (%s)", type(model).__name__, error)
        return None


_COMPUTING = ("call_module", "call_function", "call_method")
_IN_PLACE = {
    getattr(operator, f"i{name}")
    for name in [
        "add",
        "and",
        "floordiv",
        "lshift",
        "matmul",
        "mod",
        "mul",
        "or",
        "pow",
        "rshift",
        "sub",
        "truediv",
        "xor",
    ]
}


def _node_names(graph: fx.Graph) -> list[str]:
    """Names of the computing nodes: module path for a module's first call, node name otherwise."""
    names, seen = [], set()
    for node in graph.nodes:
        if node.op not in _COMPUTING:
            continue
        if node.op == "call_module" and node.target not in seen:
            seen.add(node.target)
            names.append(str(node.target))
        else:
            names.append(node.name)
    return names


def layers(model: nn.Module) -> list[str]:
    """The names `layer` accepts for `model`.

    Every submodule path (``"features.10"``, ``"layer4"``, ``"layer4.1.conv2"``) comes first, in
    definition order, followed by the names of graph nodes that are not module calls (``"add_3"``,
    ``"flatten"``, or ``"relu_1"`` for the second call of a shared ReLU) when the model traces with
    ``torch.fx``.

    >>> import torch.nn as nn
    >>> import occlens as ol
    >>> ol.layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()))
    ['0', '1', '2']
    """
    _check_module(model, "layers")
    names = [name for name, _ in model.named_modules() if name]
    graph = _trace(model, None)
    if graph is not None:
        known = set(names)
        names += [n for n in _node_names(graph) if n not in known]
    return names


def _check_module(model: object, call: str) -> None:
    if not isinstance(model, nn.Module):
        raise fail(
            call,
            "model",
            f"needs an nn.Module to find layers in, got {describe(model)}",
            "pass the nn.Module itself (not a function wrapping it)",
        )


def _find_node(graph: fx.Graph, name: str) -> fx.Node | None:
    for node in graph.nodes:
        if node.op == "call_module" and node.target == name:
            return node
    for node in graph.nodes:
        if node.op in _COMPUTING and node.name == name:
            return node
    return None


def _truncate(graph: fx.Graph, stop: fx.Node) -> fx.Graph:
    """A copy of `graph` that runs up to `stop` and returns its value.

    Nodes after `stop` are dropped, whatever they do: an in-place op after the captured node can
    no longer overwrite it.
    """
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        env[node] = new.node_copy(node, lambda n: env[n])
        if node is stop:
            break
    new.output(env[stop])
    return new


def _may_mutate(node: fx.Node, root: nn.Module) -> bool:
    """Whether a node may write into a tensor: fx's own purity test misses in-place spellings."""
    if node.is_impure():
        return True
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return bool(node.kwargs.get("inplace")) or name.endswith("_") or node.target in _IN_PLACE
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(str(node.target)), "inplace", False))
    return False


def _drop_unused(module: fx.GraphModule) -> None:
    """Remove nodes whose value nobody reads, unless they may write into a tensor."""
    for node in reversed(list(module.graph.nodes)):
        if node.op in _COMPUTING and not node.users and not _may_mutate(node, module):
            module.graph.erase_node(node)
    module.graph.lint()
    module.recompile()


class _EarlyExit(Exception):
    def __init__(self, value: Tensor) -> None:
        super().__init__("occlens early exit")
        self.value = value


class HookedLayer(nn.Module):
    """Runs `model` until submodule `name` has produced its output (a hook scoped to the call)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        target = self.model.get_submodule(self.name)

        def stop(module: nn.Module, args: object, output: Tensor) -> None:
            raise _EarlyExit(output)

        handle = target.register_forward_hook(stop)
        try:
            self.model(x)
        except _EarlyExit as exit_:
            return exit_.value
        finally:
            handle.remove()
        raise fail(
            "layer",
            "name",
            f"the submodule {self.name!r} was not called during the forward pass",
            "pick a layer the model actually uses (see occlens.layers(model))",
        )


def layer(model: nn.Module, name: str) -> nn.Module:
    """The model truncated at layer `name`: a `ModelFn` returning that layer's activation.

    `name` is a submodule path (as in ``model.named_modules()``) or a graph node name listed by
    `layers`. The result is an ``nn.Module`` that shares the model's parameters; nothing of the
    model is copied or changed. Use it with any target, e.g. ``T.unit(c, y, x)``.

    >>> import torch, torch.nn as nn
    >>> import occlens as ol
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(True), nn.Flatten(), nn.Linear(64, 2))
    >>> ol.layer(net, "0")(torch.randn(1, 3, 6, 6)).shape
    torch.Size([1, 4, 4, 4])
    >>> ol.layer(net, "conv")
    Traceback (most recent call last):
    ...
    occlens._errors.OcclensError: layer(name='conv'): ...
    """
    graph, node = _locate(model, name, "layer")
    if node is None:
        log.debug("occlens: layer %r uses a scoped forward hook (no fx trace)", name)
        return HookedLayer(model, name)
    truncated = fx.GraphModule(model, _truncate(graph, node), class_name="OcclensLayer")
    _drop_unused(truncated)
    return truncated


def _locate(
    model: nn.Module, name: object, call: str, argument: str = "name"
) -> tuple[fx.Graph, fx.Node | None]:
    """The traced graph and the node of layer `name`; no node when only a hook can reach it."""
    _check_module(model, call)
    if not isinstance(name, str):
        raise fail(call, argument, f"got {describe(name)}", "pass the layer name as a string")
    is_module = bool(name) and name in dict(model.named_modules())
    graph = _trace(model, name if is_module else None)
    if graph is not None:
        node = _find_node(graph, name)
        if node is not None:
            return graph, node
    if is_module:
        if graph is None:
            return fx.Graph(), None
        raise fail(
            call,
            argument,
            f"the submodule {name!r} is not called in the forward pass of {type(model).__name__}",
            "pick a layer the model actually uses (see occlens.layers(model))",
        )
    raise fail(
        call,
        f"{argument}={name!r}",
        f"{type(model).__name__} has no layer {name!r}; close matches: "
        f"{close_matches(name, layers(model))}",
        "use one of the names from occlens.layers(model)",
    )


class HookedTail(nn.Module):
    """Runs `model` with the output of submodule `name` replaced (a hook scoped to the call)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, x: Tensor, activation: Tensor) -> Tensor:
        calls = []

        def replace(module: nn.Module, args: object, output: Tensor) -> Tensor:
            calls.append(1)
            return activation if len(calls) == 1 else output

        handle = self.model.get_submodule(self.name).register_forward_hook(replace)
        try:
            return self.model(x)
        finally:
            handle.remove()


def split_at(
    model: nn.Module, name: str, call: str, argument: str = "at"
) -> tuple[nn.Module, nn.Module]:
    """``(head, tail)`` around layer `name`: ``head(x)`` is its activation and ``tail(x, a)`` the
    model's output with that activation replaced by ``a``.

    The gradient of a score with respect to ``a`` is the gradient with respect to the layer's
    activation. With ``torch.fx`` the tail skips what only feeds the layer, and ``a`` is cloned
    first, so in-place ops after the layer cannot write into it.
    """
    graph, node = _locate(model, name, call, argument)
    if node is None:
        return HookedLayer(model, name), HookedTail(model, name)
    head = fx.GraphModule(model, _truncate(graph, node), class_name="OcclensLayer")
    _drop_unused(head)
    tail_graph = fx.Graph()
    copies: dict[fx.Node, fx.Node] = {}
    tail_graph.output(tail_graph.graph_copy(graph, copies))
    replaced = copies[node]
    first = next(n for n in tail_graph.nodes if n.op != "placeholder")
    with tail_graph.inserting_before(first):
        activation = tail_graph.placeholder("activation")
        fresh = tail_graph.call_method("clone", (activation,))
    replaced.replace_all_uses_with(fresh)
    tail_graph.erase_node(replaced)
    tail = fx.GraphModule(model, tail_graph, class_name="OcclensTail")
    _drop_unused(tail)
    return head, tail
