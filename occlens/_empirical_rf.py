"""Empirical receptive fields (Zhou et al. 2015; the RF-mapping script; DNNBrain's variant).

For a channel of a layer: the `k` images that drive it most, and for each the unit where it
peaks. Each such unit's field is mapped, then moved into a canvas the size of the theoretical
field so that every unit's field lines up, and the canvases are averaged over the images.

* ``engine="occlusion"`` (Zhou et al. 2015, the RF-mapping script): occluders of random noise
  (``U[-1, 1)`` by default, fresh per occluder, from `key`) slide inside the unit's theoretical
  field, sized by `occluder_for_rf`; each contributes ``|delta|`` of the unit at its centre
  (``aggregate="center"``, Bair's fix against box blur) or spread over its area
  (``aggregate="mean"``).
* ``engine="upsample"`` (DNNBrain's ``EmpiricalReceptiveField``): the channel's activation map
  is upsampled to the image, and the field-sized patch of the unit whose patch has the highest
  mean is pasted into the canvas.

A field clipped by the image border is pasted at its place inside the unclipped field, so the
canvas stays aligned with the unit; `coverage` counts how many images reached each canvas pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ._activation_maps import upsample_activation
from ._checks import image_batch
from ._combine import derive_key
from ._errors import describe, fail, reported_as
from ._fills import Uniform, uniform
from ._grid import occluder_for_rf
from ._keys import generator
from ._layers import layer as layer_fn
from ._occlusion import occlusion
from ._progress import progress as progress_bar
from ._targets import unit
from ._topk import TopK, top_k
from ._types import Key

__all__ = ["EmpiricalRF", "empirical_rf"]

CALL = "empirical_rf"
EFFECTIVE_FRACTION = 0.2


@dataclass(frozen=True)
class EmpiricalRF:
    """The result of `empirical_rf`.

    * `map`: ``[h, w]``, the mean over the images of each unit's re-centred field map, where
      ``(h, w)`` is the theoretical field's size and pixel ``(i, j)`` is offset ``(i, j)`` from
      the top-left corner of the unit's unclipped field.
    * `coverage`: ``[h, w]``, how many images' fields (clipped by their border) reached each
      canvas pixel; ``map * len(images) / coverage`` averages over those only.
    * `top`: the `TopK` of the images used, with each one's peak unit in `top.locations`.
    * `center_of_mass`: ``(y, x)`` of `map` (its negative part ignored), in canvas pixels.
    * `effective_size`: the side of a square of the same area as the pixels at or above
      ``0.2 * map.max()`` (the threshold Zhou et al. segment units with); ``area`` is that count.

    >>> import torch, occlens as ol
    >>> model = ol.testing.tiny_cnn()
    >>> images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> erf = ol.empirical_rf(model, "features.2", 0, images, k=3, key=0)
    >>> erf.map.shape == erf.coverage.shape, len(erf.top.indices), erf.area > 0
    (True, 3, True)
    """

    map: Tensor
    coverage: Tensor
    top: TopK
    center_of_mass: tuple[float, float]
    effective_size: float
    area: int


# Arguments of the calls inside empirical_rf, by the names the user gave them here.
_INNER_ARGUMENTS = {
    "x": "images",
    "input_size": "images",
    "model_fn": "model",
    "target": "channel",
    "index": "channel",
    "name": "layer",
}


def _choice(value: object, options: tuple[str, ...], argument: str) -> None:
    if value not in options:
        raise fail(CALL, argument, f"got {value!r}", f"use one of {', '.join(map(repr, options))}")


def _images(images: object) -> Tensor:
    if not isinstance(images, Tensor):
        raise fail(
            CALL,
            "images",
            f"got {describe(images)}",
            "pass the candidate images as one tensor [N, C, H, W] (top_k streams any iterable)",
        )
    batch, single = image_batch(images, CALL, "images")
    if single:
        raise fail(
            CALL,
            "images",
            f"got one image {describe(images)}",
            "pass a stack of candidate images [N, C, H, W]; the top k of them are used",
        )
    return batch


def _stats(canvas: Tensor) -> tuple[tuple[float, float], float, int]:
    mass = canvas.clamp(min=0).double()
    total = float(mass.sum())
    if total == 0:
        return (math.nan, math.nan), 0.0, 0
    ys = torch.arange(canvas.shape[0], dtype=torch.float64, device=canvas.device)
    xs = torch.arange(canvas.shape[1], dtype=torch.float64, device=canvas.device)
    center = (float((mass.sum(1) * ys).sum()) / total, float((mass.sum(0) * xs).sum()) / total)
    area = int((mass >= EFFECTIVE_FRACTION * mass.max()).sum())
    return center, math.sqrt(area), area


def _paste(canvas: Tensor, coverage: Tensor, patch: Tensor, clipped, unclipped) -> None:
    y0, x0, y1, x1 = clipped
    top, left = y0 - unclipped[0], x0 - unclipped[1]
    canvas[top : top + y1 - y0, left : left + x1 - x0] += patch[y0:y1, x0:x1]
    coverage[top : top + y1 - y0, left : left + x1 - x0] += 1


def empirical_rf(
    model: nn.Module,
    layer: str,
    channel: int,
    images: Tensor,
    *,
    k: int = 10,
    engine: Literal["occlusion", "upsample"] = "occlusion",
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    fill: object = None,
    aggregate: Literal["center", "mean"] = "center",
    absolute: bool = True,
    mode: str = "bicubic",
    key: Key | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> EmpiricalRF:
    """The empirical receptive field of channel `channel` of layer `layer`, over `images`.

    `images` is ``[N, C, H, W]``; the `k` that drive the channel's spatial maximum most are used,
    each at its peak unit. With ``engine="occlusion"`` (default) occluders of `window` and
    `stride` (default ``occluder_for_rf`` of the field's size) filled by `fill` (default
    ``fills.uniform(-1, 1)``, which needs `key`) slide inside each unit's field; `absolute` takes
    ``|delta|`` per occluder, and `aggregate` puts it at the occluder's centre (``"center"``) or
    spreads it over its area (``"mean"``). ``engine="upsample"`` is DNNBrain's variant, with
    `mode` the interpolation. The result's `map` has the theoretical field's size.

    >>> import torch, occlens as ol
    >>> model = ol.testing.tiny_cnn()
    >>> images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> erf = ol.empirical_rf(model, "features.2", 0, images, k=3, key=0)
    >>> erf.map.shape == ol.receptive_field(model, "features.2", (16, 16)).size
    True
    >>> torch.equal(erf.map, ol.empirical_rf(model, "features.2", 0, images, k=3, key=0).map)
    True
    """
    from ._receptive import receptive_field

    _choice(engine, ("occlusion", "upsample"), "engine")
    _choice(aggregate, ("center", "mean"), "aggregate")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise fail(CALL, "k", f"got {describe(k)}", "pass how many top images to use, e.g. 10")
    with reported_as(CALL, _INNER_ARGUMENTS):
        batch = _images(images)
        size = tuple(batch.shape[-2:])
        rf = receptive_field(model, layer, size)
        field = tuple(int(s) for s in rf.size)
        unit_fn = layer_fn(model, layer)
        top = top_k(unit_fn, batch, channel, k, progress=False)
        if engine == "occlusion":
            if window is None:
                pairs = [occluder_for_rf(s) for s in field]
                window = (pairs[0][0], pairs[1][0])
                stride = (pairs[0][1], pairs[1][1]) if stride is None else stride
            fill = uniform(-1.0, 1.0) if fill is None else fill
            needs_key = isinstance(fill, Uniform) or callable(fill)
            rng = (
                generator(key, CALL, "the occluders' noise")
                if needs_key or key is not None
                else None
            )
        canvas = torch.zeros(field, dtype=batch.dtype, device=batch.device)
        coverage = torch.zeros(field, dtype=torch.long, device=batch.device)
        with progress_bar(len(top.indices), CALL, progress) as advance:
            for index, (y, x) in zip(top.indices.tolist(), top.locations.tolist(), strict=True):
                image = batch[index]
                if engine == "occlusion":
                    box = rf.region(y, x)
                    patch = occlusion(
                        unit_fn,
                        image,
                        unit(channel, y, x),
                        window=window,
                        stride=stride,
                        fill=fill,
                        box=box,
                        aggregate=aggregate,
                        absolute=absolute,
                        chunk_size=chunk_size,
                        key=None if rng is None else derive_key(rng),
                        progress=False,
                    )
                else:
                    patch = upsample_activation(unit_fn, image, channel, mode=mode)
                    y, x = _best_unit(patch, rf)
                    box = rf.region(y, x)
                _paste(canvas, coverage, patch, box, rf.region(y, x, clip=False))
                advance(1)
    canvas = canvas / len(top.indices)
    center, effective, area = _stats(canvas)
    return EmpiricalRF(canvas, coverage, top, center, effective, area)


def _best_unit(upsampled: Tensor, rf) -> tuple[int, int]:
    """The unit whose (clipped) field patch of the upsampled map has the highest mean."""
    rows, cols = rf.feature_size
    best, where = -math.inf, (0, 0)
    for y in range(rows):
        for x in range(cols):
            y0, x0, y1, x1 = rf.region(y, x)
            if y1 <= y0 or x1 <= x0:
                continue
            value = float(upsampled[y0:y1, x0:x1].mean())
            if value > best:
                best, where = value, (y, x)
    return where
