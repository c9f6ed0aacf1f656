"""Images around the core: load, resize, normalize, colour maps, overlays and panels.

Tensors are float ``[C, H, W]`` with pixels in [0, 1] (batches ``[B, C, H, W]`` where noted); maps
are ``[H, W]``. Every function is pure: inputs are never modified. Colormaps need no matplotlib
(built-in ``inferno``, ``viridis``, ``RdBu_r``, ``RdBu``, ``gray``); with it installed
(``pip install 'occlens[viz]'``) any matplotlib colormap name works too.

>>> import torch
>>> from occlens import image as oi
>>> x = torch.rand(3, 32, 32)
>>> heat = torch.rand(8, 8)
>>> oi.overlay(x, heat, alpha=0.5).shape
torch.Size([3, 32, 32])
>>> grid = oi.panel([x, oi.colorize(heat), oi.overlay(x, heat)], ["image", "map", "both"], cell=64)
>>> grid.size[0]  # 3 * 64 + 4 * 4
208
"""

from ._colormaps import BUILTIN_COLORMAPS as BUILTIN_COLORMAPS
from ._colormaps import colorize as colorize
from ._colormaps import colormap as colormap
from ._compose import draw_box as draw_box
from ._compose import overlay as overlay
from ._compose import panel as panel
from ._image_io import IMAGENET_MEAN as IMAGENET_MEAN
from ._image_io import IMAGENET_STD as IMAGENET_STD
from ._image_io import denormalize as denormalize
from ._image_io import load as load
from ._image_io import normalize as normalize
from ._image_io import resize as resize
from ._image_io import save as save
from ._image_io import to_pil as to_pil

__all__ = [
    "BUILTIN_COLORMAPS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "colorize",
    "colormap",
    "denormalize",
    "draw_box",
    "load",
    "normalize",
    "overlay",
    "panel",
    "resize",
    "save",
    "to_pil",
]
