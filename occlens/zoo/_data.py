"""A procedural dataset: one filled shape per image on a cluttered, class-irrelevant background.

Every image holds exactly one target object (a circle, square, triangle, cross or star) of random
size, position, rotation and colour, drawn over a background of smooth colour texture, soft blobs,
thin lines and short strokes. The clutter is drawn independently of the class, so the object is
the only evidence for the label. The generator records the object's mask and its bounding box.

Images are quantised to multiples of 1/255, so they survive a round trip through 8-bit PNG files
bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._errors import describe, fail
from .._keys import generator
from .._types import Key

__all__ = ["CLASSES", "ShapesData", "shapes_dataset"]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
"""The class names, in label order."""

CALL = "zoo.shapes_dataset"

Uniform = Callable[..., Tensor]  # uniform(*shape, lo=0.0, hi=1.0), drawing from the call's key


class ShapesData(NamedTuple):
    """A batch of shape images with their ground truth.

    * `images`: ``float32 [N, 3, S, S]`` in ``[0, 1]``.
    * `labels`: ``int64 [N]``, indices into `classes`.
    * `boxes`: ``int64 [N, 4]``, the object's bounding box ``(y0, x0, y1, x1)``, half-open, in
      pixels: the object covers rows ``y0 .. y1 - 1`` and columns ``x0 .. x1 - 1``.
    * `masks`: ``bool [N, S, S]``, the object's pixels.
    * `classes`: the class names, in label order.

    >>> from occlens import zoo
    >>> data = zoo.shapes_dataset(4, key=0, size=32)
    >>> data.images.shape, data.labels.shape, data.boxes.shape, data.masks.shape
    (torch.Size([4, 3, 32, 32]), torch.Size([4]), torch.Size([4, 4]), torch.Size([4, 32, 32]))
    >>> all(data.masks[i, y0:y1, x0:x1].sum() == data.masks[i].sum()
    ...     for i, (y0, x0, y1, x1) in enumerate(data.boxes.tolist()))  # each object in its box
    True
    """

    images: Tensor
    labels: Tensor
    boxes: Tensor
    masks: Tensor
    classes: tuple[str, ...]


def shapes_dataset(n: int, *, key: Key, size: int = 64) -> ShapesData:
    """Generate `n` images of one shape each on a cluttered background.

    The same `key` (an ``int`` seed or a ``torch.Generator``, which is copied, not advanced) gives
    bit-identical data; nothing touches global RNG state. Classes are drawn uniformly. Object
    radii span 12% to 25% of `size` (8 to 16 pixels at the default 64).

    Shapes: ``images [n, 3, size, size]`` float32 in ``[0, 1]``, ``labels [n]``, ``boxes [n, 4]``,
    ``masks [n, size, size]``. All images are drawn at once (about 1 ms and 0.3 MB of working
    memory per image at size 64): generate tens of thousands in blocks with different keys.

    >>> from occlens import zoo
    >>> data = zoo.shapes_dataset(4, key=0)
    >>> data.images.shape, data.images.dtype, data.labels.shape, data.boxes.shape
    (torch.Size([4, 3, 64, 64]), torch.float32, torch.Size([4]), torch.Size([4, 4]))
    >>> data.classes
    ('circle', 'square', 'triangle', 'cross', 'star')
    >>> y0, x0, y1, x1 = data.boxes[0].tolist()
    >>> bool(data.masks[0, y0:y1, x0:x1].sum() == data.masks[0].sum())
    True
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise fail(CALL, "n", f"got {describe(n)}", "pass the number of images as an int >= 0")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise fail(CALL, "size", f"got {describe(size)}", "pass an int image size of at least 32")
    rng = generator(key, CALL, "the dataset")

    def uniform(*shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=rng)

    labels = torch.randint(len(CLASSES), (n,), generator=rng)
    radius = uniform(n, lo=0.125, hi=0.25) * size
    margin = 1.15 * radius + 1.0  # the largest extent, a triangle tip
    cy = margin + uniform(n) * (size - 2 * margin)
    cx = margin + uniform(n) * (size - 2 * margin)
    angle = uniform(n, hi=2 * math.pi)
    background = _background(n, size, rng, uniform)
    colour = _object_colour(background.mean(dim=(2, 3)), uniform)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dy = coords.view(1, -1, 1) - cy.view(-1, 1, 1)
    dx = coords.view(1, 1, -1) - cx.view(-1, 1, 1)
    masks = _shape_masks(labels, dy, dx, radius.view(-1, 1, 1), angle.view(-1, 1, 1))

    images = torch.where(masks[:, None], colour[:, :, None, None], background)
    images = images + 0.03 * torch.randn(images.shape, generator=rng)
    images = (images.clamp(0, 1) * 255).round() / 255
    return ShapesData(images, labels, _boxes(masks), masks, CLASSES)


def _shape_masks(labels: Tensor, dy: Tensor, dx: Tensor, radius: Tensor, angle: Tensor) -> Tensor:
    """``bool [N, S, S]``: each image's shape, centred at ``(dy, dx) = 0``."""
    rho = torch.sqrt(dy**2 + dx**2)
    phi = torch.atan2(dy, dx) - angle
    u = (dx * torch.cos(angle) + dy * torch.sin(angle)).abs()  # distances from the cross's axes
    v = (-dx * torch.sin(angle) + dy * torch.cos(angle)).abs()
    arm = 0.28 * radius
    candidates = {
        "circle": rho <= 0.9 * radius,
        "square": _star(rho, phi, 4, radius, radius * math.cos(math.pi / 4)),
        "triangle": _star(rho, phi, 3, 1.15 * radius, 1.15 * radius * math.cos(math.pi / 3)),
        "cross": ((u <= arm) & (v <= radius)) | ((v <= arm) & (u <= radius)),
        "star": _star(rho, phi, 5, 1.1 * radius, 0.45 * radius),
    }
    masks = torch.zeros(dy.shape[0], dy.shape[1], dx.shape[2], dtype=torch.bool)
    for label, name in enumerate(CLASSES):
        pick = labels == label
        masks[pick] = candidates[name][pick]
    return masks


def _star(rho: Tensor, phi: Tensor, points: int, outer: Tensor, inner: Tensor) -> Tensor:
    """Inside a star with `points` tips at radius `outer` and notches at radius `inner`.

    A regular polygon is the star whose notches sit on its edges: ``inner = outer cos(pi / n)``.
    Folding the angle into ``[0, pi / n]`` leaves one edge, from the tip ``(outer, 0)`` to the
    notch ``inner (cos(pi / n), sin(pi / n))``; a point is inside if it lies on the centre's side.
    """
    half = math.pi / points
    folded = torch.remainder(phi, 2 * half)
    folded = torch.minimum(folded, 2 * half - folded)
    px, py = rho * torch.cos(folded), rho * torch.sin(folded)
    ex, ey = inner * math.cos(half) - outer, inner * math.sin(half)  # the edge, tip to notch
    return ex * py - ey * (px - outer) >= 0


def _background(n: int, size: int, rng: torch.Generator, uniform: Uniform) -> Tensor:
    """Smooth colour texture, soft blobs, long thin lines and short strokes: ``[n, 3, S, S]``."""
    base = uniform(n, 3, 1, 1, lo=0.15, hi=0.85)
    coarse = torch.randn(n, 3, 6, 6, generator=rng)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    image = base + 0.12 * smooth
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    ys, xs = coords.view(1, -1, 1), coords.view(1, 1, -1)
    for _ in range(4):  # soft blobs
        cy, cx = uniform(n, 1, 1, hi=size), uniform(n, 1, 1, hi=size)
        sigma = uniform(n, 1, 1, lo=2.0, hi=6.0)
        weight = 0.6 * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))
        image = torch.lerp(image, uniform(n, 3, 1, 1), weight[:, None])
    for length, width in ((1.5, 0.9), (1.5, 0.6), (0.25, 1.4), (0.25, 1.2), (0.2, 1.0)):
        cy, cx = uniform(n, 1, 1, hi=size), uniform(n, 1, 1, hi=size)
        theta = uniform(n, 1, 1, hi=math.pi)
        half = length * size / 2 * uniform(n, 1, 1, lo=0.5, hi=1.0)
        along = (xs - cx) * torch.cos(theta) + (ys - cy) * torch.sin(theta)
        across = -(xs - cx) * torch.sin(theta) + (ys - cy) * torch.cos(theta)
        on = (along.abs() <= half) & (across.abs() <= width * uniform(n, 1, 1, lo=0.7, hi=1.0))
        image = torch.where(on[:, None], uniform(n, 3, 1, 1), image)
    return image


def _object_colour(background: Tensor, uniform: Uniform) -> Tensor:
    """A colour for each object, at least 0.35 (RMS over RGB) away from its background's mean."""
    colour = uniform(*background.shape)
    for _ in range(8):
        near = (colour - background).pow(2).mean(dim=1).sqrt() < 0.35
        if not bool(near.any()):
            break
        colour = torch.where(near[:, None], uniform(*background.shape), colour)
    far = torch.where(background > 0.5, 0.0, 1.0)  # the corner of the RGB cube farthest away
    near = (colour - background).pow(2).mean(dim=1).sqrt() < 0.35
    return torch.where(near[:, None], far, colour)


def _boxes(masks: Tensor) -> Tensor:
    """``int64 [N, 4]``: the half-open bounding box ``(y0, x0, y1, x1)`` of each mask."""
    size = masks.shape[-1]
    index = torch.arange(size)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    y0 = torch.where(rows, index, size).amin(dim=1)
    y1 = torch.where(rows, index + 1, 0).amax(dim=1)
    x0 = torch.where(cols, index, size).amin(dim=1)
    x1 = torch.where(cols, index + 1, 0).amax(dim=1)
    return torch.stack([y0, x0, y1, x1], dim=1)
