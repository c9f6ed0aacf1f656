"""A faster input gradient for convolutions onto few channels: the stem of an image model.

The input gradient of a convolution is a transposed convolution back onto its input channels.
For a stem (3 colour channels out of 64 feature maps) the CPU kernel for that is slow: on
AlexNet's first layer it takes 5.4 ms for two 224 px images, six times its forward pass. Two
other forms of the same sum run at the speed of ordinary convolutions and matrix products:

* stride ``s > 1``, the polyphase form: each of the ``s * s`` phases of the input grid is a full
  correlation of the output gradient with the kernel taps ``(s t + r, s t' + r')``, so one
  convolution onto ``C s^2`` channels and a pixel shuffle give them all (AlexNet 1.4 ms,
  ResNet18 3.4 ms instead of 8.8);
* stride 1, columns: ``W^T g`` for every output position, then ``fold`` adds the columns into
  the image (VGG's first layer 3.6 ms instead of 8.6).

Both are sums of the same products in another order, so they agree with the default to float
rounding (5e-7 of the largest value in float32).

`FewChannelConv2d` is a ``conv2d`` with that backward rule; `occlens._fast_kernels` routes a
stem's calls through it for the span of one eager gradient computation. The weights are
constants there: only the input gradient exists, which is all an input attribution asks for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FewChannelConv2d", "conv2d_input_gradient"]


def _polyphase_weight(weight: Tensor, stride: tuple[int, int]) -> Tensor:
    """``[C * sy * sx, O, Ty, Tx]``: phase ``(c, ry, rx)`` holds the taps ``(sy t + ry, sx t' +
    rx)`` of input channel ``c``, flipped so that a correlation computes the transposed sum."""
    out_channels, in_channels, kh, kw = weight.shape
    sy, sx = stride
    ty, tx = math.ceil(kh / sy), math.ceil(kw / sx)
    padded = weight.new_zeros(out_channels, in_channels, sy * ty, sx * tx)
    padded[:, :, :kh, :kw] = weight
    phases = padded.view(out_channels, in_channels, ty, sy, tx, sx).permute(1, 3, 5, 0, 2, 4)
    return phases.flip(-1, -2).reshape(in_channels * sy * sx, out_channels, ty, tx)


def conv2d_input_gradient(
    grad: Tensor,
    weight: Tensor,
    input_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> Tensor:
    """The gradient ``[B, C, H, W]`` of ``sum(grad * conv2d(x, weight, stride, padding))`` with
    respect to ``x`` (no dilation, one group), `input_size` being ``(H, W)``.

    >>> import torch, torch.nn.functional as F
    >>> x = torch.rand(2, 3, 17, 19, dtype=torch.float64, requires_grad=True)
    >>> w = torch.rand(8, 3, 5, 4, dtype=torch.float64)
    >>> g = torch.rand_like(F.conv2d(x, w, stride=(3, 2), padding=(2, 1)))
    >>> (autograd,) = torch.autograd.grad(F.conv2d(x, w, stride=(3, 2), padding=(2, 1)), x, g)
    >>> ours = conv2d_input_gradient(g, w, (17, 19), (3, 2), (2, 1))
    >>> torch.allclose(ours, autograd, rtol=1e-12, atol=1e-12)
    True
    """
    height, width = input_size
    py, px = padding
    _, in_channels, kh, kw = weight.shape
    if stride == (1, 1):
        batch, out_channels = grad.shape[:2]
        columns = weight.reshape(out_channels, -1).t() @ grad.reshape(batch, out_channels, -1)
        return F.fold(columns, (height, width), (kh, kw), padding=padding)
    phases = _polyphase_weight(weight, stride)
    ty, tx = phases.shape[-2:]
    full = _shuffle(F.conv2d(grad, phases, padding=(ty - 1, tx - 1)), in_channels, stride)
    short_y, short_x = py + height - full.shape[-2], px + width - full.shape[-1]
    if short_y > 0 or short_x > 0:  # rows and columns no window reads get no gradient
        full = F.pad(full, (0, max(short_x, 0), 0, max(short_y, 0)))
    return full[:, :, py : py + height, px : px + width]


def _shuffle(phased: Tensor, channels: int, stride: tuple[int, int]) -> Tensor:
    """``[B, C * sy * sx, h, w] -> [B, C, h * sy, w * sx]``, phase ``(ry, rx)`` at ``(ry, rx)``."""
    batch, _, h, w = phased.shape
    sy, sx = stride
    grid = phased.view(batch, channels, sy, sx, h, w).permute(0, 1, 4, 2, 5, 3)
    return grid.reshape(batch, channels, h * sy, w * sx)


class FewChannelConv2d(torch.autograd.Function):
    """``conv2d(x, weight, bias, stride, padding)`` whose backward is `conv2d_input_gradient`."""

    @staticmethod
    def forward(x, weight, bias, stride, padding):  # type: ignore[override]
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _, stride, padding = inputs
        ctx.save_for_backward(weight)
        ctx.geometry = (tuple(x.shape[-2:]), stride, padding)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        size, stride, padding = ctx.geometry
        return conv2d_input_gradient(grad, weight, size, stride, padding), None, None, None, None
