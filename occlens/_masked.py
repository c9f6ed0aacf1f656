"""Masked images: the image seen through the tightest blurred mask that keeps the target score.

DNNBrain's ``MaskedImage.put_mask``, corrected. DNNBrain read an attribute that does not exist
inside its loop (``activ_loss``), so the loop crashed on its first erosion; and had it run, it
would have returned the first mask whose score fell *below* the goal rather than the last one
that kept it. It also fixed the image size at 224 and fed the model a gray image.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._errors import describe, fail
from ._fills import plan_fill
from ._morphology import convex_hull, erode
from ._ops import gaussian_blur
from ._scoring import Scorer, single_image
from ._types import ModelFn, TargetLike

__all__ = ["Masked", "masked_image"]

CALL = "masked_image"
RTOL = 1e-5
_LUMA = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray, which DNNBrain used


class Masked(NamedTuple):
    """The result of `masked_image`.

    * `image`: ``[C, H, W]``, ``soft * image + (1 - soft) * fill``.
    * `mask`: ``[H, W]`` bool, the eroded mask that was kept.
    * `soft`: ``[H, W]``, `mask` blurred by the Gaussian of `sigma`, in ``[0, 1]``.
    * `region`: ``[H, W]`` bool, the salient region: the convex hull of the pixels whose
      fluctuation exceeds the threshold. `mask` lies inside it.
    * `trace`: float64 ``[n]``, the score after ``0, 1, ... n - 1`` erosions; ``trace[0]`` is the
      baseline (the region's masked image).
    * `steps`: the erosions applied to `region` to give `mask`.
    * `clean`: the score of the unmasked image.

    >>> import torch, occlens as ol
    >>> image = torch.zeros(3, 16, 16)
    >>> image[:, 5:11, 5:11] = 1.0
    >>> model = lambda x: x[:, :, 7:9, 7:9].mean(dim=(1, 2, 3))[:, None]
    >>> out = ol.masked_image(model, image, 0, sigma=0.5)
    >>> out.image.shape, out.mask.dtype, out.steps, int(out.mask.sum())
    (torch.Size([3, 16, 16]), torch.bool, 1, 16)
    >>> [round(score, 3) for score in out.trace.tolist()]  # a second erosion falls below keep
    [1.0, 1.0, 0.826]
    """

    image: Tensor
    mask: Tensor
    soft: Tensor
    region: Tensor
    trace: Tensor
    steps: int
    clean: float

    @property
    def baseline(self) -> float:
        """The score of the image masked by the whole salient region, ``trace[0]``."""
        return float(self.trace[0])

    @property
    def score(self) -> float:
        """The score of `image`, ``trace[steps]``."""
        return float(self.trace[self.steps])

    @property
    def kept(self) -> float:
        """``score / baseline``: at least `keep` (up to rounding) unless nothing kept it."""
        return self.score / self.baseline


def masked_image(
    model_fn: ModelFn,
    image: Tensor,
    target: TargetLike,
    *,
    heat: Tensor | None = None,
    threshold: float = 1.0,
    sigma: float = 1.0,
    keep: float = 0.9,
    max_steps: int = 100,
    fill: object = "mean",
    gray: bool = False,
    batch_size: int | None = None,
) -> Masked:
    """Mask `image` down to the part that keeps `keep` of the target score.

    DNNBrain's ``MaskedImage`` (DNNBrain's names in brackets):

    1. The salient region: the fluctuation ``|m - mean(m)|`` of a map ``m [H, W]``, thresholded
       at `threshold` (``stdev_size_thr``) times its standard deviation, then filled to its
       convex hull. ``m`` is `heat` if given (an attribution map: occlusion, an upsampled
       activation, a saliency map reduced over channels), else the image's luminance
       (DNNBrain's pixel contrast).
    2. The mask is blurred by a Gaussian of `sigma` pixels (``filter_sigma``) and the image
       blended onto `fill`: ``soft * image + (1 - soft) * fill``. `fill` defaults to the image's
       mean colour, as in DNNBrain; it may be a number, a per-channel tensor or an image.
    3. The mask is eroded by a 3x3 square, step after step, while the score stays at least
       `keep` (``target_reduction_ratio``) times the baseline, the score of step 0. The
       tightest mask that still keeps it is returned; at most `max_steps` (``maxiteration``)
       erosions, stopping early at an empty mask or one that erosion no longer changes (borders
       are reflected, so a mask covering the whole image stays whole).

    With `gray`, the image is first turned into its luminance, copied into every channel, as
    DNNBrain did. Candidate masks are scored in batches of `batch_size` images (by default from
    a memory budget), and scoring stops at the first batch that falls below the goal. The
    baseline score must be positive. Goals are met up to a relative ``1e-5`` of rounding.

    Shapes: ``image [C, H, W]``, ``heat [H, W]`` -> `Masked` with ``image [C, H, W]`` and
    ``[H, W]`` masks.

    >>> import torch, occlens as ol
    >>> image = torch.zeros(3, 16, 16)
    >>> image[:, 5:11, 5:11] = 1.0  # a bright square
    >>> model = lambda x: x[:, :, 7:9, 7:9].mean(dim=(1, 2, 3))[:, None]  # reads its centre
    >>> out = ol.masked_image(model, image, 0, sigma=0.5)
    >>> out.region[5:11, 5:11].all().item(), out.region.sum().item()  # the square
    (True, 36)
    >>> out.steps, out.mask.sum().item(), out.kept >= 0.9  # one erosion: the centre 4x4
    (1, 16, True)
    """
    image = single_image(image, CALL)
    for name, value in (("threshold", threshold), ("sigma", sigma)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value >= 0)
        ):
            raise fail(CALL, name, f"got {describe(value)}", "pass a finite number >= 0")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise fail(
            CALL,
            "keep",
            f"got {describe(keep)}",
            "pass the fraction of the baseline score to keep, 0 < keep <= 1 (e.g. 0.9)",
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise fail(CALL, "max_steps", f"got {describe(max_steps)}", "pass an int >= 0")
    if not isinstance(gray, bool):
        raise fail(CALL, "gray", f"got {describe(gray)}", "pass True or False")
    source = _luminance(image)
    if gray:
        image = source.expand_as(image).clone()
    contrast = source[0] if heat is None else _check_heat(heat, image)
    fill_image = plan_fill(fill, image[None], CALL).static
    if fill_image is None:
        raise fail(
            CALL, "fill", f"got {describe(fill)}", "pass a number, a tensor, 'mean' or fills.blur"
        )
    fill_image = fill_image[0].expand_as(image)
    scorer = Scorer(model_fn, image, target, CALL, batch_size)
    region = _region(contrast, float(threshold))
    masks = _erosions(region, max_steps)

    def blend(chunk: Tensor) -> Tensor:
        soft = _soften(chunk, float(sigma), image.dtype)[:, None]
        return soft * image + (1 - soft) * fill_image

    trace: list[Tensor] = []
    goal = None
    steps = len(masks) - 1
    for start in range(0, len(masks), scorer.batch_size):
        scores = scorer.scores(masks[start : start + scorer.batch_size], blend)
        if goal is None:
            baseline = float(scores[0])
            if not baseline > 0:
                raise fail(
                    CALL,
                    "target",
                    f"the score of the masked salient region is {baseline:.4g}, and keep={keep} "
                    "of a score <= 0 is no goal",
                    "pick a target the image drives positively, or pass a heat map whose "
                    "salient region holds what drives it",
                )
            goal = keep * baseline - RTOL * abs(baseline)
        below = torch.nonzero(scores < goal)
        if below.numel():
            first = int(below[0])
            trace.append(scores[: first + 1])
            steps = start + first - 1
            break
        trace.append(scores)
    mask = masks[steps]
    soft = _soften(mask[None], float(sigma), image.dtype)[0]
    return Masked(
        image=soft * image + (1 - soft) * fill_image,
        mask=mask,
        soft=soft,
        region=region,
        trace=torch.cat(trace),
        steps=steps,
        clean=scorer.clean,
    )


def _luminance(image: Tensor) -> Tensor:
    """``[1, H, W]``: skimage's ``rgb2gray`` for 3 channels, else the channel mean."""
    if image.shape[0] == 3:
        weights = torch.tensor(_LUMA, dtype=image.dtype, device=image.device)
        return (image * weights[:, None, None]).sum(dim=0, keepdim=True)
    return image.mean(dim=0, keepdim=True)


def _check_heat(heat: object, image: Tensor) -> Tensor:
    size = tuple(image.shape[-2:])
    if not isinstance(heat, Tensor) or tuple(heat.shape) != size:
        raise fail(
            CALL,
            "heat",
            f"expected a map [H, W] = {list(size)} like the image, got {describe(heat)}",
            "reduce channels first (occlens.maps.max_channels) and resize a coarse map to the "
            "image (occlens.maps.upsample)",
        )
    if not heat.dtype.is_floating_point or not bool(torch.isfinite(heat).all()):
        raise fail(CALL, "heat", f"got {describe(heat)}", "pass a finite floating-point map")
    return heat.detach().to(device=image.device, dtype=image.dtype)


def _region(contrast: Tensor, threshold: float) -> Tensor:
    """The convex hull of the pixels whose fluctuation exceeds `threshold` standard deviations."""
    fluctuation = (contrast - contrast.mean()).abs()
    salient = fluctuation > fluctuation.std(correction=0) * threshold
    if not bool(salient.any()):
        raise fail(
            CALL,
            "heat",
            "no pixel stands out from the mean: the map is constant (or threshold too high)",
            "pass a heat map with structure, or lower threshold",
        )
    return convex_hull(salient)


def _erosions(region: Tensor, max_steps: int) -> Tensor:
    """``[n, H, W]``: the region and its erosions until `max_steps`, empty or a fixed point."""
    masks = [region]
    while len(masks) <= max_steps and bool(masks[-1].any()):
        eroded = erode(masks[-1])
        if torch.equal(eroded, masks[-1]):  # the whole image: borders do not erode
            break
        masks.append(eroded)
    return torch.stack(masks)


def _soften(masks: Tensor, sigma: float, dtype: torch.dtype) -> Tensor:
    soft = masks.to(dtype)
    return gaussian_blur(soft, sigma).clamp(0, 1) if sigma > 0 else soft
