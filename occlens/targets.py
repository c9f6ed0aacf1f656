"""Targets pick one score per sample out of a model output: ``Tensor[B, ...] -> Tensor[B]``.

>>> import torch
>>> from occlens import targets as T
>>> T.logit(2)(torch.tensor([[0.0, 1.0, 5.0]]))
tensor([5.])

Targets at an intermediate layer are ordinary targets applied to ``occlens.layer(model, name)``.
"""

from ._targets import channel as channel
from ._targets import logit as logit
from ._targets import peak as peak
from ._targets import prob as prob
from ._targets import unit as unit
from ._types import Target as Target

__all__ = ["Target", "channel", "logit", "peak", "prob", "unit"]
