"""Score many edited copies of one image: the engine behind `masked_image` and `minimal_image`.

Candidates are described compactly (a selection of parcels, a mask) and turned into images one
batch at a time, so memory holds one batch of images however many candidates there are. Batches
hold at most `batch_size` images, spread evenly over a round; the last one is padded with copies
of its first image so that rounds of the same length make calls of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import clean_forward, image_batch, model_errors, optional_positive_int
from ._errors import describe, fail
from ._memory import auto_chunk, default_budget
from ._targets import as_target
from ._types import ModelFn, TargetLike

__all__ = ["Scorer", "single_image"]


def single_image(image: object, call: str) -> Tensor:
    """Check ``image [C, H, W]`` (one image; these searches are per image)."""
    batch, single = image_batch(image, call, "image")
    if not single:
        raise fail(
            call,
            "image",
            f"expected one image [C, H, W], got a batch {describe(image)}",
            "call it once per image, with x[i] (the search and its result are per image)",
        )
    return batch[0].detach()  # results are images, not graphs: the input's autograd stays out


class Scorer:
    """The target score of edited copies of one image, batched through the model."""

    def __init__(
        self, model_fn: ModelFn, image: Tensor, target: TargetLike, call: str, batch_size: object
    ) -> None:
        optional_positive_int(batch_size, call, "batch_size")
        batch = image[None]
        output, work = clean_forward(
            model_fn, batch, call, measure=batch_size is None, argument="image"
        )
        goal = as_target(target, call)
        goal.check(output, call)
        self.goal = goal.resolve(output).select(0)
        self.model_fn = model_fn
        self.call = call
        self.image = image
        if batch_size is None:
            image_bytes = image.nbytes
            activations = work.bytes or 64 * image_bytes
            batch_size = auto_chunk(
                activations, activations + 4 * image_bytes, default_budget(image.device),
                image.device, 10**9,
            )  # fmt: skip
        self.batch_size = int(batch_size)  # type: ignore[call-overload]
        self.clean = float(self.goal(output)[0])
        self.calls = 0  # images scored after the clean one

    def scores(self, items: Tensor, make: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """float64 ``[n]`` scores of the images ``make(items[i])``, built a batch at a time.

        Without `make`, `items` are the images ``[n, C, H, W]`` themselves.
        """
        count = items.shape[0]
        rounds = max(1, math.ceil(count / self.batch_size))
        size = min(self.batch_size, math.ceil(count / rounds))
        out = []
        with torch.no_grad():
            for start in range(0, count, size):
                chunk = items[start : start + size]
                short = size - chunk.shape[0]
                if short:
                    chunk = torch.cat([chunk, chunk[:1].expand(short, *chunk.shape[1:])])
                images = chunk if make is None else make(chunk)
                with model_errors(self.call, images):
                    scores = self.goal(self.model_fn(images))
                out.append(scores[: size - short])
        self.calls += count
        return torch.cat(out).detach().to(torch.float64)
