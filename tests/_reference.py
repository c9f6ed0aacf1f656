"""Plain-loop references for occlusion, written from each tool's description, not from occlens.

Every function here evaluates one occluded image per forward pass in a Python loop and accumulates
maps pixel by pixel, so it shares no code path with the vectorised engine.
"""

from __future__ import annotations

import math

import numpy as np
import torch

NOISE_BLOCK = 64  # occlens' documented noise stream: blocks of 64 occluders, float64 uniforms


def captum_positions(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Captum: ceil((D - w) / s) + 1 windows, the last one cut at the border.

    Captum requires stride <= window; with a larger stride a last start can fall past the end,
    and such an empty window is left out.
    """
    count = math.ceil((size - window) / stride) + 1
    return [(k * stride, min(k * stride + window, size)) for k in range(count) if k * stride < size]


def fitting_positions(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """DNNBrain / xplique: floor((D - w) / s) + 1 windows that fit entirely."""
    count = (size - window) // stride + 1
    return [(k * stride, k * stride + window) for k in range(count)]


def rf_script_params(box_inclusive, rf_size: int, image_size) -> list[dict]:
    """The RF-mapping script's get_occluder_params, ported line by line (inclusive corners)."""
    occluder_size = max(rf_size // 10, 1)
    occluder_stride = max(occluder_size // 2, 1)
    params = []
    vx_min, hx_min, vx_max, hx_max = box_inclusive
    for i in np.arange(vx_min, max(vx_max - occluder_size + 2, vx_min + 1), occluder_stride):
        for j in np.arange(hx_min, max(hx_max - occluder_size + 2, hx_min + 1), occluder_stride):
            if (i + occluder_size - 1 > image_size[0] - 1) or (
                j + occluder_size - 1 > image_size[1] - 1
            ):
                continue
            params.append(
                {
                    "top_left": (int(i), int(j)),
                    "bottom_right": (int(i + occluder_size - 1), int(j + occluder_size - 1)),
                }
            )
    return params


def score_one(model, image: torch.Tensor, target) -> float:
    with torch.no_grad():
        return float(target(model(image[None]))[0])


def deltas_loop(model, image, target, windows, fill_for) -> list[float]:
    """delta_p = score(clean) - score(occluded_p), one forward per occluder."""
    clean = score_one(model, image, target)
    out = []
    for p, (y0, x0, y1, x1) in enumerate(windows):
        occluded = image.clone()
        occluded[:, y0:y1, x0:x1] = fill_for(p, y0, x0, y1, x1)
        out.append(clean - score_one(model, occluded, target))
    return out


def constant_fill(value):
    return lambda p, y0, x0, y1, x1: value


def image_fill(fill_image):
    return lambda p, y0, x0, y1, x1: fill_image[:, y0:y1, x0:x1]


def noise_fill(seed: int, channels: int, window, lo: float, hi: float, dtype):
    """U[lo, hi) patches, occluder p taking draw p of the stream, cut to its (clipped) window."""
    gen = torch.Generator().manual_seed(seed)
    blocks: list[torch.Tensor] = []

    def fill(p, y0, x0, y1, x1):
        while len(blocks) * NOISE_BLOCK <= p:
            draw = torch.rand(NOISE_BLOCK, channels, *window, generator=gen, dtype=torch.float64)
            blocks.append(lo + (hi - lo) * draw)
        patch = blocks[p // NOISE_BLOCK][p % NOISE_BLOCK]
        return patch[:, : y1 - y0, : x1 - x0].to(dtype)

    return fill


def mean_map(height, width, windows, deltas) -> torch.Tensor:
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for (y0, x0, y1, x1), d in zip(windows, deltas, strict=True):
        for i in range(y0, y1):
            for j in range(x0, x1):
                total[i, j] += d
                count[i, j] += 1
    return torch.from_numpy(np.where(count > 0, total / np.maximum(count, 1), 0.0))


def sum_map(height, width, windows, deltas) -> torch.Tensor:
    total = np.zeros((height, width))
    for (y0, x0, y1, x1), d in zip(windows, deltas, strict=True):
        total[y0:y1, x0:x1] += d
    return torch.from_numpy(total)


def center_map(height, width, windows, deltas) -> torch.Tensor:
    """The RF-mapping script's Bair fix: add each delta at (top + bottom) // 2, inclusive bounds."""
    total = np.zeros((height, width))
    for (y0, x0, y1, x1), d in zip(windows, deltas, strict=True):
        total[(y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2] += d
    return torch.from_numpy(total)


def grid_windows(rows, cols):
    return [(y0, x0, y1, x1) for (y0, y1) in rows for (x0, x1) in cols]
