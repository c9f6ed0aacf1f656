"""The stages a `SmallCNN` is built from, their validation and their window geometry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .._errors import describe, fail
from ._geometry import Window

__all__ = [
    "RELU_SPELLINGS",
    "ConvStage",
    "PoolStage",
    "ResidualStage",
    "Stage",
    "check_stages",
    "stage_paths",
]

RELU_SPELLINGS: tuple[str, ...] = (
    "nn.ReLU(inplace=True)",
    "nn.ReLU()",
    "F.relu",
    "F.relu(inplace=True)",
    "torch.relu",
    "torch.relu_",
    "Tensor.relu",
    "Tensor.relu_",
    "shared",
)
"""How a ReLU can be written. ``"Tensor.relu_"`` is ``x.relu_()`` with its result ignored;
``"shared"`` is one ``nn.ReLU(inplace=True)`` module called at several places."""


@dataclass(frozen=True)
class ConvStage:
    """``Conv2d`` (biased unless batch-normed), optional ``BatchNorm2d``, a ReLU spelled `relu`.

    >>> from occlens.testing import ConvStage
    >>> ConvStage(8, kernel=3, padding=1, relu="F.relu").dilation
    1
    """

    out_channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    batchnorm: bool = False
    relu: str = "nn.ReLU(inplace=True)"


@dataclass(frozen=True)
class PoolStage:
    """``MaxPool2d`` or ``AvgPool2d`` (`kind` ``"max"`` / ``"avg"``); no ReLU.

    >>> from occlens.testing import PoolStage
    >>> PoolStage("avg", kernel=3, stride=2, padding=1, ceil_mode=True).kind
    'avg'
    """

    kind: Literal["max", "avg"] = "max"
    kernel: int = 2
    stride: int = 2
    padding: int = 0
    ceil_mode: bool = False


@dataclass(frozen=True)
class ResidualStage:
    """A residual block: ``relu(conv2(relu(conv1(x))) + shortcut(x))``, torchvision-style.

    ``conv1`` has `kernel`, `stride` and `dilation` with "same" padding; ``conv2`` has `kernel2`,
    stride 1. Both kernels are odd. The shortcut is the identity, or a 1x1 conv with `stride` when
    `projection` is set (needed when the stride or the channel count changes). `relu` is
    ``"shared"`` (one ``self.relu`` module called twice, as in torchvision's ``BasicBlock``) or a
    pair ``(inner, outer)`` of other spellings. `inplace_add` writes ``out += identity``.

    >>> from occlens.testing import ResidualStage
    >>> ResidualStage(8, stride=2, projection=True, relu=("F.relu", "Tensor.relu_")).kernel2
    3
    """

    out_channels: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    kernel2: int = 3
    projection: bool = False
    batchnorm: bool = False
    relu: str | tuple[str, str] = "shared"
    inplace_add: bool = True


Stage = ConvStage | PoolStage | ResidualStage


def stage_paths(stage: Stage) -> list[tuple[Window, ...]]:
    """The chains of windows from a stage's input to its output (two for a residual block)."""
    if isinstance(stage, ConvStage):
        return [(Window(stage.kernel, stage.stride, stage.padding, stage.dilation),)]
    if isinstance(stage, PoolStage):
        return [(Window(stage.kernel, stage.stride, stage.padding, 1, stage.ceil_mode),)]
    pad = stage.dilation * (stage.kernel - 1) // 2
    branch = (
        Window(stage.kernel, stage.stride, pad, stage.dilation),
        Window(stage.kernel2, 1, (stage.kernel2 - 1) // 2, 1),
    )
    return [branch, (Window(1, stage.stride, 0, 1),)]


def check_stages(stages: object, in_channels: int) -> tuple[Stage, ...]:
    """Validate `SmallCNN`'s stages for `in_channels` input channels; return them as a tuple."""
    call = "SmallCNN"
    if not isinstance(stages, Sequence) or isinstance(stages, str) or not stages:
        raise fail(call, "stages", f"got {describe(stages)}", "pass a non-empty list of stages")
    channels = in_channels
    for i, stage in enumerate(stages):
        where = f"stage {i} ({stage!r})"
        if not isinstance(stage, (ConvStage, PoolStage, ResidualStage)):
            raise fail(
                call, "stages", f"{where} is not a stage", "use ConvStage, PoolStage, ResidualStage"
            )
        _check_ints(stage, where)
        if isinstance(stage, ConvStage):
            _check_relu(stage.relu, where, shared=True)
        elif isinstance(stage, PoolStage):
            if stage.kind not in ("max", "avg") or stage.padding > stage.kernel // 2:
                raise fail(
                    call,
                    "stages",
                    f"{where}: kind must be 'max' or 'avg' and padding at most kernel // 2",
                    "fix the pool (PyTorch rejects larger padding)",
                )
        else:
            if stage.kernel % 2 == 0 or stage.kernel2 % 2 == 0:
                raise fail(call, "stages", f"{where} has an even kernel", "use odd kernels")
            needs = stage.stride != 1 or stage.out_channels != channels
            if needs and not stage.projection:
                raise fail(
                    call,
                    "stages",
                    f"{where} changes the stride or the channels ({channels} -> "
                    f"{stage.out_channels}), so the identity shortcut does not fit",
                    "set projection=True",
                )
            if stage.relu != "shared":
                if not isinstance(stage.relu, tuple) or len(stage.relu) != 2:
                    raise fail(
                        call, "stages", f"{where}: bad relu", "use 'shared' or (inner, outer)"
                    )
                for spelling in stage.relu:
                    _check_relu(spelling, where, shared=False)
        if not isinstance(stage, PoolStage):
            channels = stage.out_channels
    return tuple(stages)


def _check_ints(stage: Stage, where: str) -> None:
    lows = {
        "out_channels": 1,
        "kernel": 1,
        "kernel2": 1,
        "stride": 1,
        "dilation": 1,
        "padding": 0,
    }
    for name, low in lows.items():
        if not hasattr(stage, name):
            continue
        value = getattr(stage, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise fail("SmallCNN", "stages", f"{where}: {name}={value!r}", f"use an int >= {low}")


def _check_relu(spelling: object, where: str, *, shared: bool) -> None:
    allowed = RELU_SPELLINGS if shared else RELU_SPELLINGS[:-1]
    if spelling not in allowed:
        raise fail(
            "SmallCNN", "stages", f"{where}: unknown relu {spelling!r}", f"use one of {allowed}"
        )
