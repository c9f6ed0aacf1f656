"""`tiny_cnn`: a 5k-parameter CNN for examples, doctests and quick experiments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._types import Key
from ._init import build, check_classes

__all__ = ["tiny_cnn"]


class TinyCNN(nn.Module):
    """Three 3x3 convs and two linears; the ReLUs are spelled as modules and as functions.

    ``features``: conv 3->8, ``nn.ReLU(inplace=True)``, max pool 2, conv 8->16, ``nn.ReLU()``.
    Then ``F.relu(conv3(...))``, an adaptive 2x2 average pool, ``torch.relu(fc1(...))``, ``fc2``.
    """

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.conv3 = nn.Conv2d(16, 16, kernel_size=3, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.fc1 = nn.Linear(16 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = F.relu(self.conv3(x))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)


@torch.no_grad()
def _init(module: nn.Module, rng: torch.Generator) -> None:
    # Kaiming-normal (fan_in) weights keep the signal's scale; small random biases make f(0) != 0.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=rng)
        nn.init.uniform_(module.bias, -0.1, 0.1, generator=rng)


def tiny_cnn(num_classes: int = 3, *, key: Key = 0) -> nn.Module:
    """A small CNN (about 4,800 parameters) with random weights from `key`, in eval mode.

    Input ``[B, 3, H, W]`` for any ``H, W >= 8`` (an adaptive pool makes the head size-free),
    output ``[B, num_classes]``. ``"features"`` gives ``[B, 16, H // 2, W // 2]``. Its ReLUs are a
    mix of ``nn.ReLU(inplace=True)``, ``nn.ReLU()``, ``F.relu`` and ``torch.relu``. `key` is an
    ``int`` seed or a ``torch.Generator``; the global random state is left alone.

    >>> import torch
    >>> from occlens import testing
    >>> model = testing.tiny_cnn(num_classes=4, key=1)
    >>> model(torch.rand(2, 3, 16, 20)).shape
    torch.Size([2, 4])
    >>> sum(p.numel() for p in model.parameters())
    4820
    """
    classes = check_classes(num_classes, "tiny_cnn")
    return build(lambda: TinyCNN(classes), _init, key, "tiny_cnn")
