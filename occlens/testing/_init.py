"""Seeded weight initialisation that never touches PyTorch's global random state.

Models are built on the ``meta`` device (so ``nn.Module`` constructors draw nothing from the global
generator), materialised with ``to_empty`` and then filled here from an explicit
``torch.Generator``, module by module in ``named_modules`` order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._errors import describe, fail
from .._keys import generator

__all__ = [
    "build",
    "check_classes",
    "default_linear",
    "kaiming_conv",
    "materialise",
    "reset_batchnorm",
]

Init = Callable[[nn.Module, torch.Generator], None]


def check_classes(num_classes: object, call: str) -> int:
    """Validate a ``num_classes`` argument: a positive ``int``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise fail(
            call,
            "num_classes",
            f"got {describe(num_classes)}",
            "pass a positive int, the number of logits the model returns",
        )
    return num_classes


def build(make: Callable[[], nn.Module], init: Init, key: object, call: str) -> nn.Module:
    """``make()`` on the meta device, materialised and ``init``-ed from `key`, in eval mode."""
    rng = generator(key, call, "random weights")
    with torch.device("meta"):
        model = make()
    materialise(model, init, rng, call)
    return model.eval()


def materialise(model: nn.Module, init: Init, rng: torch.Generator, call: str) -> None:
    """Move a meta-device `model` to the CPU in place; fill every tensor by ``init(module, rng)``.

    Every parameter and buffer must be written by `init`: anything it leaves alone would hold
    uninitialised memory, so that is checked.
    """
    model.to_empty(device="cpu")
    tensors = [*model.named_parameters(), *model.named_buffers()]
    versions = [t._version for _, t in tensors]
    for module in model.modules():
        init(module, rng)
    missing = [name for (name, t), v in zip(tensors, versions, strict=True) if t._version == v]
    if missing:  # pragma: no cover - a bug in this package, not bad user input
        raise RuntimeError(f"{call}: left uninitialised: {missing}")


@torch.no_grad()
def kaiming_conv(module: nn.Module, rng: torch.Generator, mode: str = "fan_out") -> None:
    """torchvision's conv init: Kaiming normal for ReLU (`mode` fan_out or fan_in), zero bias."""
    nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu", generator=rng)  # type: ignore[arg-type]
    if module.bias is not None:
        nn.init.zeros_(module.bias)  # type: ignore[arg-type]


@torch.no_grad()
def default_linear(module: nn.Module, rng: torch.Generator) -> None:
    """PyTorch's own default for ``nn.Linear``/``nn.Conv2d``, drawn from `rng`."""
    weight = module.weight
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=rng)  # type: ignore[arg-type]
    if module.bias is not None:
        fan_in = weight[0].numel()  # type: ignore[index]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(module.bias, -bound, bound, generator=rng)  # type: ignore[arg-type]


@torch.no_grad()
def reset_batchnorm(module: nn.Module) -> None:
    """Weight 1, bias 0, running mean 0, running variance 1 (torchvision's BN init)."""
    module.weight.fill_(1.0)  # type: ignore[operator]
    module.bias.zero_()  # type: ignore[operator]
    module.running_mean.zero_()  # type: ignore[operator]
    module.running_var.fill_(1.0)  # type: ignore[operator]
    module.num_batches_tracked.zero_()  # type: ignore[operator]
