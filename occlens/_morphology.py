"""Binary masks in torch: the convex hull image and erosion, as scikit-image computes them.

`convex_hull` matches ``skimage.morphology.convex_hull_image`` (pixel edge midpoints as hull
vertices, pixel centres on the hull's border included) and `erode` matches
``skimage.morphology.erosion(mask, footprint_rectangle((3, 3)))`` (borders reflected), without
needing scikit-image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["convex_hull", "erode"]


def _hull_points(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Andrew's monotone chain: hull vertices counter-clockwise (in (y, x) axes), no collinear."""
    points = sorted(set(points))
    if len(points) <= 2:
        return points

    def cross(o, a, b) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[int, int]] = []
    for p in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[int, int]] = []
    for p in reversed(points):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def convex_hull(mask: Tensor) -> Tensor:
    """The pixels whose centres lie in the convex hull of ``mask [H, W]`` (bool).

    >>> import torch
    >>> mask = torch.zeros(5, 5, dtype=torch.bool)
    >>> mask[0, 2] = mask[2, 0] = mask[2, 4] = mask[4, 2] = True
    >>> convex_hull(mask).int()
    tensor([[0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0]], dtype=torch.int32)
    """
    height, width = mask.shape
    if not bool(mask.any()):
        return torch.zeros_like(mask, dtype=torch.bool)
    # Only the first and last pixel of each row and column can reach the hull.
    ys, xs = torch.nonzero(mask, as_tuple=True)
    keep = torch.zeros(ys.numel(), dtype=torch.bool, device=mask.device)
    for line, other in ((ys, xs), (xs, ys)):
        size = int(line.max()) + 1
        lo = torch.full((size,), 1 << 30, device=mask.device).scatter_reduce(0, line, other, "amin")
        hi = torch.full((size,), -1, device=mask.device).scatter_reduce(0, line, other, "amax")
        keep |= (other == lo[line]) | (other == hi[line])
    centres = torch.stack([ys[keep], xs[keep]], dim=1).cpu() * 2  # doubled: edges at odd numbers
    offsets = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])
    corners = (centres[:, None, :] + offsets).reshape(-1, 2).tolist()
    hull = torch.tensor(_hull_points([(int(y), int(x)) for y, x in corners]), dtype=torch.int64)
    grid_y, grid_x = torch.meshgrid(
        torch.arange(height) * 2, torch.arange(width) * 2, indexing="ij"
    )
    inside = torch.ones(height, width, dtype=torch.bool)
    for a, b in zip(hull.tolist(), torch.roll(hull, -1, 0).tolist(), strict=True):
        # counter-clockwise in (y, x): points inside have a non-negative cross product.
        side = (b[0] - a[0]) * (grid_x - a[1]) - (b[1] - a[1]) * (grid_y - a[0])
        inside &= side >= 0
    return inside.to(mask.device)


def erode(masks: Tensor) -> Tensor:
    """Binary erosion of ``masks [..., H, W]`` by a 3x3 square, borders reflected.

    >>> import torch
    >>> mask = torch.zeros(5, 5, dtype=torch.bool)
    >>> mask[1:4, 1:4] = True
    >>> erode(mask).int().sum().item(), erode(torch.ones(3, 3, dtype=torch.bool)).all().item()
    (1, True)
    """
    shape = masks.shape
    flat = masks.reshape(-1, 1, *shape[-2:]).to(torch.float32)
    padded = F.pad(flat, (1, 1, 1, 1), mode="replicate")  # = reflect for a 3x3 minimum
    eroded = -F.max_pool2d(-padded, kernel_size=3, stride=1)
    return (eroded > 0.5).reshape(shape)
