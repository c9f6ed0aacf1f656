"""The images that drive a unit most (or least): `top_k`, DNNBrain's ``dnn_topstim``, streamed.

The images pass through the model batch by batch. A running top-k of at most `k` entries is merged
with each batch's scores by a stable sort, so memory stays constant however long the stream is,
and ties go to the image seen first: the running entries precede the batch, and among equal
scores both keep increasing stream positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields, is_dataclass
from typing import Literal, NamedTuple, cast

import torch
from torch import Tensor

from ._checks import check_model, check_output, image_batch, model_errors, optional_positive_int
from ._errors import OcclensError, describe, fail
from ._memory import auto_chunk, default_budget, measure_forward
from ._progress import progress as progress_bar
from ._targets import Channel, Custom, Peak, TargetBase, Unit, as_target
from ._types import ModelFn, TargetLike

__all__ = ["TopK", "top_k"]

CALL = "top_k"
_REDUCES = ("max", "mean", "min")
Reduce = Literal["max", "mean", "min"]


class TopK(NamedTuple):
    """The result of `top_k`, best first (for ``largest=False``: lowest first).

    * `indices`: ``LongTensor[k]``, each image's position in the stream (0-based, counted over
      every image of every batch).
    * `scores`: ``Tensor[k]``, their scores.
    * `locations`: ``LongTensor[k, 2]``, the ``(y, x)`` of the unit that peaks in the scored
      channel of a ``[B, C, H, W]`` feature map; ``-1`` where the score has no location
      (logits, probabilities, functions).

    >>> import torch, occlens as ol
    >>> x = torch.zeros(3, 1, 2, 2)
    >>> x[2, 0, 1, 0] = 4.0
    >>> best = ol.top_k(lambda t: t, x, 0, k=1)  # the "feature map" is the image itself
    >>> best.indices.tolist(), best.scores.tolist(), best.locations.tolist()
    ([2], [4.0], [[1, 0]])
    """

    indices: Tensor
    scores: Tensor
    locations: Tensor


def top_k(
    model_fn: ModelFn,
    images: Tensor | Iterable[object],
    target: TargetLike,
    k: int,
    *,
    reduce: Reduce | None = None,
    largest: bool = True,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> TopK:
    """The `k` images with the highest (``largest=False``: lowest) score, and where units peak.

    `images` is a tensor ``[N, C, H, W]`` or an iterable of batches, read once, in order: each
    element is a batch ``[b, C, H, W]`` or one image ``[C, H, W]``, or a tuple or list whose first
    item is one (as a ``DataLoader`` or a ``Dataset`` yields ``(images, labels)``; the rest is
    ignored). Only the running top `k` is kept, never past batches or all scores.

    `target` picks the score:

    * an ``int`` ``c`` on a ``[B, C, H, W]`` output is channel ``c``, reduced over space by
      `reduce`: ``"max"`` (DNNBrain's ``dnn_topstim``, spatial max pooling), ``"mean"`` or
      ``"min"``. The default is ``"max"``, and ``"min"`` for ``largest=False``: the RF-mapping
      script's top-N by spatial max and bottom-N by spatial min. The location is the argmax
      (argmin for ``"min"``), the first in row-major order on ties.
    * an ``int`` on a ``[B, K]`` output is the logit of class ``c``.
    * any target of `occlens.targets` or a function ``out -> Tensor[B]`` is scored as is; set its
      reduction there (``T.channel(c, reduce="mean")``), not with `reduce`. A ``channel`` or
      ``peak`` target reports its channel's argmax, a ``unit`` its own ``(y, x)``.

    Indices are 0-based (DNNBrain counts channels from 1). Ties go to the lower stream index.
    `batch_size` caps the images per model call (a tensor's default comes from the memory budget;
    a stream's batches are used as they come). `progress` shows a bar (``None``: long runs on a
    terminal). The model is run without autograd and never changed; it must be in eval mode if
    it has BatchNorm or Dropout.

    >>> import torch
    >>> fmap = lambda x: x[:, :1]  # the "feature map" is the first input channel
    >>> x = torch.zeros(4, 2, 3, 3)
    >>> x[1, 0, 2, 1], x[3, 0, 0, 2], x[2, 0, 1, 1] = 5.0, 9.0, -1.0
    >>> best = top_k(fmap, x, 0, k=2)
    >>> best.indices, best.scores, best.locations
    (tensor([3, 1]), tensor([9., 5.]), tensor([[0, 2], [2, 1]]))
    >>> top_k(fmap, [x[:3], (x[3:], "labels")], 0, k=1, largest=False).indices
    tensor([2])
    """
    _check_options(k, reduce, largest, progress)
    optional_positive_int(batch_size, CALL, "batch_size")
    goal = _goal(target, reduce)
    if isinstance(images, Tensor):
        stream, total = _tensor_stream(model_fn, images, k, batch_size)
        size, unit = None, "images"
    else:
        (stream, total), size, unit = _iterate(images), batch_size, "batches"
    best, seen = None, 0
    with torch.no_grad(), progress_bar(total, f"top_k ({unit})", progress) as advance:
        for number, element in enumerate(stream):
            if unit == "images":  # a slice of the checked tensor
                batch = cast(Tensor, element)
            else:
                batch = _element(element, number)
                _check_model(model_fn, batch, f"images[{number}]")
            step = size or batch.shape[0]
            for start in range(0, batch.shape[0], step):
                part = batch[start : start + step]
                scores, locations = _scores(model_fn, part, goal, reduce, largest)
                best = _merge(best, scores, locations, seen, k, largest)
                seen += len(part)
            advance(batch.shape[0] if unit == "images" else 1)
    if best is None or seen < k:
        raise fail(
            CALL,
            "k",
            f"k={k} but the stream held only {seen} image(s)",
            "use k <= the number of images, or pass more images",
        )
    return best


def _check_options(k: object, reduce: object, largest: object, progress: object) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise fail(CALL, "k", f"got {describe(k)}", "pass a whole number k >= 1")
    if reduce is not None and reduce not in _REDUCES:
        raise fail(CALL, "reduce", f"got {describe(reduce)}", f"use one of {_REDUCES} or None")
    if not isinstance(largest, bool):
        raise fail(CALL, "largest", f"got {describe(largest)}", "pass True or False")
    if progress is not None and not isinstance(progress, bool):
        raise fail(CALL, "progress", f"got {describe(progress)}", "pass True, False or None (auto)")


def _goal(target: object, reduce: object) -> int | TargetBase:
    """An int (a channel, or a class for ``[B, K]`` outputs) or a target shared by all images."""
    if isinstance(target, int) and not isinstance(target, bool):
        if target < 0:
            raise fail(CALL, "target", f"got {target}", "indices are 0-based and non-negative")
        return target
    goal = as_target(target, CALL)
    if is_dataclass(goal) and any(isinstance(getattr(goal, f.name), Tensor) for f in fields(goal)):
        raise fail(
            CALL,
            "target",
            f"{goal!r} holds per-image indices, which cannot follow a stream",
            "pass one int, or a target built from ints, the same for every image",
        )
    if reduce is not None:
        raise fail(
            CALL,
            "reduce",
            f"reduce={reduce!r} only applies to a channel index, not to the target {goal!r}",
            "set the reduction in the target, e.g. T.channel(c, reduce='mean')",
        )
    return goal


def _tensor_stream(
    model_fn: ModelFn, images: Tensor, k: int, batch_size: int | None
) -> tuple[tuple[Tensor, ...], int]:
    """A checked tensor ``[N, C, H, W]`` in slices of `batch_size` (default: from the budget)."""
    if images.ndim == 3:
        raise fail(
            CALL,
            "images",
            f"expected a batch [N, C, H, W], got one image {describe(images)}",
            "pass a batch (x[None]), or a list of images",
        )
    whole = image_batch(images, CALL, "images")[0]
    if k > whole.shape[0]:
        raise fail(
            CALL, "k", f"k={k} but images holds {whole.shape[0]}", "use k <= the image count"
        )
    _check_model(model_fn, whole, "images")
    return torch.split(whole, batch_size or _auto_batch(model_fn, whole)), whole.shape[0]


def _iterate(images: object) -> tuple[Iterator[object], int]:
    """One iterator over the stream (made once: a DataLoader starts its workers per iterator)
    and its number of batches, 0 where unknown."""
    try:
        if isinstance(images, (str, bytes, dict)):
            raise TypeError
        stream = iter(images)  # type: ignore[call-overload]
    except TypeError:
        what = f"a {type(images).__name__}" if isinstance(images, dict) else describe(images)
        raise fail(
            CALL,
            "images",
            f"expected images, got {what}",
            "pass a tensor [N, C, H, W] or an iterable of batches (a DataLoader)",
        ) from None
    try:
        return stream, len(images)  # type: ignore[arg-type]
    except TypeError:
        return stream, 0


def _element(element: object, number: int) -> Tensor:
    """The image batch of one stream element (the first item of a tuple or list)."""
    if isinstance(element, (tuple, list)) and element:
        element = element[0]
    if not isinstance(element, Tensor):
        raise fail(
            CALL,
            f"images[{number}]",
            f"the stream yielded {describe(element)}",
            "yield image tensors [b, C, H, W] or [C, H, W], or (images, labels) tuples",
        )
    return image_batch(element, CALL, f"images[{number}]")[0]


def _check_model(model_fn: ModelFn, batch: Tensor, argument: str) -> None:
    """`check_model`, with its dtype/device errors naming `argument` (it names ``x``)."""
    try:
        check_model(model_fn, batch, CALL)
    except OcclensError as error:
        text = str(error)
        if text.startswith(f"{CALL}(x)"):
            raise OcclensError(f"{CALL}({argument}){text[len(CALL) + 3 :]}") from None
        raise


def _auto_batch(model_fn: ModelFn, batch: Tensor) -> int:
    """Images per model call for a tensor input, from one image's measured forward pass."""
    with model_errors(CALL, batch[:1]):
        try:
            _, work = measure_forward(model_fn, batch[:1])
            allocated = work.bytes
        except (OcclensError, RuntimeError, TypeError, IndexError):
            raise
        except Exception:  # the counting mode may not follow every model: assume a deep net
            allocated = 64 * batch[0].nbytes
    budget = default_budget(batch.device)
    return auto_chunk(allocated, allocated + batch[0].nbytes, budget, batch.device, len(batch))


def _scores(
    model_fn: ModelFn, batch: Tensor, goal: int | TargetBase, reduce: str | None, largest: bool
) -> tuple[Tensor, Tensor]:
    """Scores ``[b]`` and locations ``LongTensor[b, 2]`` of one model call."""
    with model_errors(CALL, batch):
        out = check_output(model_fn(batch), batch, CALL)
    if isinstance(goal, int):
        if out.ndim == 4:
            if goal >= out.shape[1]:
                raise fail(
                    CALL,
                    "target",
                    f"channel {goal} out of range for a feature map {describe(out)}",
                    f"use a channel in 0..{out.shape[1] - 1} (indices are 0-based)",
                )
            how = reduce or ("max" if largest else "min")
            maps = out[:, goal].flatten(1)
            flat = maps.argmin(dim=1) if how == "min" else maps.argmax(dim=1)
            scores = maps.mean(dim=1) if how == "mean" else maps.gather(1, flat[:, None])[:, 0]
            return scores, torch.stack([flat // out.shape[-1], flat % out.shape[-1]], dim=1)
        if out.ndim != 2:
            raise fail(
                CALL,
                "target",
                f"an int target needs a feature map [B, C, H, W] (a channel) or scores [B, K] "
                f"(a class), but the model returned {describe(out)}",
                "pass a target from occlens.targets, or truncate the model with occlens.layer",
            )
        if reduce is not None:
            raise fail(
                CALL,
                "reduce",
                f"the model returns class scores {describe(out)}, which have no space to reduce",
                "leave reduce=None, or truncate the model at a feature map with occlens.layer",
            )
        goal = as_target(goal, CALL)
    if not isinstance(goal, Custom):
        goal.check(out, CALL)
    try:
        scores = goal(out)
    except (RuntimeError, TypeError, IndexError) as error:
        raise fail(
            CALL,
            "target",
            f"the target raised {type(error).__name__} on a model output {describe(out)}: "
            f"{str(error).splitlines()[0] if str(error) else ''}",
            "make the target map Tensor[B, ...] to Tensor[B]",
        ) from error
    if not isinstance(scores, Tensor) or scores.shape != out.shape[:1]:
        raise fail(
            CALL,
            "target",
            f"the target returned {describe(scores)} for a model output {describe(out)}",
            f"return one score per image, a tensor [{out.shape[0]}]",
        )
    return scores, _locations(out, goal)


def _locations(out: Tensor, goal: TargetBase) -> Tensor:
    rows = out.shape[0]
    if out.ndim == 4 and isinstance(goal, Unit):
        return torch.tensor([[goal.y, goal.x]], device=out.device).expand(rows, 2)
    if out.ndim == 4 and isinstance(goal, (Channel, Peak)):
        channel = goal.index if isinstance(goal, Channel) else goal.channel
        flat, width = out[:, channel].flatten(1).argmax(dim=1), out.shape[-1]
        return torch.stack([flat // width, flat % width], dim=1)
    return torch.full((rows, 2), -1, dtype=torch.long, device=out.device)


def _merge(
    best: TopK | None, scores: Tensor, locations: Tensor, seen: int, k: int, largest: bool
) -> TopK:
    """The best `k` of the running `best` and one call's scores (stream positions from `seen`)."""
    if bool(torch.isnan(scores).any()):
        bad = seen + int(torch.isnan(scores).nonzero()[0, 0])
        raise fail(
            CALL, "model_fn", f"the score of image {bad} is NaN", "check the model and that image"
        )
    new = TopK(seen + torch.arange(len(scores), device=scores.device), scores, locations.long())
    if best is not None:
        new = TopK(
            *(torch.cat([old.to(scores.device), part]) for old, part in zip(best, new, strict=True))
        )
    # Stable: among equal scores the earlier (lower) stream index stays first.
    order = new.scores.sort(descending=largest, stable=True).indices[:k]
    return TopK(*(part[order] for part in new))
