"""Theoretical receptive fields: ``receptive_field(model, layer, input_size) -> RF``.

Coordinates follow DNNBrain: pixel ``i`` spans ``[i, i + 1)`` and has its centre at ``i + 0.5``,
so the input itself has ``size 1, jump 1, start 0.5``. Unit ``i`` of a feature map is centred on
``start + i * jump`` and can depend on the pixels ``[start + i * jump - size / 2,
start + i * jump + size / 2)``, a half-open interval with whole-number ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call, vjp

from ._checks import _TRAIN_SENSITIVE
from ._errors import OcclensError, describe, fail
from ._keys import generator
from ._layers import HookedLayer, _drop_unused, _locate, _truncate
from ._receptive_trace import CALL, Axis, analytic_field
from ._types import Key

__all__ = ["RF", "receptive_field"]

_PROBES = 2  # random images whose gradient supports are united


def _pair(value: object, argument: str, low: float, kind: type | tuple = int) -> tuple:
    pair = value if isinstance(value, (tuple, list)) else (value, value)
    ok = len(pair) == 2 and all(isinstance(v, kind) and not isinstance(v, bool) for v in pair)
    if not ok or not all(v >= low for v in pair):
        raise fail("RF", argument, f"got {describe(value)}", f"pass a number >= {low} or a pair")
    return tuple(pair)


@dataclass(frozen=True)
class RF:
    """The receptive field of a layer's units, as ``(rows, columns)`` pairs.

    - `size`: how many pixels a unit can see.
    - `jump`: how far, in pixels, the field moves from one unit to the next (the layer's total
      stride). 0 means that every unit sees the whole input along that axis, as after
      ``Flatten`` and ``Linear``; then `size` is the input's and `start` its centre.
    - `start`: the centre of unit 0's field, in pixel coordinates (see the module docstring).
    - `feature_size`: the layer's feature map in units; ``(1, 1)`` for a layer without spatial
      axes.
    - `input_size`: the input ``(H, W)`` that `region` clips to.

    A single number is read as the same value for both axes.

    >>> from occlens._receptive import RF
    >>> rf = RF(size=99, jump=16, start=15.5, feature_size=13, input_size=224)
    >>> rf
    RF(size=(99, 99), jump=(16, 16), start=(15.5, 15.5), feature_size=(13, 13),
       input_size=(224, 224))
    >>> rf.region(0, 6), rf.region(0, 6, clip=False), rf.center(0, 6)
    ((0, 62, 65, 161), (-34, 62, 65, 161), (15.5, 111.5))
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]
    feature_size: tuple[int, int]
    input_size: tuple[int, int]

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "size", _pair(self.size, "size", 1))
        set_(self, "jump", _pair(self.jump, "jump", 0))
        set_(self, "feature_size", _pair(self.feature_size, "feature_size", 1))
        set_(self, "input_size", _pair(self.input_size, "input_size", 1))
        start = _pair(self.start, "start", float("-inf"), (int, float))
        set_(self, "start", tuple(float(s) for s in start))
        if any((2 * s - n) % 2 for s, n in zip(self.start, self.size, strict=True)):
            raise fail(
                "RF",
                "start",
                f"start={self.start} with size={self.size} puts a field's edge inside a pixel",
                "use start = first pixel + size / 2 (a half-integer for an odd size)",
            )

    def _unit(self, y: object, x: object, call: str) -> tuple[int, int]:
        for name, value, n in (("y", y, self.feature_size[0]), ("x", x, self.feature_size[1])):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
                h, w = self.feature_size
                raise fail(
                    call,
                    name,
                    f"got {describe(value)} for a feature map of {h}x{w} units",
                    f"use an int in 0..{n - 1}",
                )
        return y, x  # type: ignore[return-value]

    def center(self, y: int, x: int) -> tuple[float, float]:
        """The centre of unit ``(y, x)``'s field, in pixel coordinates."""
        y, x = self._unit(y, x, "RF.center")
        return self.start[0] + y * self.jump[0], self.start[1] + x * self.jump[1]

    def region(self, y: int, x: int, *, clip: bool = True) -> tuple[int, int, int, int]:
        """The pixels unit ``(y, x)`` can depend on, as a half-open box ``(y0, x0, y1, x1)``.

        With `clip` (the default) the box is cut to the image ``[0, H) x [0, W)``, ready for
        ``image[..., y0:y1, x0:x1]`` and for occlusion's ``box=``; a unit that sees only padding
        gets ``(0, 0, 0, 0)``. With ``clip=False`` the box may reach outside the image, and
        equals the interval back-projection of `occlens.testing.SmallCNN.receptive_box`.

        Every pixel outside the box has zero gradient, and zero occlusion effect, on the unit.
        For a unit whose field lies inside the image the box is the smallest one holding the
        gradient's support, though dilation, or a stride longer than its kernel, leaves pixels
        inside that the unit never reads. Near the bottom and right borders the clipped box may
        hold a few pixels that only the padding of an inner layer would read.
        """
        y, x = self._unit(y, x, "RF.region")
        centre = (self.start[0] + y * self.jump[0], self.start[1] + x * self.jump[1])
        y0, x0 = (round(c - n / 2) for c, n in zip(centre, self.size, strict=True))
        y1, x1 = y0 + self.size[0], x0 + self.size[1]
        if not clip:
            return (y0, x0, y1, x1)
        h, w = self.input_size
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else (0, 0, 0, 0)


def _input_size(value: object) -> tuple[int | None, int, int]:
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(items, (tuple, list)) and len(items) in (2, 3)
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
        raise fail(
            CALL,
            "input_size",
            f"got {describe(value)}",
            "pass the input's H, (H, W) or (C, H, W) as positive ints",
        )
    return (None, *items) if len(items) == 2 else tuple(items)  # type: ignore[return-value]


def _from_axes(rows: Axis, cols: Axis, size: tuple[int, int]) -> RF:
    start = (rows.lo + rows.size / 2, cols.lo + cols.size / 2)
    return RF((rows.size, cols.size), (rows.jump, cols.jump), start, (rows.n, cols.n), size)


def receptive_field(
    model: nn.Module,
    layer: str,
    input_size: int | tuple[int, int] | tuple[int, int, int],
    *,
    method: Literal["analytic", "gradient"] = "analytic",
    key: Key = 0,
) -> RF:
    """The receptive field of the units of `layer` (a name from `occlens.layers`).

    `input_size` is ``H``, ``(H, W)`` or ``(C, H, W)``. The channels matter only to the
    gradient method, which otherwise takes them from the first ``Conv2d``.

    ``method="analytic"`` traces the model with ``torch.fx`` up to `layer` and runs nothing.
    Along each axis it carries ``(size, jump, start)`` through the graph with DNNBrain's
    recursion, ``size += (k_eff - 1) * jump``, ``start += ((k_eff - 1) / 2 - p) * jump``,
    ``jump *= s``, where ``k_eff = d * (k - 1) + 1`` and ``jump`` is the one before the layer.
    It reads ``Conv2d`` (any padding, ``"same"``, dilation), ``MaxPool2d`` and ``AvgPool2d``
    (``ceil_mode`` changes `feature_size` only), their functional forms, adaptive pools with
    equal windows, spatial means, constant padding, and pointwise layers: every ReLU spelling,
    BatchNorm (as in eval mode), dropout, arithmetic. A residual add or a channel concatenation
    gets the smallest field that holds every branch's; the branches must have the same jump.
    A global pool keeps the back-projected field (ResNet18's ``avgpool``: size 627, jump 224),
    whose `region` is the whole image. After ``Flatten`` and ``Linear`` every unit sees the
    whole input (jump 0); ``Flatten``'s own output has no spatial layout and raises. Any other
    layer raises an `OcclensError` that names it and suggests ``method="gradient"``.

    ``method="gradient"`` runs the model (which must be in eval mode) in float64 on two random
    images drawn from `key`, and takes the support of d unit / d input for the centre unit and
    its diagonal neighbour, summed over channels with random weights. The field is read off
    the supports' extents, united over the images. A ReLU that is off, or a max pool that picks
    another pixel, hides the pixels behind it on one image; uniting images makes the misses
    rare, but it can still under-estimate the field of a net with very few channels. It works
    for any differentiable model, and needs the two units' fields inside the image (ResNet18's
    ``layer4`` field is 435 pixels wide: ask at 480).

    The model is never changed, even when a call raises.

    >>> import torch.nn as nn
    >>> from occlens._receptive import receptive_field
    >>> from occlens import testing
    >>> rf = receptive_field(testing.alexnet(), "features.6", 224)  # conv3
    >>> rf.size, rf.jump, rf.start, rf.feature_size
    ((99, 99), (16, 16), (15.5, 15.5), (13, 13))
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...                     nn.Conv2d(4, 4, 3, dilation=2), nn.ReLU())
    >>> rf = receptive_field(net, "3", 32)
    >>> rf
    RF(size=(12, 12), jump=(2, 2), start=(5.0, 5.0), feature_size=(12, 12), input_size=(32, 32))
    >>> rf.region(0, 0), rf.region(0, 0, clip=False), rf.region(5, 7)
    ((0, 0, 11, 11), (-1, -1, 11, 11), (9, 13, 21, 25))
    >>> receptive_field(net, "3", 32, method="gradient") == rf
    True
    """
    channels, height, width = _input_size(input_size)
    if method == "analytic":
        field = analytic_field(model, layer, (height, width))
        return _from_axes(field.rows, field.cols, (height, width))
    if method == "gradient":
        return _gradient(model, layer, channels, (height, width), key)
    raise fail(CALL, "method", f"got {describe(method)}", "pass 'analytic' or 'gradient'")


def _head(model: nn.Module, name: str) -> tuple[nn.Module, fx.Graph]:
    graph, node = _locate(model, name, CALL, "layer")
    if node is None:
        return HookedLayer(model, name), graph
    head = fx.GraphModule(model, _truncate(graph, node), class_name="OcclensLayer")
    _drop_unused(head)
    return head, graph


def _channels(model: nn.Module, graph: fx.Graph) -> int:
    """The input's channels, from the first convolution in the graph (or in the model)."""
    for node in graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(str(node.target))
            if isinstance(module, nn.Conv2d):
                return module.in_channels
        weight = node.args[1] if node.target is torch.conv2d and len(node.args) > 1 else None
        if isinstance(weight, fx.Node) and weight.op == "get_attr":
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
            return model.get_parameter(str(weight.target)).shape[1] * int(groups)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise fail(CALL, "input_size", "cannot tell how many channels the input has", "pass (C, H, W)")


def _trained(module: nn.Module) -> bool:
    """Whether running `module` in its current mode would use batch statistics or update it."""
    instance = isinstance(module, nn.modules.instancenorm._InstanceNorm)
    untracked = instance and not module.track_running_stats
    return module.training and isinstance(module, _TRAIN_SENSITIVE) and not untracked


def _gradient(model: nn.Module, name: str, channels: int | None, size, key: Key) -> RF:
    head, graph = _head(model, name)
    for where, module in model.named_modules():
        if _trained(module):
            raise fail(
                CALL,
                "model",
                f"{type(module).__name__} at {where or 'the root'!r} is in training mode, where "
                "running the model would use batch statistics or change its buffers",
                "call model.eval() first, or use method='analytic', which runs nothing",
            )
    channels = channels or _channels(model, graph)
    rng = generator(key, CALL, "drawing the gradient method's probe images")
    tensors = {**dict(head.named_parameters()), **dict(head.named_buffers())}
    device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
    wide = {
        k: t.detach().to(torch.float64) if t.is_floating_point() else t for k, t in tensors.items()
    }
    images = torch.randn(_PROBES, channels, *size, generator=rng, dtype=torch.float64)
    batch = images.repeat_interleave(2, dim=0).to(device)  # each image twice: units a and b

    def run(x: Tensor) -> Tensor:
        return functional_call(head, wide, (x,))

    try:
        output, pullback = vjp(run, batch)
    except OcclensError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise fail(
            CALL,
            "input_size",
            f"the model raised {type(error).__name__} on {describe(batch)}: {first}",
            "check the input's size and channels",
        ) from error
    if not isinstance(output, Tensor) or not output.dtype.is_floating_point:
        problem = f"the layer gives {describe(output)}, not one floating-point tensor"
        raise fail(CALL, f"layer={name!r}", problem, "ask for a layer that outputs a tensor")
    spatial = output.ndim == 4
    n = tuple(output.shape[-2:]) if spatial else (1, 1)
    a = ((n[0] - 1) // 2, (n[1] - 1) // 2)
    b = (min(a[0] + 1, n[0] - 1), min(a[1] + 1, n[1] - 1))
    cotangent = torch.zeros_like(output)
    if spatial:
        weights = torch.randn(output.shape[1], generator=rng, dtype=torch.float64)
        cotangent[0::2, :, a[0], a[1]] = weights.to(cotangent)
        cotangent[1::2, :, b[0], b[1]] = weights.to(cotangent)
    else:
        flat = cotangent.view(len(batch), -1)
        flat[0::2, flat.shape[1] // 2] = 1.0
        flat[1::2, -1] = 1.0
    (gradient,) = pullback(cotangent)
    seen = gradient.ne(0).any(1)  # [2 * probes, H, W]: summed over the input's channels
    supports = [seen[0::2].any(0), seen[1::2].any(0)]  # united over the probe images
    extents = [[_extent(s.any(1)), _extent(s.any(0))] for s in supports]  # rows, columns
    if not spatial:
        if all(e == [(0, size[0]), (0, size[1])] for e in extents):
            return RF(size, (0, 0), (size[0] / 2, size[1] / 2), (1, 1), size)
        raise fail(
            CALL,
            f"layer={name!r}",
            f"the layer's output {describe(output[0])} has no spatial axes, and its units see "
            "only part of the input",
            "ask for a layer before the flatten, or for one after a Linear layer",
        )
    axes = [
        _measure(name, axis, a[i], [e[i] for e in extents], n[i], size[i])
        for i, axis in enumerate(("rows", "columns"))
    ]
    return _from_axes(axes[0], axes[1], size)


def _extent(support: Tensor) -> tuple[int, int] | None:
    where = support.nonzero()
    return (int(where[0]), int(where[-1]) + 1) if len(where) else None


def _measure(name, axis, index, extents, n, length) -> Axis:
    """One axis of the field from the extents of units `index` and `index + 1` along it."""
    argument = f"layer={name!r}"
    if any(e is None for e in extents):
        raise fail(
            CALL,
            argument,
            "a probed unit's gradient is zero on every probe image (dead units?)",
            "use method='analytic', or another key",
        )
    (lo, hi), (lo_b, hi_b) = extents
    if n == 1:
        raise fail(
            CALL,
            argument,
            f"the layer has one unit along the {axis}, which sees [{lo}, {hi}) of the input's "
            f"0..{length}; the jump needs two units, and the size a field inside the image",
            "use a larger input_size, or method='analytic'",
        )
    if not all(e[0] > 0 and e[1] < length for e in extents):
        raise fail(
            CALL,
            argument,
            f"along the {axis}, the central units see [{lo}, {hi}) and [{lo_b}, {hi_b}) of the "
            f"input's 0..{length}: their fields reach the border, so their size is unknown",
            "use a larger input_size, or method='analytic'",
        )
    if hi - lo != hi_b - lo_b or lo_b <= lo:
        raise fail(
            CALL,
            argument,
            f"along the {axis}, neighbouring units see [{lo}, {hi}) and [{lo_b}, {hi_b}): the "
            "field is not the same shape from unit to unit",
            "use method='analytic' where it applies",
        )
    jump = lo_b - lo
    return Axis(lo - index * jump, hi - lo, jump, n)
