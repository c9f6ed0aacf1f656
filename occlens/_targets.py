"""Targets: pick one score per sample out of a model output, ``Tensor[B, ...] -> Tensor[B]``.

Every index is 0-based (DNNBrain numbers channels from 1: subtract one). An index is a plain ``int``
(the same for every sample) or a ``LongTensor[B]`` (one per sample).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ._errors import OcclensError, describe, fail

__all__ = ["as_target", "channel", "logit", "peak", "prob", "unit"]

Index = int | Tensor
Reduce = Literal["mean", "max", "sum"]


def _rows(output: Tensor) -> Tensor:
    return torch.arange(output.shape[0], device=output.device)


def _pick(output: Tensor, index: Index) -> Tensor:
    """``output[b, index[b]]`` for every row b; an int index is shared by all rows."""
    if isinstance(index, int):
        return output[:, index]
    return output[_rows(output), index.to(output.device)]


class TargetBase:
    """Shared machinery of the built-in targets (an implementation detail; use the factories)."""

    def __call__(self, output: Tensor, /) -> Tensor:
        raise NotImplementedError

    def resolve(self, clean_output: Tensor) -> TargetBase:
        """The target to hold fixed while the input is perturbed (see `peak`)."""
        return self

    def select(self, row: int) -> TargetBase:
        """This target for sample `row` alone, with every per-sample index turned into an int."""
        changes = {
            f.name: int(getattr(self, f.name)[row])
            for f in fields(self)  # type: ignore[arg-type]
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **changes)  # type: ignore[type-var]

    def tile(self, copies: int) -> TargetBase:
        """This target for `copies` stacked copies of the batch, ``[copies * B, ...]``."""
        changes = {
            f.name: getattr(self, f.name).repeat(copies)
            for f in fields(self)  # type: ignore[arg-type]
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **changes)  # type: ignore[type-var]

    def check(self, output: Tensor, call: str) -> None:
        """Raise `OcclensError` unless this target can score `output` (the clean model output)."""
        self._check_indices(output, call)

    def _check_indices(self, output: Tensor, call: str) -> None:
        raise NotImplementedError


def _check_rank(output: Tensor, call: str, target: object, ranks: Sequence[int], what: str) -> None:
    if output.ndim not in ranks:
        raise fail(
            call,
            "target",
            f"{target!r} needs a model output of shape {what}, got {describe(output)}",
            "pick a target that matches the output (channel/unit/peak for feature maps, "
            "logit/prob for [B, K] scores) or truncate the model with occlens.layer",
        )


def _check_index(output: Tensor, dim: int, index: Index, call: str, target: object, name: str):
    size = output.shape[dim]
    if isinstance(index, int):
        bad = not 0 <= index < size
    else:
        if index.ndim != 1 or index.shape[0] != output.shape[0]:
            raise fail(
                call,
                "target",
                f"{target!r} has per-sample {name} of shape {list(index.shape)} but the batch "
                f"holds {output.shape[0]} sample(s)",
                "give one index per sample (a LongTensor[B]) or a single int for all",
            )
        bad = bool(((index < 0) | (index >= size)).any())
    if bad:
        raise fail(
            call,
            "target",
            f"{target!r}: {name} out of range for a model output of shape "
            f"{list(output.shape)} (valid {name}: 0..{size - 1})",
            f"use a {name} in 0..{size - 1} (indices are 0-based)",
        )


@dataclass(frozen=True, eq=False)
class Logit(TargetBase):
    """Score = ``output[b, index]`` of a ``[B, K]`` output."""

    index: Index

    def __call__(self, output: Tensor, /) -> Tensor:
        return _pick(output, self.index)

    def _check_indices(self, output: Tensor, call: str) -> None:
        _check_rank(output, call, self, (2,), "[B, K]")
        _check_index(output, 1, self.index, call, self, "class")


@dataclass(frozen=True, eq=False)
class Prob(TargetBase):
    """Score = ``softmax(output, dim=1)[b, index]`` of a ``[B, K]`` output."""

    index: Index

    def __call__(self, output: Tensor, /) -> Tensor:
        return _pick(torch.softmax(output, dim=1), self.index)

    def _check_indices(self, output: Tensor, call: str) -> None:
        _check_rank(output, call, self, (2,), "[B, K]")
        _check_index(output, 1, self.index, call, self, "class")


_REDUCERS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda t: t.mean(dim=1),
    "max": lambda t: t.amax(dim=1),
    "sum": lambda t: t.sum(dim=1),
}


@dataclass(frozen=True, eq=False)
class Channel(TargetBase):
    """Score = ``reduce(output[b, index])`` over the spatial positions of a channel."""

    index: Index
    reduce: Reduce = "mean"

    def __call__(self, output: Tensor, /) -> Tensor:
        chosen = _pick(output, self.index)
        if chosen.ndim == 1:
            return chosen
        return _REDUCERS[self.reduce](chosen.flatten(1))

    def _check_indices(self, output: Tensor, call: str) -> None:
        _check_rank(output, call, self, (2, 3, 4, 5), "[B, C, ...]")
        _check_index(output, 1, self.index, call, self, "channel")


@dataclass(frozen=True, eq=False)
class Unit(TargetBase):
    """Score = ``output[b, channel, y, x]`` of a ``[B, C, H, W]`` feature map."""

    channel: Index
    y: Index
    x: Index

    def __call__(self, output: Tensor, /) -> Tensor:
        if all(isinstance(i, int) for i in (self.channel, self.y, self.x)):
            return output[:, self.channel, self.y, self.x]
        device = output.device
        rows = _rows(output)
        index = [torch.as_tensor(i, device=device) for i in (self.channel, self.y, self.x)]
        return output[(rows, *index)]

    def _check_indices(self, output: Tensor, call: str) -> None:
        _check_rank(output, call, self, (4,), "[B, C, H, W]")
        _check_index(output, 1, self.channel, call, self, "channel")
        _check_index(output, 2, self.y, call, self, "y")
        _check_index(output, 3, self.x, call, self, "x")


@dataclass(frozen=True, eq=False)
class Peak(TargetBase):
    """The unit of a channel where the clean input drives it most, then held fixed.

    Applied directly to an output it scores the channel's spatial maximum; occlens methods first
    call `resolve` on the clean output, which pins the location (a `Unit` per sample).
    """

    channel: Index

    def __call__(self, output: Tensor, /) -> Tensor:
        return Channel(self.channel, "max")(output)

    def resolve(self, clean_output: Tensor) -> TargetBase:
        maps = _pick(clean_output, self.channel).flatten(1)
        flat = maps.argmax(dim=1)
        width = clean_output.shape[-1]
        return Unit(self.channel, flat // width, flat % width)

    def _check_indices(self, output: Tensor, call: str) -> None:
        _check_rank(output, call, self, (4,), "[B, C, H, W]")
        _check_index(output, 1, self.channel, call, self, "channel")


@dataclass(frozen=True, eq=False)
class Custom(TargetBase):
    """A user function ``Tensor[B, ...] -> Tensor[B]``; it must treat every row alike."""

    fn: Callable[[Tensor], Tensor]

    def __call__(self, output: Tensor, /) -> Tensor:
        return self.fn(output)

    def select(self, row: int) -> TargetBase:
        return self

    def tile(self, copies: int) -> TargetBase:
        return self

    def _check_indices(self, output: Tensor, call: str) -> None:
        try:
            score = self.fn(output)
        except OcclensError:
            raise
        except (RuntimeError, TypeError, IndexError, ValueError) as error:
            raise fail(
                call,
                "target",
                f"the target function raised {type(error).__name__} on a model output of shape "
                f"{list(output.shape)}: {str(error).splitlines()[0] if str(error) else ''}",
                "make it map Tensor[B, ...] to one score per sample, Tensor[B]",
            ) from error
        if not isinstance(score, Tensor) or score.shape != output.shape[:1]:
            raise fail(
                call,
                "target",
                f"the target function returned {describe(score)} for a model output of shape "
                f"{list(output.shape)}, not one score per sample [{output.shape[0]}]",
                "return a tensor of shape [B], e.g. lambda out: out[:, 3]",
            )


def _as_index(value: object, what: str) -> Index:
    if isinstance(value, (bool, np.bool_)):
        raise fail(what, "index", f"got the bool {value}", "pass an int or a LongTensor[B]")
    if isinstance(value, numbers.Integral):  # int, and numpy's integer scalars
        return int(value)
    if isinstance(value, np.ndarray):  # e.g. labels from a numpy pipeline
        if value.dtype.kind not in "iu":
            raise fail(
                what, "index", f"got {describe(value)}", "pass integer indices (a LongTensor[B])"
            )
        value = torch.from_numpy(value.astype(np.int64))
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise fail(
                what, "index", f"got {describe(value)}", "pass integer indices (a LongTensor[B])"
            )
        if value.ndim == 0:
            return int(value)
        if value.ndim != 1:
            raise fail(what, "index", f"got {describe(value)}", "pass one index per sample, [B]")
        return value.long()
    if (
        isinstance(value, Sequence)
        and value
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    ):
        return torch.tensor([int(v) for v in value], dtype=torch.long)
    raise fail(
        what, "index", f"cannot use {describe(value)} as an index", "pass an int or a LongTensor[B]"
    )


def logit(index: int | Sequence[int] | Tensor) -> TargetBase:
    """Target the raw score (logit) of class `index` in a ``[B, K]`` output.

    ``int``s and ``LongTensor[B]`` passed as a target are shorthand for this.

    >>> import torch
    >>> from occlens import targets as T
    >>> T.logit(1)(torch.tensor([[0.5, 2.0], [1.0, -1.0]]))
    tensor([ 2., -1.])
    >>> T.logit(torch.tensor([0, 1]))(torch.tensor([[0.5, 2.0], [1.0, -1.0]]))
    tensor([ 0.5000, -1.0000])
    """
    return Logit(_as_index(index, "logit"))


def prob(index: int | Sequence[int] | Tensor) -> TargetBase:
    """Target the softmax probability of class `index` in a ``[B, K]`` output.

    >>> import torch
    >>> from occlens import targets as T
    >>> T.prob(0)(torch.tensor([[0.0, 0.0]]))
    tensor([0.5000])
    """
    return Prob(_as_index(index, "prob"))


def channel(index: int | Sequence[int] | Tensor, reduce: Reduce = "mean") -> TargetBase:
    """Target channel `index` of a ``[B, C, ...]`` feature map, reduced over space.

    `reduce` is ``"mean"`` (DNNBrain's default metric), ``"max"`` or ``"sum"``.

    >>> import torch
    >>> from occlens import targets as T
    >>> fmap = torch.arange(8.0).reshape(1, 2, 2, 2)
    >>> T.channel(1, reduce="max")(fmap), T.channel(1)(fmap)
    (tensor([7.]), tensor([5.5000]))
    """
    if reduce not in _REDUCERS:
        raise fail("channel", "reduce", f"got {reduce!r}", f"use one of {sorted(_REDUCERS)}")
    return Channel(_as_index(index, "channel"), reduce)


def unit(channel: int | Tensor, y: int | Tensor, x: int | Tensor) -> TargetBase:
    """Target the single unit ``(channel, y, x)`` of a ``[B, C, H, W]`` feature map.

    >>> import torch
    >>> from occlens import targets as T
    >>> T.unit(1, 0, 1)(torch.arange(8.0).reshape(1, 2, 2, 2))
    tensor([5.])
    """
    return Unit(_as_index(channel, "unit"), _as_index(y, "unit"), _as_index(x, "unit"))


def peak(channel: int | Sequence[int] | Tensor) -> TargetBase:
    """Target the unit of `channel` that the clean input activates most, held fixed.

    occlens methods resolve the location once on the clean input and keep it while they perturb
    the input, so an occluder that moves the peak elsewhere still counts against this unit.

    >>> import torch
    >>> from occlens import targets as T
    >>> fmap = torch.zeros(1, 1, 3, 3); fmap[0, 0, 2, 1] = 4.0
    >>> T.peak(0).resolve(fmap)
    Unit(channel=0, y=tensor([2]), x=tensor([1]))
    """
    return Peak(_as_index(channel, "peak"))


def as_target(target: object, call: str) -> TargetBase:
    """Turn a target argument (a Target, a function, an int, ints, a LongTensor, numpy integers)
    into a Target."""
    if isinstance(target, TargetBase):
        return target
    indices = (numbers.Integral, np.bool_, np.ndarray, Tensor, Sequence)
    if isinstance(target, indices) and not isinstance(target, (str, bytes)):
        try:
            return Logit(_as_index(target, call))
        except ValueError as error:
            raise fail(
                call,
                "target",
                f"cannot use {describe(target)} as a target",
                "pass a class index, a LongTensor[B] of indices, or a target from occlens.targets",
            ) from error
    if callable(target):
        return Custom(target)  # type: ignore[arg-type]
    raise fail(
        call,
        "target",
        f"cannot use {describe(target)} as a target",
        "pass a class index, a LongTensor[B] of indices, or a target from occlens.targets",
    )
