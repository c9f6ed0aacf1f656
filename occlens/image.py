"""Images around the core: load, resize, normalize, colour maps, overlays, panels and figures.

Tensors are float ``[C, H, W]`` with pixels in [0, 1] (batches ``[B, C, H, W]`` where noted); maps
are ``[H, W]``. Every function is pure: inputs are never modified. Colormaps need no matplotlib
(built-in ``inferno``, ``viridis``, ``RdBu_r``, ``RdBu``, ``gray``); with it installed
(``pip install 'occlens[viz]'``) any matplotlib colormap name works too.

Signed maps get a diverging colormap centred on 0, non-negative maps a sequential one. By default
each map is coloured over its own range; `limits` gives one range for several maps (pass it as
``vmin``/``vmax``), and `compare` does this per column with ``scale="shared"``, so raw scales can
be compared across images.

>>> import torch
>>> from occlens import image as oi
>>> x = torch.rand(3, 32, 32)
>>> heat = torch.rand(8, 8)
>>> oi.overlay(x, heat, alpha=0.5).shape
torch.Size([3, 32, 32])
>>> grid = oi.panel([x, oi.colorize(heat), oi.overlay(x, heat)], ["image", "map", "both"], cell=64)
>>> grid.size[0]  # 3 * 64 + 4 * 4
208
>>> figure = oi.compare(x, {"heat": heat, "signed": heat - 0.5}, cell=64)  # with colorbars
>>> figure.size[0]
208
"""

from ._colormaps import BUILTIN_COLORMAPS as BUILTIN_COLORMAPS
from ._colormaps import colorize as colorize
from ._colormaps import colormap as colormap
from ._compose import draw_box as draw_box
from ._compose import overlay as overlay
from ._compose import panel as panel
from ._figures import colorbar as colorbar
from ._figures import compare as compare
from ._figures import draw_grid as draw_grid
from ._figures import draw_rf as draw_rf
from ._figures import limits as limits
from ._image_io import IMAGENET_MEAN as IMAGENET_MEAN
from ._image_io import IMAGENET_STD as IMAGENET_STD
from ._image_io import denormalize as denormalize
from ._image_io import from_pil as from_pil
from ._image_io import load as load
from ._image_io import normalize as normalize
from ._image_io import resize as resize
from ._image_io import save as save
from ._image_io import to_pil as to_pil

__all__ = [
    "BUILTIN_COLORMAPS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "colorbar",
    "colorize",
    "colormap",
    "compare",
    "denormalize",
    "draw_box",
    "draw_grid",
    "draw_rf",
    "from_pil",
    "limits",
    "load",
    "normalize",
    "overlay",
    "panel",
    "resize",
    "save",
    "to_pil",
]
