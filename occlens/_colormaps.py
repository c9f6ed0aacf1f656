"""Colormaps without matplotlib: compact built-in tables, and `colorize` for attribution maps.

Each built-in colormap is a short list of published control points, evenly spaced and interpolated
linearly: every fifth entry of the 256-entry viridis and inferno tables (van der Walt & Smith, CC0;
the data matplotlib ships) and the eleven ColorBrewer RdBu colours (Brewer, Apache-2.0). Other names
are looked up in matplotlib when it is installed (the ``viz`` extra).

>>> colormap("viridis").shape
torch.Size([256, 3])
"""

from __future__ import annotations

import functools
import numbers

import numpy as np
import torch
from torch import Tensor

from ._errors import close_matches, describe, fail
from ._image_io import check_tensor

__all__ = ["BUILTIN_COLORMAPS", "apply", "colorize", "colormap", "resolve"]

# Every fifth entry (0, 5, ..., 255) of the published 256-entry tables, as RRGGBB.
_POINTS = {
    "viridis": """
        440154 46085c 471063 481769 481d6f 482475 472a7a 46307e 453781 433d84 414287 3f4889 3d4e8a
        3a538b 38598c 355e8d 33638d 31688e 2e6d8e 2c718e 2a768e 297b8e 27808e 25848e 23898e 218e8d
        20928c 1f978b 1e9c89 1fa188 21a585 24aa83 28ae80 2eb37c 35b779 3dbc74 46c06f 50c46a 5ac864
        65cb5e 70cf57 7cd250 89d548 95d840 a2da37 b0dd2f bddf26 cae11f d8e219 e5e419 f1e51d fde725
    """,
    "inferno": """
        000004 02020c 050417 0a0722 10092d 160b39 1e0c45 260c51 2f0a5b 380962 400a67 490b6a 510e6c
        59106e 61136e 69166e 71196e 781c6d 801f6c 88226a 902568 982766 a02a63 a82e5f b0315b b73557
        bf3952 c63d4d cc4248 d34743 d94d3d df5337 e45a31 e9612b ed6925 f1711f f47918 f78212 f98b0b
        fa9407 fb9d07 fca60c fcb014 fbba1f fac42a f8cd37 f6d746 f4e156 f2ea69 f2f27d f5f992 fcffa4
    """,
    # ColorBrewer RdBu, 11 classes: red (low) through near-white (centre) to blue (high).
    "RdBu": "67001f b2182b d6604d f4a582 fddbc7 f7f7f7 d1e5f0 92c5de 4393c3 2166ac 053061",
    "gray": "000000 ffffff",
}
_ALIASES = {"grey": "gray"}
# Diverging colormaps (built-in or matplotlib's) get a range symmetric about 0 by default.
_DIVERGING = frozenset(
    {
        "RdBu",
        "coolwarm",
        "bwr",
        "seismic",
        "RdYlBu",
        "RdYlGn",
        "RdGy",
        "PiYG",
        "PRGn",
        "BrBG",
        "PuOr",
        "Spectral",
    }
)
BUILTIN_COLORMAPS: tuple[str, ...] = ("inferno", "viridis", "RdBu_r", "RdBu", "gray")
"""Names that work without matplotlib; each also works reversed with an ``_r`` suffix."""

DEFAULT_SEQUENTIAL = "inferno"
DEFAULT_DIVERGING = "RdBu_r"


@functools.cache
def _points(base: str) -> Tensor:
    hexes = _POINTS[base].split()
    return torch.tensor([[int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] for h in hexes])


def _interpolate(lut: Tensor, t: Tensor) -> Tensor:
    """Piecewise-linear lookup of ``t`` in [0, 1] (any shape) in evenly spaced ``lut[N, 3]``."""
    n = lut.shape[0]
    if n == 1:
        return lut[0].expand(*t.shape, 3).clone()
    pos = t.clamp(0, 1) * (n - 1)
    lo = pos.floor().long().clamp(max=n - 2)
    frac = (pos - lo).unsqueeze(-1)
    return lut[lo] * (1 - frac) + lut[lo + 1] * frac


def _table(name: object, call: str) -> Tensor:
    """The colormap's own table: a built-in's control points or matplotlib's ``N`` entries."""
    if not isinstance(name, str):
        raise fail(call, "cmap", f"expected a colormap name, got {describe(name)}", "pass a str")
    base = name.removesuffix("_r")
    base = _ALIASES.get(base, base)
    if base in _POINTS:
        return _points(base).flip(0) if name.endswith("_r") else _points(base)
    try:
        import matplotlib
    except ImportError:
        raise fail(
            call,
            "cmap",
            f"{name!r} is not a built-in colormap and matplotlib is not installed",
            f"use one of {', '.join(map(repr, BUILTIN_COLORMAPS))} (or their '_r' reversals), "
            "or install matplotlib (pip install 'occlens[viz]')",
        ) from None
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        closest = close_matches(name, list(matplotlib.colormaps))
        raise fail(
            call,
            "cmap",
            f"unknown colormap {name!r} (closest: {closest})",
            "pass a matplotlib colormap name or one of the built-ins",
        ) from None
    return torch.as_tensor(cmap(np.arange(cmap.N))[:, :3], dtype=torch.float32)


def colormap(name: str, *, n: int = 256) -> Tensor:
    """A colormap as a lookup table ``Tensor[n, 3]``: float32 RGB in [0, 1], low to high.

    Built-in names (`BUILTIN_COLORMAPS`, plus ``_r`` reversals) need no matplotlib and give the same
    colours everywhere; any other name is looked up in matplotlib when it is installed. `colorize`
    interpolates the same piecewise-linear colours, so ``colorize(t)`` equals
    ``colormap(name, n)`` at ``t = i / (n - 1)``.

    >>> lut = colormap("RdBu_r")
    >>> lut.shape, torch.equal(lut[0], colormap("RdBu")[-1])
    (torch.Size([256, 3]), True)
    >>> [round(v * 255) for v in colormap("RdBu_r", n=3)[1].tolist()]  # the centre, #f7f7f7
    [247, 247, 247]
    """
    call = "occlens.image.colormap"
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise fail(call, "n", f"expected an int >= 2, got {describe(n)}", "e.g. 256")
    table = _table(name, call)
    return _interpolate(table.double(), torch.linspace(0, 1, n, dtype=torch.float64)).float()


def _limit(value: object, call: str, argument: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise fail(
            call, argument, f"expected a finite number, got {describe(value)}", "pass a float"
        )
    if abs(value) == float("inf"):
        raise fail(call, argument, f"expected a finite number, got {value}", "pass a finite float")
    return float(value)


def resolve(
    values: Tensor, cmap: str | Tensor | None, vmin: object, vmax: object, call: str
) -> tuple[Tensor, float, float, float]:
    """Pick the table and the value range for `values`: ``(lut, lo, hi, t_when_flat)``.

    Signed maps get a diverging table and a range symmetric about 0; non-negative maps a sequential
    table and ``[0, max]``. Given limits win; with a diverging table a single limit is mirrored.
    """
    lo_given, hi_given = _limit(vmin, call, "vmin"), _limit(vmax, call, "vmax")
    signed = bool((values < 0).any())
    if cmap is None:
        cmap = DEFAULT_DIVERGING if signed else DEFAULT_SEQUENTIAL
    diverging = signed or (isinstance(cmap, str) and cmap.removesuffix("_r") in _DIVERGING)
    if isinstance(cmap, Tensor):
        if (
            cmap.ndim != 2
            or cmap.shape[1] != 3
            or cmap.shape[0] < 1
            or not cmap.is_floating_point()
        ):
            raise fail(
                call,
                "cmap",
                f"expected a lookup table [N, 3] of floats, got {describe(cmap)}",
                "pass a colormap name or a Tensor[N, 3] in [0, 1]",
            )
        lut = cmap.detach().float().clamp(0, 1)
    else:
        lut = _table(cmap, call)
    bound = float(values.abs().max())
    lo, hi = (-bound, bound) if diverging else (0.0, bound)  # not diverging: no negative values
    if lo_given is not None and hi_given is not None:
        lo, hi = lo_given, hi_given
        if lo > hi:
            raise fail(call, "vmin", f"vmin={lo} is above vmax={hi}", "pass vmin <= vmax")
    elif hi_given is not None:  # one limit given: mirror it (diverging) or keep the other default
        hi = hi_given
        lo = min(-hi, hi) if diverging else min(lo, hi)
    elif lo_given is not None:
        lo = lo_given
        hi = max(-lo, lo) if diverging else max(hi, lo)
    return lut, lo, hi, (0.5 if diverging else 0.0)


def apply(values: Tensor, lut: Tensor, lo: float, hi: float, flat: float) -> Tensor:
    """Colour ``values[H, W]`` with `lut` over ``[lo, hi]``: ``Tensor[3, H, W]`` in [0, 1]."""
    dtype = values.dtype if values.dtype in (torch.float32, torch.float64) else torch.float32
    values = values.detach().to(dtype)
    # A flat range divides nothing: values above it get the top colour, the rest `flat`.
    flat_t = torch.where(values > hi, 1.0, flat).to(dtype)
    t = (values - lo) / (hi - lo) if hi > lo else flat_t
    colours = _interpolate(lut.to(device=values.device, dtype=dtype), t)
    return colours.permute(2, 0, 1).contiguous()


def colorize(
    map: Tensor,
    cmap: str | Tensor | None = None,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Tensor:
    """Colour a map ``[H, W]`` into an RGB image ``Tensor[3, H, W]`` in [0, 1].

    * `cmap`: a colormap name (see `colormap`) or a lookup table ``Tensor[N, 3]``. Default:
      ``"inferno"`` for non-negative maps, ``"RdBu_r"`` (blue below 0, red above) for signed maps.
    * `vmin`, `vmax`: the values mapped to the first and last colour; values outside are clipped.
      Default: ``[0, max]`` for non-negative maps; ``[-m, m]`` with ``m = max |map|`` for signed
      maps or a diverging `cmap` (RdBu, coolwarm, bwr, seismic, ...), so 0 sits at the centre
      colour; there a single given limit is mirrored (``vmax=2`` means ``[-2, 2]``). Pass the same
      limits for several maps to compare their raw scales.

    Constant maps are safe: when ``vmin == vmax`` values above it take the last colour and the rest
    the first (the centre colour for diverging maps). Nothing is divided by zero.

    >>> import torch
    >>> rgb = colorize(torch.tensor([[-1.0, 0.0, 1.0]]))  # signed: RdBu_r over [-1, 1]
    >>> rgb.shape
    torch.Size([3, 1, 3])
    >>> [round(v * 255) for v in rgb[:, 0, 1].tolist()]  # 0 maps to the centre colour, #f7f7f7
    [247, 247, 247]
    """
    call = "occlens.image.colorize"
    values = check_tensor(
        map, call, "map", (2,), "a map [H, W]", "reduce it first, e.g. map.sum(0)"
    )
    lut, lo, hi, flat = resolve(values, cmap, vmin, vmax, call)
    return apply(values, lut, lo, hi, flat)
