"""`SmallCNN`: a small CNN described by a tuple of stages, with its exact receptive boxes.

A stage is a `ConvStage` (conv, optional batch norm, ReLU), a `PoolStage` (max or average pool) or a
`ResidualStage` (conv branch plus identity or 1x1 projection, added, ReLU). Every ReLU is spelled
in one of `RELU_SPELLINGS`, so the same network exercises module, functional, method and in-place
forms, and a module called twice.

`SmallCNN.receptive_box` is an independent reference for occlusion and receptive-field code: it
back-projects an index interval through every stage with plain integer arithmetic, and shares no
code with occlens's layer or receptive-field functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import describe, fail
from .._keys import generator
from .._types import Key
from ._geometry import back_project, output_size, pair
from ._init import check_classes, default_linear, materialise
from ._stages import (
    ConvStage,
    PoolStage,
    ResidualStage,
    Stage,
    check_stages,
    stage_paths,
)

__all__ = ["SmallCNN"]

_MODULES = {"nn.ReLU(inplace=True)": True, "nn.ReLU()": False}


def _tensor_relu_(x: Tensor) -> Tensor:
    x.relu_()  # the result is ignored on purpose: only the mutation of x counts
    return x


_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "F.relu": lambda x: F.relu(x),
    "F.relu(inplace=True)": lambda x: F.relu(x, inplace=True),
    "torch.relu": lambda x: torch.relu(x),
    "torch.relu_": lambda x: torch.relu_(x),
    "Tensor.relu": lambda x: x.relu(),
    "Tensor.relu_": _tensor_relu_,
}


def _run(owner: nn.Module, step: str, x: Tensor) -> Tensor:
    """Apply one step: a functional ReLU spelling, or the submodule of `owner` named `step`."""
    function = _FUNCTIONS.get(step)
    if function is not None:
        return function(x)
    return owner.get_submodule(step)(x)


def _relu_step(owner: nn.Module, spelling: str, name: str) -> str:
    """Register a ReLU module on `owner` under `name` if `spelling` is a module; return the step."""
    if spelling in _MODULES:
        owner.add_module(name, nn.ReLU(inplace=_MODULES[spelling]))
        return name
    return spelling


class Residual(nn.Module):
    """The module of a `ResidualStage`."""

    def __init__(self, in_channels: int, stage: ResidualStage) -> None:
        super().__init__()
        out, bn = stage.out_channels, stage.batchnorm
        pad = stage.dilation * (stage.kernel - 1) // 2
        self.conv1 = nn.Conv2d(
            in_channels, out, stage.kernel, stage.stride, pad, stage.dilation, bias=not bn
        )
        self.bn1 = nn.BatchNorm2d(out) if bn else None
        if stage.relu == "shared":
            self.relu = nn.ReLU(inplace=True)
            self.inner = self.outer = "relu"
        else:
            self.inner = _relu_step(self, stage.relu[0], "relu1")
        self.conv2 = nn.Conv2d(out, out, stage.kernel2, 1, (stage.kernel2 - 1) // 2, bias=not bn)
        self.bn2 = nn.BatchNorm2d(out) if bn else None
        if stage.relu != "shared":
            self.outer = _relu_step(self, stage.relu[1], "relu2")
        self.downsample: nn.Module | None = None
        if stage.projection:
            shortcut = nn.Conv2d(in_channels, out, 1, stage.stride, bias=not bn)
            self.downsample = nn.Sequential(shortcut, nn.BatchNorm2d(out)) if bn else shortcut
        self.inplace_add = stage.inplace_add

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.conv1(x)
        if self.bn1 is not None:
            out = self.bn1(out)
        out = _run(self, self.inner, out)
        out = self.conv2(out)
        if self.bn2 is not None:
            out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        if self.inplace_add:
            out += identity
        else:
            out = out + identity
        return _run(self, self.outer, out)


class Features(nn.Module):
    """The stages as numbered children (``"0"``, ``"1"``, ...), run in order by `steps`.

    A step is a child's name or a functional ReLU spelling; ``"relu"`` is the shared module.
    """

    def __init__(self, in_channels: int, stages: Sequence[Stage]) -> None:
        super().__init__()
        steps: list[str] = []

        def add(module: nn.Module) -> None:
            name = str(sum(1 for s in steps if s.isdigit()))
            self.add_module(name, module)
            steps.append(name)

        channels = in_channels
        for stage in stages:
            if isinstance(stage, ConvStage):
                add(
                    nn.Conv2d(
                        channels,
                        stage.out_channels,
                        stage.kernel,
                        stage.stride,
                        stage.padding,
                        stage.dilation,
                        bias=not stage.batchnorm,
                    )
                )
                if stage.batchnorm:
                    add(nn.BatchNorm2d(stage.out_channels))
                if stage.relu in _MODULES:
                    add(nn.ReLU(inplace=_MODULES[stage.relu]))
                elif stage.relu == "shared":
                    if not hasattr(self, "relu"):
                        self.relu = nn.ReLU(inplace=True)
                    steps.append("relu")
                else:
                    steps.append(stage.relu)
                channels = stage.out_channels
            elif isinstance(stage, PoolStage):
                pool = nn.MaxPool2d if stage.kind == "max" else nn.AvgPool2d
                add(pool(stage.kernel, stage.stride, stage.padding, ceil_mode=stage.ceil_mode))
            else:
                add(Residual(channels, stage))
                channels = stage.out_channels
        self.steps = tuple(steps)
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        for step in self.steps:
            x = _run(self, step, x)
        return x

    def extra_repr(self) -> str:
        return f"steps={self.steps}"


@torch.no_grad()
def _init(module: nn.Module, rng: torch.Generator) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=rng)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -0.1, 0.1, generator=rng)
    elif isinstance(module, nn.BatchNorm2d):  # a random affine map in eval mode
        nn.init.uniform_(module.weight, 0.5, 1.5, generator=rng)
        nn.init.uniform_(module.bias, -0.1, 0.1, generator=rng)
        nn.init.normal_(module.running_mean, 0.0, 0.1, generator=rng)
        nn.init.uniform_(module.running_var, 0.5, 2.0, generator=rng)
        module.num_batches_tracked.zero_()  # type: ignore[union-attr]
    elif isinstance(module, nn.Linear):
        default_linear(module, rng)


class SmallCNN(nn.Module):
    """``features`` (the stages) -> global average pool -> ``fc``: ``[B, C, H, W] -> [B, K]``.

    ``occlens.layer(model, "features")`` gives the ``[B, C', h, w]`` feature map whose units
    `receptive_box` describes. Weights come from `key` (an ``int`` or a ``torch.Generator``)
    without touching the global random state; the model is in eval mode. `stages` is kept as
    ``model.stages``, and the repr shows how to rebuild the model.

    >>> import torch
    >>> from occlens.testing import ConvStage, PoolStage, SmallCNN
    >>> model = SmallCNN([ConvStage(4, kernel=3), PoolStage("max", 2, 2)], num_classes=2, key=0)
    >>> model(torch.rand(1, 3, 10, 10)).shape
    torch.Size([1, 2])
    >>> model.feature_size((10, 10)), model.receptive_box(0, 3, (10, 10))
    ((4, 4), (0, 6, 4, 10))
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        in_channels: int = 3,
        num_classes: int = 3,
        key: Key = 0,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise fail(
                "SmallCNN", "in_channels", f"got {describe(in_channels)}", "pass an int >= 1"
            )
        classes = check_classes(num_classes, "SmallCNN")
        checked = check_stages(stages, in_channels)
        rng = generator(key, "SmallCNN", "random weights")
        with torch.device("meta"):
            self.features = Features(in_channels, checked)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.features.out_channels, classes)
        materialise(self, _init, rng, "SmallCNN")
        self.stages = checked
        self.in_channels, self.num_classes, self.key = in_channels, classes, key
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def extra_repr(self) -> str:
        return (
            f"stages={self.stages!r}, in_channels={self.in_channels}, "
            f"num_classes={self.num_classes}, key={self.key!r}"
        )

    def _sizes(self, size: object, call: str) -> list[tuple[int, int]]:
        """Spatial size before each stage and after the last one, for an input of `size`."""
        height, width = pair(size, call, "size")
        sizes = [(height, width)]
        for stage in self.stages:
            h, w = sizes[-1]
            sizes.append(
                (output_size(stage_paths(stage)[0], h), output_size(stage_paths(stage)[0], w))
            )
            if min(sizes[-1]) < 1:
                raise fail(
                    call,
                    "size",
                    f"an input of {height}x{width} is too small for this network: stage "
                    f"{len(sizes) - 2} ({stage}) leaves nothing of its {h}x{w} input",
                    f"use an input of at least {self.min_input}x{self.min_input}",
                )
        return sizes

    @property
    def min_input(self) -> int:
        """The smallest square input size for which every stage has an output."""
        size = 1
        while True:
            n = size
            for stage in self.stages:
                n = output_size(stage_paths(stage)[0], n)
                if n < 1:
                    break
            else:
                return size
            size += 1

    def feature_size(self, size: int | tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of the ``features`` output for an input of `size` (``H`` or ``(H, W)``).

        >>> from occlens.testing import ConvStage, SmallCNN
        >>> SmallCNN([ConvStage(2, kernel=5, stride=2)]).feature_size((12, 9))
        (4, 3)
        """
        return self._sizes(size, "feature_size")[-1]

    def receptive_box(
        self, y: int, x: int, size: int | tuple[int, int], *, clip: bool = True
    ) -> tuple[int, int, int, int]:
        """The input box that can influence unit ``(y, x)`` of ``features``: ``(y0, x0, y1, x1)``.

        Half-open, for an input of `size` (``H`` or ``(H, W)``). Each stage maps an output index
        range ``[a, b]`` to the input range ``[a*s - p, b*s - p + d*(k - 1)]`` (kernel k, stride
        s, padding p, dilation d), clipped to the stage's input; a residual block takes the union
        of its branch and its shortcut. The box is conservative: dilation and strides larger than
        the kernel leave pixels inside it that the unit never reads. With ``clip=False`` nothing
        is clipped (the box may reach outside the image). A unit that reads only padding has
        the empty box ``(0, 0, 0, 0)``.

        >>> from occlens.testing import ConvStage, SmallCNN
        >>> model = SmallCNN([ConvStage(2, kernel=3, padding=1), ConvStage(2, kernel=3, stride=2)])
        >>> model.receptive_box(0, 0, (9, 9)), model.receptive_box(0, 0, (9, 9), clip=False)
        ((0, 0, 4, 4), (-1, -1, 4, 4))
        """
        sizes = self._sizes(size, "receptive_box")
        h, w = sizes[-1]
        for name, value, limit in (("y", y, h), ("x", x, w)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
                raise fail(
                    "receptive_box",
                    name,
                    f"got {describe(value)} for a feature map of {h}x{w}",
                    f"use an int in 0..{limit - 1}",
                )
        rows: tuple[int, int] | None = (y, y)
        cols: tuple[int, int] | None = (x, x)
        for stage, (height, width) in zip(reversed(self.stages), reversed(sizes[:-1]), strict=True):
            paths = stage_paths(stage)
            rows = back_project(paths, rows, height, clip) if rows else None
            cols = back_project(paths, cols, width, clip) if cols else None
        if rows is None or cols is None:
            return (0, 0, 0, 0)
        return (rows[0], cols[0], rows[1] + 1, cols[1] + 1)
