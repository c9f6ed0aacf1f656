"""Map functions: post-process one attribution map, ``[C, H, W]`` or ``[H, W]``, into another.

Each is pure (the input is never modified) and safe under ``torch.func.vmap``, so
`occlens.map_output` can apply it to every map of a batch. Options are keyword-only with
defaults: use a function bare (``M.normalize``) or with ``functools.partial``.

>>> import torch
>>> from functools import partial
>>> from occlens import maps as M
>>> grad = torch.tensor([[[3.0, -1.0]], [[-4.0, 0.0]]])  # [C=2, H=1, W=2]
>>> heat = M.l2_channels(grad)  # [H, W]
>>> heat
tensor([[5., 1.]])
>>> M.normalize(heat)
tensor([[1., 0.]])
>>> pipeline = [M.abs, M.max_channels, partial(M.clip, percentile=50), M.normalize]
>>> out = grad
>>> for fn in pipeline:
...     out = fn(out)
>>> out
tensor([[1., 0.]])
>>> torch.func.vmap(M.sum_channels)(torch.ones(4, 3, 2, 2)).shape  # a batch of 4 maps
torch.Size([4, 2, 2])
"""

from ._maps import abs as abs
from ._maps import blur as blur
from ._maps import clip as clip
from ._maps import l2_channels as l2_channels
from ._maps import max_channels as max_channels
from ._maps import mean_channels as mean_channels
from ._maps import normalize as normalize
from ._maps import recenter as recenter
from ._maps import sum_channels as sum_channels
from ._maps import threshold as threshold
from ._maps import upsample as upsample

__all__ = [
    "abs",
    "blur",
    "clip",
    "l2_channels",
    "max_channels",
    "mean_channels",
    "normalize",
    "recenter",
    "sum_channels",
    "threshold",
    "upsample",
]
