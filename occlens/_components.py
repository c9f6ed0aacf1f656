"""Component images: an image as its mean patch plus additive PCA or ICA components.

DNNBrain's ``MinimalComponentImage`` names a PCA and an ICA "part decomposer" but ships empty
stubs. occlens implements the usual decomposition of an image into parts of that kind (Hyvärinen,
Hurri & Hoyer, *Natural Image Statistics*, 2009): cut the image into non-overlapping ``p x p``
patches (padding the right and bottom edges by replication to a multiple of ``p``), treat each
patch as one sample of ``C * p * p`` features, and factor the centred patches:

* PCA: ``X - mean = U S Vh``; component ``k`` is ``U[:, k] S[k] Vh[k]``, ordered by variance.
* ICA: the top principal components are whitened, then rotated by FastICA (symmetric, log-cosh,
  started from the identity, so no random numbers are drawn) into maximally non-Gaussian
  sources ``Y``; component ``k`` is ``Y[:, k] A[k]``, ordered by energy.

Each component, folded back into image layout, is an image ``[C, H, W]``; the mean patch tiled
over the image plus every component gives back the image (up to the components left out by
`n_components`). A minimal component image is the tiled mean plus a subset of components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._errors import describe, fail

__all__ = ["Components", "decompose", "fastica"]

DEFAULTS: dict[str, dict[str, object]] = {
    "pca": {"patch": 8, "n_components": None},
    "ica": {"patch": 8, "n_components": None, "max_iter": 200, "tol": 1e-4},
}


@dataclass(frozen=True)
class Components:
    """``image ~= fold(mean + coef @ basis)``: `coef` ``[N, K]`` per patch, `basis` ``[K, D]``."""

    mean: Tensor  # [D]
    coef: Tensor  # [N, K]
    basis: Tensor  # [K, D]
    channels: int
    size: tuple[int, int]  # the image's H, W
    padded: tuple[int, int]
    patch: int

    def __len__(self) -> int:
        return self.coef.shape[1]

    def compose(self, chosen: Tensor) -> Tensor:
        """Images ``[n, C, H, W]``: the tiled mean plus the components where ``chosen [n, K]``."""
        weights = chosen.to(self.coef.dtype)
        patches = self.mean + (self.coef[None] * weights[:, None, :]) @ self.basis  # [n, N, D]
        images = F.fold(
            patches.transpose(1, 2), self.padded, kernel_size=self.patch, stride=self.patch
        )
        return images[:, :, : self.size[0], : self.size[1]]


def _check_options(method: str, options: dict[str, object], call: str) -> dict[str, object]:
    unknown = sorted(set(options) - set(DEFAULTS[method]))
    if unknown:
        raise fail(
            call,
            "options",
            f"segments={method!r} takes no option(s) {', '.join(map(repr, unknown))}",
            f"use only {', '.join(DEFAULTS[method])}",
        )
    merged = {**DEFAULTS[method], **options}
    for name in ("patch", "max_iter"):
        value = merged.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(call, "options", f"{name}={describe(value)}", f"pass {name} as an int >= 1")
    count = merged["n_components"]
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise fail(
            call,
            "options",
            f"n_components={describe(count)}",
            "pass an int >= 1, or None for every component",
        )
    tol = merged.get("tol", 1.0)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise fail(call, "options", f"tol={describe(tol)}", "pass a positive tolerance")
    return merged


def decompose(image: Tensor, method: str, options: dict[str, object], call: str) -> Components:
    """PCA or ICA components of ``image [C, H, W]`` over its patches, computed in float64."""
    settings = _check_options(method, options, call)
    patch = int(settings["patch"])  # type: ignore[call-overload]
    channels, height, width = image.shape
    padded = (math.ceil(height / patch) * patch, math.ceil(width / patch) * patch)
    pad = (0, padded[1] - width, 0, padded[0] - height)
    work = image.detach().to(torch.float64)[None]
    if any(pad):
        work = F.pad(work, pad, mode="replicate")
    data = F.unfold(work, kernel_size=patch, stride=patch)[0].T  # [N, D]
    mean = data.mean(dim=0)
    u, s, vh = torch.linalg.svd(data - mean, full_matrices=False)
    floor = (s[0] if s.numel() else 0.0) * max(data.shape) * torch.finfo(torch.float64).eps
    rank = int((s > floor).sum()) if s.numel() else 0
    if rank == 0:
        raise fail(
            call,
            "segments",
            f"every {patch}x{patch} patch of the image {describe(image)} is the same, so there is "
            "nothing to decompose",
            "use parcels (segments='slic' or a label map) or a smaller patch",
        )
    count = min(rank, int(settings["n_components"] or rank))  # type: ignore[call-overload]
    if method == "pca":
        coef, basis = u[:, :count] * s[:count], vh[:count]
    else:
        samples = data.shape[0]
        white = u[:, :count] * math.sqrt(samples)  # unit covariance
        rotation = fastica(white, int(settings["max_iter"]), float(settings["tol"]))  # type: ignore[call-overload, arg-type]
        coef = white @ rotation.T
        basis = rotation @ (s[:count, None] / math.sqrt(samples) * vh[:count])
        energy = coef.pow(2).sum(dim=0) * basis.pow(2).sum(dim=1)
        order = torch.argsort(energy, descending=True, stable=True)
        coef, basis = coef[:, order], basis[order]
    dtype, device = image.dtype, image.device
    return Components(
        mean=mean.to(dtype=dtype, device=device),
        coef=coef.to(dtype=dtype, device=device),
        basis=basis.to(dtype=dtype, device=device),
        channels=channels,
        size=(height, width),
        padded=padded,
        patch=patch,
    )


def fastica(white: Tensor, max_iter: int = 200, tol: float = 1e-4) -> Tensor:
    """Orthogonal unmixing ``W [r, r]`` of whitened ``white [N, r]``; sources are ``white @ W.T``.

    Symmetric FastICA with the log-cosh contrast (Hyvärinen 1999), started from the identity.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> sources = torch.rand(4000, 2, generator=g, dtype=torch.float64) - 0.5  # uniform
    >>> mixed = sources @ torch.tensor([[1.0, 0.6], [0.4, 1.0]], dtype=torch.float64)
    >>> centred = mixed - mixed.mean(0)
    >>> u, s, vh = torch.linalg.svd(centred, full_matrices=False)
    >>> found = (u * 4000**0.5) @ fastica(u * 4000**0.5).T
    >>> corr = torch.corrcoef(torch.cat([found, sources], 1).T)[:2, 2:].abs()
    >>> bool((corr.max(dim=1).values > 0.99).all())
    True
    """
    samples, size = white.shape
    w = torch.eye(size, dtype=white.dtype, device=white.device)
    for _ in range(max_iter):
        g = torch.tanh(white @ w.T)
        update = _decorrelate(g.T @ white / samples - (1 - g * g).mean(dim=0)[:, None] * w)
        change = float((torch.diagonal(update @ w.T).abs() - 1).abs().max())
        w = update
        if change < tol:
            break
    return w


def _decorrelate(w: Tensor) -> Tensor:
    """``(W W^T)^(-1/2) W``: the orthogonal matrix nearest to `w`."""
    values, vectors = torch.linalg.eigh(w @ w.T)
    return vectors @ torch.diag(values.clamp_min(1e-300).rsqrt()) @ vectors.T @ w
