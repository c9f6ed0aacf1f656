"""Faster kernels for the forward and backward pass of one eager gradient computation.

`fast_kernels()` is a ``TorchFunctionMode`` entered around the model while a gradient method
records its graph. It routes two calls that torch's CPU kernels make slow, and nothing else:

* a ``conv2d`` onto at most four channels (an image model's stem) gets its input gradient from
  ordinary convolutions or matrix products (`occlens._stem_backward`);
* a ``max_pool2d`` of a contiguous NCHW tensor of at most `POOL_ELEMENTS` values per image runs
  on a channels-last copy, and its output, indices and gradient are copied back: torch's NCHW
  max-pool kernel is ten times slower on the CPU (ResNet18's pool of two 224 px images: 5.7 ms
  against 0.5 ms; max pools are 10-14% of the forward pass of AlexNet, VGG16 and ResNet18).
  The copies cost less than that up to about a million values per image (forward and backward
  of ResNet18's pool 6.8 -> 3.3 ms, AlexNet's three 3.2 -> 1.8 ms, VGG16's third 5.0 -> 3.0 ms),
  and more above (VGG16's first pool, 3.2 million: 21.4 -> 22.2 ms). The values and the
  indices of the maxima are the same bits in either layout (ties and NaNs included), so the
  forward pass and the gradient are unchanged, bit for bit.

Only plain eager calls enter the mode: under ``vmap`` or ``grad`` the default kernels run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ._checks import int_pair
from ._stem_backward import FewChannelConv2d

__all__ = ["MAX_CHANNELS", "POOL_ELEMENTS", "fast_kernels"]

MAX_CHANNELS = 4
POOL_ELEMENTS = 1 << 20
_MAX_POOLS = (F.max_pool2d, torch.max_pool2d)
_CONV2D_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_POOL_PARAMETERS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")


def _bound(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict | None:
    """The call's arguments by name, or None where they are not all among `names`."""
    if len(args) > len(names) or set(kwargs) - set(names):
        return None
    return dict(zip(names, args, strict=False)) | kwargs


def _stem_conv2d(args: tuple, kwargs: dict) -> Tensor | None:
    """``F.conv2d(*args, **kwargs)`` with the faster input gradient, or None where the call is
    not one the rule covers (more than `MAX_CHANNELS` input channels, groups, dilation, a
    padding string, no gradient to record, a tensor subclass, a device other than the CPU)."""
    values = _bound(_CONV2D_PARAMETERS, args, kwargs)
    if values is None:
        return None
    x, weight, bias = values.get("input"), values.get("weight"), values.get("bias")
    padding = values.get("padding", 0)
    if (
        not isinstance(x, Tensor)
        or not isinstance(weight, Tensor)
        or isinstance(padding, str)
        or values.get("groups", 1) != 1
        or int_pair(values.get("dilation", 1)) != (1, 1)
        or x.dim() != 4
        or weight.dim() != 4
        or not x.requires_grad
        or weight.shape[1] > MAX_CHANNELS
        or x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or weight.dtype != x.dtype
        or type(x) is not Tensor
        or type(weight) not in (Tensor, torch.nn.Parameter)
    ):
        return None
    bias = bias.detach() if isinstance(bias, Tensor) else None
    stride = int_pair(values.get("stride", 1))
    return FewChannelConv2d.apply(x, weight.detach(), bias, stride, int_pair(padding))


def _nchw_on_cpu(x: object) -> bool:
    return (
        type(x) is Tensor
        and x.dim() == 4
        and x.device.type == "cpu"
        and x.is_floating_point()
        and x.is_contiguous()
        and not x.is_contiguous(memory_format=torch.channels_last)
    )


class _ChannelsLastMaxPool2d(torch.autograd.Function):
    """``max_pool2d`` computed on a channels-last copy; output, indices and gradient in NCHW
    (the backward kernel is fast in NCHW, and mixing layouts would slow the layers around)."""

    @staticmethod
    def forward(x, kernel, stride, padding, dilation, ceil_mode):  # type: ignore[override]
        values, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last),
            kernel,
            stride,
            padding,
            dilation,
            ceil_mode,
        )
        return values.contiguous(), indices.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, *geometry = inputs
        ctx.save_for_backward(x, output[1])
        ctx.geometry = geometry
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad, _):  # type: ignore[override]
        x, indices = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.geometry
        grad_input = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, kernel, stride, padding, dilation, ceil_mode, indices
        )
        return grad_input, None, None, None, None, None


def _pool_in_channels_last(args: tuple, kwargs: dict) -> Tensor | None:
    """``max_pool2d(*args, **kwargs)`` through `_ChannelsLastMaxPool2d`, or None where the
    call asks for indices, or its input is not a contiguous NCHW tensor on the CPU of at most
    `POOL_ELEMENTS` values per image."""
    if kwargs.get("return_indices"):
        return None
    values = _bound(
        _POOL_PARAMETERS, args, {k: v for k, v in kwargs.items() if k != "return_indices"}
    )
    if values is None:
        return None
    x, kernel = values.get("input"), values.get("kernel_size")
    if (
        kernel is None  # torch's own call raises its error
        or not _nchw_on_cpu(x)
        or x[0].numel() > POOL_ELEMENTS
    ):
        return None
    stride = values.get("stride")
    return _ChannelsLastMaxPool2d.apply(
        x,
        kernel,
        kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else stride,
        values.get("padding", 0),
        values.get("dilation", 1),
        bool(values.get("ceil_mode", False)),
    )[0]


class _FastKernels(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            routed = _stem_conv2d(args, kwargs)
            if routed is not None:
                return routed
        elif func in _MAX_POOLS:
            pooled = _pool_in_channels_last(args, kwargs)
            if pooled is not None:
                return pooled
        return func(*args, **kwargs)


def fast_kernels() -> TorchFunctionMode:
    """The mode to enter around the model for one eager gradient computation."""
    return _FastKernels()
