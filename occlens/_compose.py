"""Putting maps on images: `overlay`, `draw_box` and `panel` grids with titles.

>>> import torch
>>> panel([torch.rand(3, 8, 8), torch.rand(3, 8, 8)], pad=2).size
(22, 12)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ._checks import positive_pair
from ._colormaps import apply, resolve
from ._errors import describe, fail
from ._image_io import check_tensor, resize, to_pil

__all__ = ["draw_box", "overlay", "panel"]


def _rgb_image(image: object, call: str) -> Tensor:
    fix = "pass an RGB image [3, H, W] (or grayscale [1, H, W]) with values in [0, 1]"
    x = check_tensor(image, call, "image", (3,), "an image [3, H, W]", fix)
    if x.shape[0] not in (1, 3):
        raise fail(call, "image", f"expected 1 or 3 channels, got {describe(x)}", fix)
    if float(x.min()) < -0.01 or float(x.max()) > 1.01:
        raise fail(
            call,
            "image",
            f"values span [{float(x.min()):.3g}, {float(x.max()):.3g}], not [0, 1]",
            "denormalize(x) a normalised image first, or pass x.clamp(0, 1)",
        )
    return x.clamp(0, 1).expand(3, -1, -1)


def overlay(
    image: Tensor,
    map: Tensor,
    *,
    cmap: str | Tensor | None = None,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    weight: str = "uniform",
) -> Tensor:
    """Blend a coloured map over an image: ``(1 - alpha) * image + alpha * colorize(map)``.

    With ``weight="magnitude"`` each pixel's alpha is scaled by the map's strength there: its
    distance from 0 relative to the range for signed maps, its position in ``[vmin, vmax]``
    otherwise. Weak regions then show the image rather than the colour map's neutral colour.

    `image` is ``[3, H, W]`` (or ``[1, H, W]``) in [0, 1]; `map` is ``[h, w]`` and is resized
    bilinearly to ``[H, W]`` if needed (resize it yourself with ``mode="nearest"`` to keep blocks).
    `cmap`, `vmin` and `vmax` are as in `colorize` and are judged on the map before resizing; pass
    the same `vmin`/`vmax` for several images to compare their raw scales. Returns
    ``Tensor[3, H, W]`` in [0, 1].

    >>> import torch
    >>> image, heat = torch.rand(3, 32, 32), torch.rand(4, 4)
    >>> overlay(image, heat, alpha=0.4).shape
    torch.Size([3, 32, 32])
    >>> torch.equal(overlay(image, heat, alpha=0.0), image)
    True
    >>> torch.equal(overlay(image, torch.zeros(4, 4) - 1.0, weight="magnitude"), image)
    False
    """
    call = "occlens.image.overlay"
    x = _rgb_image(image, call)
    fix = "reduce it first, e.g. map.abs().sum(0) for a per-channel map"
    values = check_tensor(map, call, "map", (2,), "a map [h, w]", fix)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise fail(call, "alpha", f"expected a number in [0, 1], got {describe(alpha)}", "e.g. 0.5")
    if weight not in ("uniform", "magnitude"):
        raise fail(call, "weight", f"got {weight!r}", "use 'uniform' or 'magnitude'")
    lut, lo, hi, flat = resolve(values, cmap, vmin, vmax, call)
    if values.shape != x.shape[1:]:
        values = resize(values, tuple(x.shape[1:]))
    colour = apply(values, lut, lo, hi, flat).to(device=x.device, dtype=x.dtype)
    strength = torch.full_like(values, float(alpha))
    if weight == "magnitude" and hi > lo:
        signed = lo < 0 < hi
        share = values.abs() / max(-lo, hi) if signed else (values - lo) / (hi - lo)
        strength = strength * share.clamp(0, 1)
    elif weight == "magnitude":  # a flat range: only the values above it are coloured
        strength = strength * (values > hi)
    strength = strength.to(device=x.device, dtype=x.dtype)
    return x * (1 - strength) + colour * strength


def draw_box(
    image: Tensor,
    box: tuple[int, int, int, int],
    color: Sequence[float] = (1.0, 0.0, 0.0),
    *,
    width: int = 1,
) -> Tensor:
    """Draw the outline of a half-open box ``(y0, x0, y1, x1)`` on an image ``[C, H, W]``.

    The outline is `width` pixels thick inside the box; the parts of a box that fall outside the
    image (a unit's receptive field often does) are not drawn. `color` has one value per channel.
    Returns a new ``Tensor[C, H, W]``.

    >>> import torch
    >>> boxed = draw_box(torch.zeros(3, 5, 5), (1, 1, 4, 4))
    >>> boxed[0].int().tolist()
    [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    """
    call = "occlens.image.draw_box"
    x = check_tensor(image, call, "image", (3,), "an image [C, H, W]", "take x[0] of a batch")
    height, width_px = x.shape[1:]
    if (
        not isinstance(box, (tuple, list))
        or len(box) != 4
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in box)
        or box[0] >= box[2]
        or box[1] >= box[3]
    ):
        raise fail(
            call, "box", f"got {describe(box)}", "pass (y0, x0, y1, x1), ints, y0 < y1, x0 < x1"
        )
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise fail(call, "width", f"expected a positive int, got {describe(width)}", "e.g. 1")
    try:
        colour = torch.as_tensor(color, dtype=x.dtype, device=x.device).flatten()
    except (TypeError, ValueError, RuntimeError):
        colour = torch.empty(0)
    if colour.numel() != x.shape[0]:
        raise fail(
            call, "color", f"{describe(color)} for {describe(x)}", "give one value per channel"
        )
    y0, x0, y1, x1 = (int(v) for v in box)
    mask = torch.zeros(height, width_px, dtype=torch.bool, device=x.device)
    for r0, r1, c0, c1 in (
        (y0, y0 + width, x0, x1),
        (y1 - width, y1, x0, x1),
        (y0, y1, x0, x0 + width),
        (y0, y1, x1 - width, x1),
    ):
        r0, r1 = max(r0, y0, 0), min(r1, y1, height)
        c0, c1 = max(c0, x0, 0), min(c1, x1, width_px)
        if r0 < r1 and c0 < c1:
            mask[r0:r1, c0:c1] = True
    return torch.where(mask, colour[:, None, None], x)


def _pil(item: object, call: str, index: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, Tensor):
        ranks, fix = (2, 3), "pass [3, H, W], [1, H, W] or [H, W] in [0, 1]; colorize maps first"
        check_tensor(item, call, f"images[{index}]", ranks, "an image [3, H, W]", fix)
        return to_pil(item).convert("RGB")
    raise fail(
        call,
        f"images[{index}]",
        f"expected a Tensor or a PIL image, got {describe(item)}",
        "pass one",
    )


def _fit(img: Image.Image, cell: tuple[int, int]) -> Image.Image:
    scale = min(cell[0] / img.height, cell[1] / img.width)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if size == img.size:
        return img
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return img.resize(size, resample)


def _clip_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def panel(
    images: Sequence[Tensor | Image.Image] | Tensor,
    titles: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    cell: int | tuple[int, int] | None = None,
    pad: int = 4,
) -> Image.Image:
    """Lay images out in a grid on white, each under its title, as one PIL image.

    `images` are tensors (``[3, H, W]``, ``[1, H, W]`` or ``[H, W]`` in [0, 1], as `to_pil`) or PIL
    images; a ``[B, 3, H, W]`` tensor counts as B images. `ncols` defaults to one row. Each `cell`
    is ``(h, w)`` (an int means a square); images are scaled to fit it, keeping their aspect ratio
    (nearest when enlarging, so small maps stay blocky). Without `cell`, the cell is the largest
    image and nothing is scaled. The size is ``ncols * w + (ncols + 1) * pad`` wide and
    ``rows * (title_height + h) + (rows + 1) * pad`` high, with ``title_height = 0`` without titles.

    >>> import torch
    >>> grid = panel([torch.rand(3, 8, 8)] * 3, ncols=2, cell=16, pad=1)
    >>> grid.size
    (35, 35)
    >>> panel([torch.rand(3, 8, 8)] * 2, ["image", "map"], cell=32).height > 40
    True
    """
    call = "occlens.image.panel"
    if isinstance(images, Tensor) and images.ndim == 4:
        images = list(images)
    if isinstance(images, (Tensor, Image.Image)) or not isinstance(images, Sequence) or not images:
        raise fail(call, "images", f"expected a non-empty list, got {describe(images)}", "pass [x]")
    pictures = [_pil(item, call, i) for i, item in enumerate(images)]
    n = len(pictures)
    if titles is not None and (
        isinstance(titles, str) or len(titles) != n or not all(isinstance(t, str) for t in titles)
    ):
        raise fail(
            call, "titles", f"got {describe(titles)} for {n} images", "pass one str per image"
        )
    if ncols is not None and (isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1):
        raise fail(call, "ncols", f"expected a positive int, got {describe(ncols)}", "e.g. 4")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise fail(call, "pad", f"expected an int >= 0, got {describe(pad)}", "e.g. 4")
    if cell is None:
        cell_hw = (max(p.height for p in pictures), max(p.width for p in pictures))
    else:
        cell_hw = positive_pair(cell, call, "cell")
        pictures = [_fit(p, cell_hw) for p in pictures]
    cols = min(ncols or n, n)
    rows = -(-n // cols)
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 2 if titles else 0
    ch, cw = cell_hw
    canvas = Image.new(
        "RGB", (cols * cw + (cols + 1) * pad, rows * (title_h + ch) + (rows + 1) * pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for i, picture in enumerate(pictures):
        left = pad + (i % cols) * (cw + pad)
        top = pad + (i // cols) * (title_h + ch + pad)
        if titles:
            text = _clip_text(draw, titles[i], font, cw)
            offset = (cw - draw.textlength(text, font=font)) / 2
            draw.text((left + offset, top), text, fill="black", font=font)
        corner = (left + (cw - picture.width) // 2, top + title_h + (ch - picture.height) // 2)
        canvas.paste(picture, corner)
    return canvas
