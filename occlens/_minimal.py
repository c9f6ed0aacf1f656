"""Minimal images: the fewest parcels (or components) of an image that keep its target score.

DNNBrain's ``MinimalParcelImage`` and ``MinimalComponentImage``, corrected: segmenters get their
arguments by keyword (see `occlens._parcels`), the PCA/ICA decompositions exist (see
`occlens._components`), and the search stops at a stated fraction of the clean score instead of
taking the best of the first ten prefixes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._components import Components, decompose
from ._errors import describe, fail
from ._fills import Uniform, plan_fill
from ._keys import generator
from ._parcels import SEGMENTERS, labels_from, relabel, segment
from ._scoring import Scorer, single_image
from ._types import Key, ModelFn, TargetLike

__all__ = ["Minimal", "minimal_image"]

CALL = "minimal_image"
METHODS = (*SEGMENTERS, "pca", "ica")
SEARCHES = ("greedy", "prefix")
RANKS = ("alone", "drop")
RTOL = 1e-5  # scores may differ by rounding between batch sizes


class Minimal(NamedTuple):
    """The result of `minimal_image`.

    * `image`: ``[C, H, W]``, the chosen parcels on the fill (components: the tiled mean patch
      plus the chosen components).
    * `parcels`: ``LongTensor[k]``, the chosen parcels in the order the search added them: label
      values of `labels`, or component numbers (0 = the first principal/independent component).
    * `mask`: ``[H, W]`` bool, the pixels of the chosen parcels; ``None`` for components.
    * `labels`: ``LongTensor[H, W]``, the parcel of every pixel; ``None`` for components.
    * `order`: ``LongTensor[K]``, every parcel ranked by its effect, strongest first.
    * `effects`: ``[K]``, the effect of each parcel of `order` (float64).
    * `curve`: ``[n + 1]``, the score with the first ``i`` parcels added, ``i = 0..n``
      (``curve[0]``: none). Greedy search stops when the goal is reached (``n = k``); prefix
      search scores every prefix of `order` (``n = K``).
    * `clean`, `score`: the target score of the image and of the minimal image.

    >>> import torch, occlens as ol
    >>> labels = torch.arange(4).reshape(2, 2).repeat_interleave(4, 0).repeat_interleave(4, 1)
    >>> model = lambda x: x[:, :, :4, :4].sum(dim=(1, 2, 3))[:, None]  # reads parcel 0
    >>> found = ol.minimal_image(model, torch.ones(3, 8, 8), 0, segments=labels, fill=0.0)
    >>> found.parcels.tolist(), found.order[0].item(), float(found.score), float(found.clean)
    ([0], 0, 48.0, 48.0)
    """

    image: Tensor
    parcels: Tensor
    mask: Tensor | None
    labels: Tensor | None
    order: Tensor
    effects: Tensor
    curve: Tensor
    clean: float
    score: float

    @property
    def kept(self) -> float:
        """``score / clean``, the fraction of the clean score the minimal image keeps."""
        return self.score / self.clean


class _Parcels:
    """Parcels of a dense label map ``[H, W]`` in ``0..K-1``, shown on a fill image."""

    def __init__(self, image: Tensor, dense: Tensor, fill: Tensor) -> None:
        self.image, self.dense, self.fill = image, dense, fill
        self.count = int(dense.max()) + 1

    def compose(self, chosen: Tensor) -> Tensor:
        pixels = chosen[:, self.dense]  # [n, H, W]
        return torch.where(pixels[:, None], self.image, self.fill)


class _Components:
    def __init__(self, parts: Components) -> None:
        self.parts = parts
        self.count = len(parts)

    def compose(self, chosen: Tensor) -> Tensor:
        return self.parts.compose(chosen)


def minimal_image(
    model_fn: ModelFn,
    image: Tensor,
    target: TargetLike,
    *,
    segments: str | Tensor = "slic",
    keep: float = 0.9,
    search: str = "prefix",
    rank: str = "drop",
    fill: object = None,
    options: dict[str, object] | None = None,
    max_parcels: int | None = None,
    batch_size: int | None = None,
    key: Key | None = None,
) -> Minimal:
    """The smallest set of parcels of `image` that keeps `keep` of its target score.

    DNNBrain's ``MinimalParcelImage`` / ``MinimalComponentImage``. The image is cut into parts:

    * `segments` = ``"slic"``, ``"felzenszwalb"`` or ``"quickshift"``: scikit-image superpixels
      (the ``segment`` extra: ``pip install "occlens[segment]"``) with DNNBrain's defaults, by
      keyword: slic ``n_segments=250, compactness=10, sigma=1``; felzenszwalb ``scale=100,
      sigma=0.5, min_size=50``; quickshift ``kernel_size=3, max_dist=6, ratio=0.5`` (its random
      tie-breaking needs `key`). `options` overrides or adds keyword arguments. The segmenter
      sees the image as pixels in ``[0, 1]`` (a normalised image is min-max rescaled first).
    * a label map ``LongTensor[H, W]``: your own parcels, any integer labels.
    * ``"pca"`` or ``"ica"``: additive components over ``p x p`` patches (see below); `options`
      takes ``patch=8``, ``n_components=None`` (all), and for ICA ``max_iter=200, tol=1e-4``.

    Parcels left out show `fill`: by default ``"mean"``, the image's mean colour; DNNBrain's
    black is ``fill=0.0`` for pixels in ``[0, 1]``; also a per-channel tensor, an image,
    ``fills.blur(sigma)`` or ``fills.uniform(lo, hi)`` with `key`. On black, a few superpixels
    cut out of the background make sharp-edged blobs that a network may take for an object, so
    the minimal image lands off the object; a mean fill adds no edges. A set of components is
    the image's mean patch, tiled, plus those components; the components of all ranks add up to
    the image. `fill` does not apply to components.

    Every parcel gets an effect, by `rank`: ``"drop"`` (default) how much the score falls when
    the parcel alone is filled in the full image, ``"alone"`` its score shown alone on the fill
    (DNNBrain's ``sort_parcel``). Then `search`:

    * ``"prefix"`` (default): score every prefix of the ranking (DNNBrain's search) and take the
      shortest that reaches ``keep * clean``; the curve covers all prefixes. ``2K + 1``
      evaluations for ``K`` parcels.
    * ``"greedy"``: start from nothing; at each step add the parcel that raises the score most
      (ties: the higher-ranked); stop once the score reaches ``keep * clean``. Up to ``K`` per
      step: slower, and with many small parcels liable to assemble an object-like blob from
      the background; it shines with few, large parcels (felzenszwalb).

    Candidates go through the model in batches (`batch_size`; by default from a memory budget).
    The clean score must be positive (a fraction of a negative logit is no goal: use
    ``targets.prob`` or a unit that responds). Goals are met up to a relative ``1e-5`` of rounding.
    If no set reaches the goal (`max_parcels`, or components left out), the best found is
    returned; compare `kept` with `keep`.

    Shapes: ``image [C, H, W]`` -> `Minimal` with ``image [C, H, W]``, ``mask [H, W]``.

    >>> import torch, occlens as ol
    >>> labels = torch.arange(16).reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)
    >>> model = lambda x: x[:, :, :4, :4].sum(dim=(1, 2, 3))[:, None]  # reads the top-left
    >>> found = ol.minimal_image(model, torch.ones(3, 8, 8), 0, segments=labels, keep=1.0, fill=0.0)
    >>> sorted(found.parcels.tolist()), found.kept
    ([0, 1, 4, 5], 1.0)
    >>> found.mask.sum().item()
    16
    """
    image = single_image(image, CALL)
    keep = _check_keep(keep)
    _check_choice(search, SEARCHES, "search")
    _check_choice(rank, RANKS, "rank")
    if max_parcels is not None and (
        isinstance(max_parcels, bool) or not isinstance(max_parcels, int) or max_parcels < 1
    ):
        raise fail(CALL, "max_parcels", f"got {describe(max_parcels)}", "pass an int >= 1 or None")
    method, user_labels = _check_segments(segments, image)
    if options is not None and not isinstance(options, dict):
        raise fail(CALL, "options", f"got {describe(options)}", "pass a dict of keyword arguments")
    if options and user_labels is not None:
        raise fail(
            CALL, "options", "a label map takes no options", "leave options out with a label map"
        )
    if fill is not None and method in ("pca", "ica"):
        raise fail(
            CALL,
            "fill",
            f"segments={method!r} adds components to the image's mean patch; there is no fill",
            "leave fill out, or use parcels",
        )
    fill_image = _fill(fill, image, key) if method not in ("pca", "ica") else None
    scorer = Scorer(model_fn, image, target, CALL, batch_size)
    if not scorer.clean > 0:
        raise fail(
            CALL,
            "target",
            f"the clean score is {scorer.clean:.4g}, and keep={keep} of a score <= 0 is no goal",
            "pick a target the image drives positively (a class it shows, targets.prob, or a "
            "responding unit)",
        )

    ids: Tensor | None
    parts: _Parcels | _Components
    if method in ("pca", "ica"):
        parts, ids, dense = _Components(decompose(image, method, options or {}, CALL)), None, None
    else:
        raw = (
            user_labels
            if user_labels is not None
            else segment(image, method, options or {}, key, CALL)
        )
        ids, dense = relabel(raw)
        parts = _Parcels(image, dense, fill_image)  # type: ignore[arg-type]
    count = parts.count
    goal = keep * scorer.clean - RTOL * abs(scorer.clean)
    order, effects = _rank(scorer, parts, rank)
    limit = count if max_parcels is None else min(max_parcels, count)
    if search == "prefix":
        chosen, curve = _prefix(scorer, parts, order, goal, limit)
    else:
        chosen, curve = _greedy(scorer, parts, order, goal, limit)
    picked = torch.zeros(1, count, dtype=torch.bool, device=image.device)
    picked[0, chosen] = True
    result = parts.compose(picked)[0]
    name = (lambda i: ids[i]) if ids is not None else (lambda i: i)
    return Minimal(
        image=result,
        parcels=name(chosen),
        mask=picked[0, dense] if dense is not None else None,
        labels=(user_labels if user_labels is not None else dense),
        order=name(order),
        effects=effects,
        curve=curve,
        clean=scorer.clean,
        score=float(curve[len(chosen)]),
    )


def _rank(scorer: Scorer, parts: _Parcels | _Components, rank: str) -> tuple[Tensor, Tensor]:
    """Parcels by effect, strongest first (ties: lower index first), and their effects."""
    count = parts.count
    device = scorer.image.device
    eye = torch.eye(count, dtype=torch.bool, device=device)
    if rank == "alone":
        effects = scorer.scores(eye, parts.compose)
    else:
        effects = scorer.clean - scorer.scores(~eye, parts.compose)
    order = torch.argsort(effects, descending=True, stable=True)
    return order.to(device), effects[order]


def _prefix(
    scorer: Scorer, parts: _Parcels | _Components, order: Tensor, goal: float, limit: int
) -> tuple[Tensor, Tensor]:
    count = parts.count
    device = scorer.image.device
    rank_of = torch.empty(count, dtype=torch.long, device=device)
    rank_of[order] = torch.arange(count, device=device)
    sizes = torch.arange(limit + 1, device=device)
    prefixes = rank_of[None, :] < sizes[:, None]  # [limit + 1, K]
    curve = scorer.scores(prefixes, parts.compose)
    reached = torch.nonzero(curve >= goal)
    size = int(reached[0]) if reached.numel() else int(torch.argmax(curve))
    return order[:size], curve


def _greedy(
    scorer: Scorer, parts: _Parcels | _Components, order: Tensor, goal: float, limit: int
) -> tuple[Tensor, Tensor]:
    count = parts.count
    device = scorer.image.device
    current = torch.zeros(count, dtype=torch.bool, device=device)
    curve = [float(scorer.scores(current[None], parts.compose)[0])]
    chosen: list[int] = []
    remaining = order.clone()  # candidates in rank order, so argmax breaks ties by rank
    while curve[-1] < goal and len(chosen) < limit:
        trials = current[None].repeat(remaining.numel(), 1)
        trials[torch.arange(remaining.numel(), device=device), remaining] = True
        scores = scorer.scores(trials, parts.compose)
        best = int(torch.argmax(scores))
        pick = int(remaining[best])
        chosen.append(pick)
        current[pick] = True
        curve.append(float(scores[best]))
        remaining = torch.cat([remaining[:best], remaining[best + 1 :]])
    if curve[-1] < goal:  # not reached within the limit: keep the best prefix of the path
        best = max(range(len(curve)), key=lambda i: (curve[i], -i))
        chosen, curve = chosen[:best], curve[: best + 1]
    return (
        torch.tensor(chosen, dtype=torch.long, device=device),
        torch.tensor(curve, dtype=torch.float64, device=device),
    )


def _check_keep(keep: object) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise fail(
            CALL,
            "keep",
            f"got {describe(keep)}",
            "pass the fraction of the clean score to keep, 0 < keep <= 1 (e.g. 0.9)",
        )
    return float(keep)


def _check_choice(value: object, choices: tuple[str, ...], argument: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise fail(
            CALL,
            argument,
            f"got {describe(value)}",
            f"use one of {', '.join(map(repr, choices))}",
        )


def _check_segments(segments: object, image: Tensor) -> tuple[str, Tensor | None]:
    if isinstance(segments, Tensor):
        return "labels", labels_from(segments, image, CALL)
    if isinstance(segments, str) and segments in METHODS:
        return segments, None
    raise fail(
        CALL,
        "segments",
        f"got {describe(segments)}",
        f"use one of {', '.join(map(repr, METHODS))} or a label map LongTensor[H, W]",
    )


def _fill(fill: object, image: Tensor, key: Key | None) -> Tensor:
    """The background image ``[C, H, W]`` parcels are shown on."""
    fill = "mean" if fill is None else fill
    plan = plan_fill(fill, image[None], CALL)
    if plan.static is not None:
        return plan.image(0).expand_as(image)
    if isinstance(plan.noise, Uniform):
        rng = generator(key, CALL, "fills.uniform")
        noise = torch.rand(image.shape, generator=rng, dtype=torch.float64)
        return (plan.noise.lo + (plan.noise.hi - plan.noise.lo) * noise).to(image)
    function: Callable = plan.function  # type: ignore[assignment]
    rng = generator(key, CALL, "the fill function") if key is not None else None
    mask = torch.ones(image.shape[-2:], dtype=torch.bool, device=image.device)
    out = function(image, mask, rng)
    if not isinstance(out, Tensor) or out.shape != image.shape:
        raise fail(
            CALL,
            "fill",
            f"the fill function returned {describe(out)} for an image {describe(image)}",
            "return an image of the same shape",
        )
    return out.to(image)
