"""Figures for comparing maps: shared limits, colorbars, occluder grids, RF boxes, panels.

Built on `colorize`, `overlay`, `draw_box` and `panel`; all return new tensors or PIL images.

>>> import torch
>>> image, heat = torch.rand(3, 32, 32), torch.randn(32, 32)
>>> compare(image, {"signed": heat, "unsigned": heat.abs()}, cell=64).size[0]  # 3 cells wide
208
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ._checks import positive_pair
from ._colormaps import DEFAULT_DIVERGING, DEFAULT_SEQUENTIAL, apply, resolve
from ._compose import _rgb_image, draw_box, overlay, panel
from ._errors import describe, fail
from ._grid import EDGES, axis
from ._image_io import check_tensor, to_pil

__all__ = ["colorbar", "compare", "draw_grid", "draw_rf", "limits"]

SCALES = ("per-map", "shared", "all")


def _maps_list(maps: object, call: str, argument: str) -> list[Tensor]:
    if isinstance(maps, Tensor):
        maps = [maps]
    if not isinstance(maps, Sequence) or isinstance(maps, str) or not maps:
        raise fail(call, argument, f"expected maps, got {describe(maps)}", "pass a list of maps")
    fix = "reduce channel maps first, e.g. occlens.maps.max_channels(m.abs())"
    return [
        check_tensor(m, call, f"{argument}[{i}]", (2, 3), "a map [H, W] or a batch [B, H, W]", fix)
        for i, m in enumerate(maps)
    ]


def _percentile(value: object, call: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 < float(value) <= 100
    ):
        raise fail(call, "percentile", f"got {describe(value)}", "pass a number in (0, 100]")
    return float(value)


def limits(maps: Tensor | Sequence[Tensor], *, percentile: float = 100.0) -> tuple[float, float]:
    """One value range ``(vmin, vmax)`` for several maps, to colour them on a shared raw scale.

    `maps` is a map ``[H, W]``, a batch ``[B, H, W]`` or a list of them (sizes may differ). If any
    value is negative the range is symmetric, ``(-m, m)`` with ``m`` the `percentile` of ``|map|``
    over all the maps; otherwise it is ``(0, m)`` with ``m`` the percentile of the values. The
    default ``percentile=100`` is the maximum; 99 keeps a few outliers from washing out the rest.
    Exact zeros are left out of the percentile, so a map that is zero outside a unit's receptive
    field still gets the range of its nonzero part.
    Pass the result to `colorize`, `overlay` or `colorbar` as ``vmin=..., vmax=...``.

    >>> import torch
    >>> a, b = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 4.0]])
    >>> limits([a, b])
    (0.0, 4.0)
    >>> limits(torch.tensor([[-3.0, 1.0]]))
    (-3.0, 3.0)
    >>> from occlens.image import colorize
    >>> lo, hi = limits([a, b])
    >>> torch.equal(colorize(a, vmin=lo, vmax=hi), colorize(a))  # a reaches only 1/4 of the scale
    False
    """
    call = "occlens.image.limits"
    values = torch.cat(
        [m.detach().flatten().double().cpu() for m in _maps_list(maps, call, "maps")]
    )
    q = _percentile(percentile, call)
    signed = bool((values < 0).any())
    magnitude = values.abs() if signed else values
    nonzero = magnitude[magnitude != 0]
    if q == 100 or nonzero.numel() == 0:
        top = float(magnitude.max())
    else:  # zeros left out: a sparse map (a unit's receptive field) keeps its range
        top = float(torch.quantile(nonzero, q / 100))
    return (-top, top) if signed else (0.0, top)


def _font(size: int | None = None):
    try:
        return ImageFont.load_default(size) if size else ImageFont.load_default()
    except TypeError:  # Pillow < 10.1 has no sizes
        return ImageFont.load_default()


def _number(value: float) -> str:
    text = f"{value:.3g}"
    return "0" if text in ("0", "-0") else text


def colorbar(
    vmin: float,
    vmax: float,
    cmap: str | Tensor | None = None,
    *,
    length: int = 160,
    thickness: int = 8,
    label: str | None = None,
) -> Image.Image:
    """A horizontal colorbar from `vmin` to `vmax`, with tick labels under it, as a PIL image.

    `cmap` as in `colorize`; by default diverging (``"RdBu_r"``) when ``vmin < 0`` and sequential
    (``"inferno"``) otherwise, the same choice `colorize` makes for a map spanning the range. The
    ticks are the two ends, and 0 when the range spans it (else the middle). `label` is written
    after the ticks, e.g. the unit of the values. The image is `length` pixels wide.

    >>> bar = colorbar(-2.0, 2.0, length=161)
    >>> bar.width, bar.height > 8
    (161, True)
    >>> tuple(bar.getpixel((80, 2)))  # 0 sits at the centre colour of RdBu_r, #f7f7f7
    (247, 247, 247)
    """
    call = "occlens.image.colorbar"
    length_, thick = positive_pair((length, thickness), call, "length/thickness")
    ends = []
    for name, value in (("vmin", vmin), ("vmax", vmax)):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not torch.isfinite(torch.tensor(float(value)))
        ):
            raise fail(call, name, f"expected a finite number, got {describe(value)}", "pass one")
        ends.append(float(value))
    lo, hi = ends
    if lo > hi:
        raise fail(call, "vmin", f"vmin={lo} is above vmax={hi}", "pass vmin <= vmax")
    if label is not None and not isinstance(label, str):
        raise fail(call, "label", f"got {describe(label)}", "pass a str or None")
    ramp = torch.linspace(lo, hi, length_, dtype=torch.float64)
    lut, lo_, hi_, flat = resolve(ramp[None], cmap, lo, hi, call)
    strip = apply(ramp[None].expand(thick, -1), lut, lo_, hi_, flat)
    bar = to_pil(strip)
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = probe.textbbox((0, 0), "-0.9Ag", font=font)[3] + 2
    canvas = Image.new("RGB", (length_, thick + text_h), "white")
    canvas.paste(bar, (0, 0))
    draw = ImageDraw.Draw(canvas)
    middle = 0.0 if lo < 0 < hi else (lo + hi) / 2
    ticks = [(0.0, _number(lo), "l"), (1.0, _number(hi), "r")]
    if hi > lo:
        ticks.append(((middle - lo) / (hi - lo), _number(middle), "m"))
    used: list[tuple[float, float]] = []
    for where, text, anchor in ticks:
        width = draw.textlength(text, font=font)
        left = {"l": 0.0, "r": length_ - width, "m": where * (length_ - 1) - width / 2}[anchor]
        left = min(max(left, 0.0), max(length_ - width, 0.0))
        if any(left < b + 4 and a < left + width + 4 for a, b in used):
            continue  # no room between the end labels
        used.append((left, left + width))
        draw.text((left, thick + 1), text, fill="black", font=font)
        tick_x = round(where * (length_ - 1))
        draw.line([(tick_x, thick - 3), (tick_x, thick - 1)], fill="black")
    if label:
        left = max((b for _, b in used), default=0.0) + 6
        if left < length_:
            draw.text((left, thick + 1), label, fill="black", font=font)
    return canvas


def _colour(color: object, x: Tensor, call: str) -> Tensor:
    try:
        colour = torch.as_tensor(color, dtype=x.dtype, device=x.device).flatten()
    except (TypeError, ValueError, RuntimeError):
        colour = torch.empty(0)
    if colour.numel() == 1:
        colour = colour.expand(x.shape[0])
    if colour.numel() != x.shape[0]:
        raise fail(
            call,
            "color",
            f"{describe(color)} for {describe(x)}",
            "give one value per channel, or one for all",
        )
    return colour


def _int_box(box: object, call: str, height: int, width: int) -> tuple[int, int, int, int]:
    if box is None:
        return 0, 0, height, width
    if (
        not isinstance(box, (tuple, list))
        or len(box) != 4
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in box)
        or not (0 <= box[0] < box[2] <= height and 0 <= box[1] < box[3] <= width)
    ):
        raise fail(
            call,
            "box",
            f"got {describe(box)} for an image of H={height}, W={width}",
            f"pass (y0, x0, y1, x1), ints, 0 <= y0 < y1 <= {height}, 0 <= x0 < x1 <= {width}",
        )
    return tuple(int(v) for v in box)  # type: ignore[return-value]


def draw_grid(
    image: Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    *,
    edge: str = "fit",
    box: tuple[int, int, int, int] | None = None,
    color: float | Sequence[float] = 1.0,
    width: int = 1,
) -> Tensor:
    """Draw the occluder grid `occlusion` uses with these settings on an image ``[C, H, W]``.

    Every occluder position gets a dot (`width` pixels square) at its window's centre pixel (the
    pixel ``aggregate="center"`` writes to), and the first window (top left) is outlined, so the
    picture shows the window's size and the stride's lattice. `window`, `stride`, `edge` and
    `box` mean what they mean in `occlusion` (``edge="cover"`` adds the clipped last windows);
    a `box` is outlined too. `color` is one value per channel, or one for all (default white).
    Returns a new ``Tensor[C, H, W]``.

    >>> import torch
    >>> marked = draw_grid(torch.zeros(1, 8, 8), window=4, stride=4)
    >>> marked[0].int().tolist()[:5]  # four centres, at 1 and 5; the first window outlined
    [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 1, 0, 1, 0, 0], [1, 0, 0, 1, 0, 0, 0, 0], \
[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]
    """
    call = "occlens.image.draw_grid"
    x = check_tensor(image, call, "image", (3,), "an image [C, H, W]", "take x[0] of a batch")
    height, width_px = x.shape[1:]
    win = positive_pair(window, call, "window")
    step = win if stride is None else positive_pair(stride, call, "stride")
    if edge not in EDGES:
        raise fail(call, "edge", f"got {edge!r}", f"use one of {', '.join(map(repr, EDGES))}")
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise fail(call, "width", f"expected a positive int, got {describe(width)}", "e.g. 1")
    colour = _colour(color, x, call)
    y0, x0, y1, x1 = _int_box(box, call, height, width_px)
    rows = axis(height, win[0], step[0], edge, y0, y1, box is not None)
    cols = axis(width_px, win[1], step[1], edge, x0, x1, box is not None)
    if rows is None or cols is None:
        raise fail(
            call,
            "window",
            f"no window of size {win} fits in {describe(x)} (box {box})",
            "use a smaller window or edge='cover'",
        )
    mask = torch.zeros(height, width_px, dtype=torch.bool, device=x.device)
    half = (width - 1) // 2
    for cy in rows.centres().tolist():
        for cx in cols.centres().tolist():
            top, left = max(cy - half, 0), max(cx - half, 0)
            mask[top : cy - half + width, left : cx - half + width] = True
    out = torch.where(mask, colour[:, None, None], x)
    first = (rows.starts[0], cols.starts[0], rows.ends[0], cols.ends[0])
    out = draw_box(out, first, color=colour.tolist(), width=1)
    if box is not None:
        out = draw_box(out, (y0, x0, y1, x1), color=colour.tolist(), width=1)
    return out


def draw_rf(
    image: Tensor,
    rf: object,
    y: int,
    x: int,
    *,
    color: Sequence[float] = (0.1, 0.9, 0.2),
    width: int = 1,
) -> Tensor:
    """Draw the receptive field box of unit ``(y, x)`` on an image ``[C, H, W]``.

    `rf` comes from `occlens.receptive_field` for the image's size. The box is the unclipped
    ``rf.region(y, x, clip=False)``: the sides that fall outside the image (fields near the border
    often reach into the padding) are not drawn, so a missing side means the field goes on past
    the edge. Returns a new ``Tensor[C, H, W]``.

    >>> import torch, torch.nn as nn, occlens as ol
    >>> net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3))
    >>> rf = ol.receptive_field(net, "1", 8)
    >>> (draw_rf(torch.zeros(3, 8, 8), rf, 1, 1)[1] > 0).int().tolist()[:6]  # the 5x5 box at (1, 1)
    [[0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 1, 0, 0], \
[0, 1, 0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1, 0, 0], [0, 1, 1, 1, 1, 1, 0, 0]]
    """
    call = "occlens.image.draw_rf"
    region = getattr(rf, "region", None)
    if not callable(region):
        raise fail(call, "rf", f"got {describe(rf)}", "pass the result of occlens.receptive_field")
    box = region(y, x, clip=False)
    return draw_box(image, box, color, width=width)


def _rows(value: object, n: int | None, call: str, argument: str) -> list[Tensor]:
    if isinstance(value, Tensor) and value.ndim == 4:
        items = list(value)
    elif isinstance(value, Tensor):
        items = [value]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = list(value)
    else:
        raise fail(call, argument, f"got {describe(value)}", "pass a tensor or a list of them")
    if n is not None and len(items) != n:
        raise fail(call, argument, f"has {len(items)} entries for {n} images", "give one per image")
    return items


def _map_rows(value: object, n: int, call: str, argument: str) -> list[Tensor]:
    items: list
    if isinstance(value, Tensor) and value.ndim == 2:
        items = [value]
    elif (isinstance(value, Tensor) and value.ndim == 3) or (
        isinstance(value, Sequence) and not isinstance(value, str)
    ):
        items = list(value)
    else:
        fix = (
            "pass [H, W] for one image, [B, H, W] or a list of [H, W] maps; reduce channel "
            "maps first, e.g. occlens.maps.max_channels(m.abs())"
        )
        raise fail(call, argument, f"got {describe(value)}", fix)
    fix = "reduce channel maps first, e.g. occlens.maps.max_channels(m.abs())"
    if len(items) != n:
        hint = f" (channel maps [C, H, W]? {fix})" if isinstance(value, Tensor) else ""
        raise fail(
            call, argument, f"has {len(items)} maps for {n} images{hint}", "give one per image"
        )
    return [
        check_tensor(m, call, f"{argument}[{i}]", (2,), "a map [H, W]", fix)
        for i, m in enumerate(items)
    ]


def _fit(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    h, w = size
    scale = min(h / picture.height, w / picture.width)
    new = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    if new == picture.size:
        return picture
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return picture.resize(new, resample)


def _cell(picture: Image.Image, size: tuple[int, int], bar: Image.Image | None, bar_h: int):
    h, w = size
    canvas = Image.new("RGB", (w, h + bar_h), "white")
    fitted = _fit(picture, size)
    canvas.paste(fitted, ((w - fitted.width) // 2, (h - fitted.height) // 2))
    if bar is not None:
        canvas.paste(bar, ((w - bar.width) // 2, h + 3))
    return canvas


def compare(
    image: Tensor | Sequence[Tensor],
    maps: Mapping[str, Tensor | Sequence[Tensor]],
    *,
    row_titles: Sequence[str] | None = None,
    scale: str | float | Mapping[str, float] = "per-map",
    percentile: float = 100.0,
    cmap: str | Tensor | None = None,
    alpha: float = 0.8,
    weight: str = "magnitude",
    background: str = "gray",
    colorbars: bool = True,
    show_image: bool | Tensor | Sequence[Tensor] = True,
    cell: int | tuple[int, int] = 160,
    pad: int = 4,
) -> Image.Image:
    """A comparison panel: one row per image, one titled column per map, each with its colorbar.

    * `image`: one image ``[3, H, W]`` (or ``[1, H, W]``) in [0, 1], a batch ``[B, 3, H, W]`` or a
      list of images (sizes may differ; each cell is scaled to `cell`).
    * `maps`: ``{title: maps}``, in column order; per title a map ``[h, w]`` for one image, or
      ``[B, h, w]`` / a list with one map per image. Maps are resized to their image as in
      `overlay`. Reduce channel maps to ``[h, w]`` first (``occlens.maps``).
    * `scale`: how values map to colours. ``"per-map"``: each map spans its own range (shapes
      compare, magnitudes do not). ``"shared"``: one range per column, over all images, so a
      method's raw scale compares across images. ``"all"``: one range for every map (only
      meaningful when the maps share a unit). A number: ``vmax`` for every map (``vmin`` is
      ``-vmax`` for signed columns, 0 otherwise); a mapping ``{title: vmax}`` does this per
      column. Ranges come from `limits`, with its `percentile`.
    * `cmap`: as in `colorize`; by default each column is diverging (``RdBu_r``) if any of its maps
      has a negative value, else sequential (``inferno``).
    * `alpha`, `weight`: as in `overlay`; by default strong values are nearly opaque and weak ones
      show the image (``weight="magnitude"``).
    * `background`: what the maps are laid over: ``"gray"`` (default), a lightened grayscale copy
      of the image, so that the colormap's colours stand out; ``"image"``, the image itself.
    * `colorbars`: draw a `colorbar` under every map.
    * `show_image`: add a first column with the image; a tensor (or one per image) shows that
      instead, e.g. the image with `draw_rf` or `draw_grid` marks.
    * `row_titles`: the first column's titles (one per image); default ``"image"``.

    Returns a PIL image; save it with `save`.

    >>> import torch
    >>> images = torch.rand(2, 3, 16, 16)
    >>> heat = torch.rand(2, 16, 16)
    >>> grid = compare(images, {"a": heat, "b": -heat}, scale="shared", cell=48, pad=2)
    >>> grid.width  # 3 columns of 48 pixels and 4 paddings
    152
    """
    call = "occlens.image.compare"
    images = [_rgb_image(x, call) for x in _rows(image, None, call, "image")]
    n = len(images)
    if isinstance(maps, Tensor) or not isinstance(maps, Mapping) or not maps:
        fix = "pass {title: map}, e.g. {'occlusion': heat}"
        raise fail(call, "maps", f"expected a non-empty mapping, got {describe(maps)}", fix)
    if not all(isinstance(k, str) for k in maps):
        raise fail(call, "maps", f"keys {list(maps)} are not all str", "use titles as keys")
    columns = {
        title: _map_rows(value, n, call, f"maps[{title!r}]") for title, value in maps.items()
    }
    q = _percentile(percentile, call)
    given: dict[str, float] = {}
    if isinstance(scale, str):
        if scale not in SCALES:
            raise fail(
                call, "scale", f"got {scale!r}", f"use {', '.join(map(repr, SCALES))} or a number"
            )
    elif isinstance(scale, Mapping):
        for title in scale:
            if title not in columns:
                raise fail(
                    call, "scale", f"no map titled {title!r}", f"use titles from {list(columns)}"
                )
        given = {title: _vmax(v, call) for title, v in scale.items()}
    else:
        given = dict.fromkeys(columns, _vmax(scale, call))
    if row_titles is not None and (
        isinstance(row_titles, str)
        or len(row_titles) != n
        or not all(isinstance(t, str) for t in row_titles)
    ):
        raise fail(call, "row_titles", f"got {describe(row_titles)} for {n} images", "one str each")
    if isinstance(show_image, bool):
        shown = images if show_image else None
    else:
        shown = [_rgb_image(x, call) for x in _rows(show_image, n, call, "show_image")]
    size = positive_pair(cell, call, "cell")
    if background not in ("gray", "image"):
        raise fail(call, "background", f"got {background!r}", "use 'gray' or 'image'")
    if background == "gray":
        under = [0.3 + 0.55 * x.mean(dim=0, keepdim=True).expand(3, -1, -1) for x in images]
    else:
        under = images
    everything = limits([m for col in columns.values() for m in col], percentile=q)
    plan: dict[str, tuple[str | Tensor, list[tuple[float, float]]]] = {}
    for title, column in columns.items():
        signed = any(bool((m < 0).any()) for m in column)
        name = cmap if cmap is not None else (DEFAULT_DIVERGING if signed else DEFAULT_SEQUENTIAL)
        if title in given:
            top = given[title]
            ranges = [(-top, top) if signed else (0.0, top)] * n
        elif scale == "shared":
            ranges = [limits(column, percentile=q)] * n
        elif scale == "all":
            lo, hi = everything
            ranges = [(lo, hi) if signed or lo < 0 else (0.0, hi)] * n
        else:
            ranges = [limits(m, percentile=q) for m in column]
        if signed:  # a column mixing signs keeps 0 at the centre colour in every cell
            ranges = [(-max(-lo, hi), max(-lo, hi)) for lo, hi in ranges]
        plan[title] = (name, ranges)
    probe = colorbar(0.0, 1.0, length=size[1]) if colorbars else None
    bar_h = probe.height + 3 if probe is not None else 0
    cells: list[Image.Image] = []
    titles: list[str] = []
    for i, x in enumerate(under):
        if shown is not None:
            cells.append(_cell(to_pil(shown[i]), size, None, bar_h))
            titles.append(row_titles[i] if row_titles is not None else "image")
        for title, column in columns.items():
            name, ranges = plan[title]
            lo, hi = ranges[i]
            blended = overlay(x, column[i], cmap=name, alpha=alpha, vmin=lo, vmax=hi, weight=weight)
            bar = colorbar(lo, hi, name, length=size[1]) if colorbars else None
            cells.append(_cell(to_pil(blended), size, bar, bar_h))
            titles.append(title)
    ncols = len(columns) + (shown is not None)
    return panel(cells, titles, ncols=ncols, pad=pad)


def _vmax(value: object, call: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not float(value) >= 0
        or float(value) == float("inf")
    ):
        raise fail(call, "scale", f"got {describe(value)} as vmax", "pass a finite number >= 0")
    return float(value)
