"""Parcels: an image cut into regions by scikit-image's superpixel methods or by a label map.

The segmenters are DNNBrain's (``MinimalParcelImage.*_decompose``), called with keyword arguments
and DNNBrain's defaults. DNNBrain passed them positionally, so ``slic(image, 250, 10, 1)`` set
``max_num_iter=1`` instead of ``sigma=1``, and ``quickshift(image, 3, 6, 0.5)`` set
``ratio=3, kernel_size=6, max_dist=0.5``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from ._errors import describe, fail
from ._keys import generator
from ._types import Key

__all__ = ["SEGMENTERS", "labels_from", "relabel", "segment"]

# DNNBrain's defaults, by keyword.
SEGMENTERS: dict[str, dict[str, object]] = {
    "slic": {"n_segments": 250, "compactness": 10.0, "sigma": 1.0},
    "felzenszwalb": {"scale": 100.0, "sigma": 0.5, "min_size": 50},
    "quickshift": {"kernel_size": 3, "max_dist": 6.0, "ratio": 0.5},
}
EXTRA = 'pip install "occlens[segment]"'


def _skimage_segmentation(call: str, method: str) -> ModuleType:
    try:
        return importlib.import_module("skimage.segmentation")
    except ImportError:
        raise fail(
            call,
            "segments",
            f"segments={method!r} needs scikit-image, which is not installed",
            f"install the segment extra ({EXTRA}), or pass segments='pca', 'ica' or your own "
            "label map LongTensor[H, W]",
        ) from None


def _pixels(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` as the ``[H, W, C]`` float64 array in [0, 1] the segmenters expect.

    An image outside [0, 1] (a normalised one) is rescaled by its global min and max, as DNNBrain
    turns images into 8-bit pixels; a constant image becomes zeros.
    """
    array = image.detach().to("cpu", torch.float64)
    lo, hi = float(array.min()), float(array.max())
    if lo < 0.0 or hi > 1.0:
        array = (array - lo) / (hi - lo) if hi > lo else torch.zeros_like(array)
    return array.permute(1, 2, 0).numpy()


def segment(
    image: Tensor, method: str, options: dict[str, object], key: Key | None, call: str
) -> Tensor:
    """Labels ``LongTensor[H, W]`` in ``0..K-1`` from a scikit-image segmenter."""
    module = _skimage_segmentation(call, method)
    pixels = _pixels(image)
    kwargs = {**SEGMENTERS[method], **options}
    channels = pixels.shape[2]
    if channels == 1:
        pixels, kwargs["channel_axis"] = pixels[:, :, 0], None
        if method == "quickshift":  # quickshift needs a channel axis; it works on one channel
            pixels, kwargs["channel_axis"] = pixels[:, :, None], -1
    if method == "quickshift":
        if channels != 3:
            kwargs.setdefault("convert2lab", False)
        if "rng" not in kwargs:
            rng = generator(key, call, "segments='quickshift' (ties are broken at random)")
            kwargs["rng"] = int(torch.randint(0, 2**31 - 1, (), generator=rng))
    elif method == "slic" and channels not in (1, 3):
        kwargs.setdefault("convert2lab", False)
    try:
        labels = getattr(module, method)(pixels, **kwargs)
    except (TypeError, ValueError) as error:
        raise fail(
            call,
            "options",
            f"skimage.segmentation.{method} refused {kwargs}: {str(error).splitlines()[0]}",
            f"pass keyword arguments that skimage.segmentation.{method} accepts",
        ) from None
    return relabel(torch.from_numpy(np.asarray(labels, dtype=np.int64)))[1].to(image.device)


def relabel(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(ids, dense)``: the distinct labels in increasing order and the map numbered ``0..K-1``."""
    ids, dense = torch.unique(labels, sorted=True, return_inverse=True)
    return ids, dense.reshape(labels.shape)


def labels_from(value: Tensor, image: Tensor, call: str) -> Tensor:
    """Check a user label map against ``image [C, H, W]``; return it as int64 ``[H, W]``."""
    height, width = image.shape[-2:]
    if value.ndim != 2 or tuple(value.shape) != (height, width):
        raise fail(
            call,
            "segments",
            f"a label map must be [H, W] = [{height}, {width}], got {describe(value)}",
            "pass one integer label per pixel, e.g. from skimage.segmentation",
        )
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise fail(
            call,
            "segments",
            f"a label map must hold integers, got {describe(value)}",
            "convert it with labels.long()",
        )
    return value.to(device=image.device, dtype=torch.int64)
