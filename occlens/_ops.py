"""Small tensor operations shared by several methods."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_blur", "gaussian_kernel"]


def gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian of radius ``ceil(3 sigma)``."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur each channel of ``x[..., H, W]`` separately, with replicated borders.

    >>> import torch
    >>> x = torch.ones(2, 3, 5, 5)
    >>> torch.allclose(gaussian_blur(x, 1.5), x)
    True
    """
    if sigma <= 0:
        return x.clone()
    kernel = gaussian_kernel(sigma, x.dtype, x.device)
    radius = kernel.numel() // 2
    shape = x.shape
    flat = x.reshape(-1, 1, *shape[-2:])
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    return flat.reshape(shape)
