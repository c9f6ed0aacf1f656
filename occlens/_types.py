"""The vocabulary every occlens function speaks.

Shapes use ``B`` for the batch, ``C`` for channels, ``H, W`` for the spatial size.

* `ModelFn`: ``Tensor[B, ...] -> Tensor[B, ...]``. Any callable; an ``nn.Module`` is one. occlens
  never mutates it: no parameter, buffer, ``requires_grad`` flag, hook or train/eval mode differs
  after a call, even one that raised.
* `Target`: ``Tensor[B, ...] -> Tensor[B]``, one score per sample (see `occlens.targets`). Plain
  ``int``s, sequences of ints and ``LongTensor[B]`` are shorthand for `occlens.targets.logit`.
* `Key`: an ``int`` seed or a ``torch.Generator``; every random choice comes from one.
* `AttributionFn`: ``(model_fn, x, target, *, key=None, **options) -> map``.
* `Transform`: ``AttributionFn -> AttributionFn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AttributionFn",
    "Key",
    "ModelFn",
    "Target",
    "TargetLike",
    "Transform",
]

ModelFn: TypeAlias = Callable[[Tensor], Tensor]
Key: TypeAlias = int | torch.Generator


@runtime_checkable
class Target(Protocol):
    """Selects one score per sample: ``Tensor[B, ...] -> Tensor[B]``.

    The built-in targets of `occlens.targets` follow it, and so does any function of that shape.

    >>> import torch
    >>> from occlens import targets
    >>> logits = torch.tensor([[1.0, 3.0], [4.0, 2.0]])
    >>> isinstance(targets.logit(1), targets.Target), targets.logit(1)(logits).tolist()
    (True, [3.0, 2.0])
    >>> second_minus_first = lambda out: out[:, 1] - out[:, 0]  # a target is any such function
    >>> isinstance(second_minus_first, targets.Target)
    True
    """

    def __call__(self, output: Tensor, /) -> Tensor: ...


# numpy integer scalars and integer arrays are accepted as indices too.
TargetLike: TypeAlias = Target | int | Sequence[int] | Tensor | np.integer | np.ndarray
AttributionFn: TypeAlias = Callable[..., Tensor]
Transform: TypeAlias = Callable[[AttributionFn], AttributionFn]
