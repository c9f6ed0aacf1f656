"""Where occluders go, and how their deltas become a map.

Positions are laid out per axis; the occluder grid is their outer product, row-major. Each window is
half-open ``[start, end)`` and already clipped where ``edge="cover"`` clips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ._errors import fail

__all__ = ["Axis", "Grid", "aggregate", "axis", "occluder_for_rf"]

Edge = Literal["fit", "cover"]
Aggregate = Literal["mean", "sum", "grid", "center"]
AGGREGATES = ("mean", "sum", "grid", "center")
EDGES = ("fit", "cover")


@dataclass(frozen=True)
class Axis:
    """Window bounds along one axis: ``starts[i] <= pixel < ends[i]``."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    size: int

    def __len__(self) -> int:
        return len(self.starts)

    def indicator(self, dtype: torch.dtype) -> Tensor:
        """``[n, size]`` with 1 where window i covers the pixel."""
        pixels = torch.arange(self.size)
        starts = torch.tensor(self.starts)[:, None]
        ends = torch.tensor(self.ends)[:, None]
        return ((pixels >= starts) & (pixels < ends)).to(dtype)

    def centres(self) -> Tensor:
        """Centre pixel of each window: ``start + (length - 1) // 2`` (the RF-mapping script's)."""
        starts, ends = torch.tensor(self.starts), torch.tensor(self.ends)
        return starts + (ends - starts - 1) // 2


def axis(
    size: int, window: int, stride: int, edge: str, lo: int, hi: int, boxed: bool
) -> Axis | None:
    """Occluder bounds along one axis of length `size`, restricted to ``[lo, hi)``.

    ``edge="fit"``: windows lying entirely inside ``[lo, hi)``, ``floor((span - w) / s) + 1`` of
    them (DNNBrain, xplique). When a box is narrower than the window, one window starts at the box
    edge if it fits in the image (the RF-mapping script's rule). ``edge="cover"``: also a last
    window clipped at ``hi``, ``ceil((span - w) / s) + 1`` of them, so every pixel is covered
    (Captum).
    Returns None when no window fits.
    """
    span = hi - lo
    if edge == "fit":
        if window <= span:
            starts = tuple(range(lo, hi - window + 1, stride))
        elif boxed and lo + window <= size:
            starts = (lo,)
        else:
            return None
        return Axis(starts, tuple(s + window for s in starts), size)
    count = math.ceil(max(span - window, 0) / stride) + 1
    # With stride > window the formula can place a last start past the end: drop it.
    starts = tuple(lo + k * stride for k in range(count) if k * stride < span)
    return Axis(starts, tuple(min(s + window, hi) for s in starts), size)


@dataclass(frozen=True)
class Grid:
    rows: Axis
    cols: Axis
    window: tuple[int, int]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def bounds(self) -> Tensor:
        """``[P, 4]`` int64 rows of ``(y0, x0, y1, x1)``, row-major over the grid."""
        y0 = torch.tensor(self.rows.starts).repeat_interleave(len(self.cols))
        y1 = torch.tensor(self.rows.ends).repeat_interleave(len(self.cols))
        x0 = torch.tensor(self.cols.starts).repeat(len(self.rows))
        x1 = torch.tensor(self.cols.ends).repeat(len(self.rows))
        return torch.stack([y0, x0, y1, x1], dim=1)


def aggregate(deltas: Tensor, grid: Grid, how: str) -> Tensor:
    """Turn per-occluder deltas ``[..., P]`` into a map.

    ``"grid"``: ``[..., n_rows, n_cols]``, one value per position (DNNBrain). ``"sum"``:
    ``[..., H, W]``, the sum over the windows covering each pixel (xplique). ``"mean"``: the mean
    over them, 0 where no window covers the pixel (Captum). ``"center"``: each delta added at its
    window's centre pixel only, a sparse lattice (the RF-mapping script).
    """
    lead = deltas.shape[:-1]
    table = deltas.reshape(*lead, len(grid.rows), len(grid.cols))
    if how == "grid":
        return table
    height, width = grid.rows.size, grid.cols.size
    if how == "center":
        out = torch.zeros(*lead, height * width, dtype=deltas.dtype, device=deltas.device)
        flat = grid.rows.centres()[:, None] * width + grid.cols.centres()[None, :]
        index = flat.flatten().to(deltas.device).expand(*lead, -1)
        return out.scatter_add_(-1, index, deltas).reshape(*lead, height, width)
    rows = grid.rows.indicator(torch.float64).to(deltas.device)
    cols = grid.cols.indicator(torch.float64).to(deltas.device)
    total = rows.T @ table.double() @ cols
    if how == "sum":
        return total.to(deltas.dtype)
    count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    return torch.where(count > 0, total / count.clamp(min=1), 0.0).to(deltas.dtype)


def occluder_for_rf(rf_size: int) -> tuple[int, int]:
    """Occluder ``(window, stride)`` for a receptive field of side `rf_size` (RF-mapping script).

    ``window = max(rf_size // 10, 1)``, ``stride = max(window // 2, 1)``.

    >>> import occlens as ol
    >>> ol.occluder_for_rf(99)
    (9, 4)
    >>> window, stride = ol.occluder_for_rf(195)
    """
    if isinstance(rf_size, bool) or not isinstance(rf_size, int) or rf_size < 1:
        raise fail(
            "occluder_for_rf",
            "rf_size",
            f"got {rf_size!r}",
            "pass the receptive field's side as a positive int",
        )
    window = max(rf_size // 10, 1)
    return window, max(window // 2, 1)


def check_choice(value: object, options: tuple[str, ...], call: str, argument: str) -> None:
    if value not in options:
        raise fail(call, argument, f"got {value!r}", f"use one of {', '.join(map(repr, options))}")
