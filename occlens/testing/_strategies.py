"""Hypothesis strategies for property tests: images, small CNNs and targets.

They are meant for occlens's own tests and for users who property-test their pipelines. Each
validates its arguments when called (raising `OcclensError`), not when drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import strategies as st
from torch import Tensor

from .. import targets as T
from .._errors import describe, fail
from .._targets import TargetBase
from ._geometry import output_size
from ._smallcnn import SmallCNN
from ._stages import RELU_SPELLINGS, ConvStage, PoolStage, ResidualStage, Stage, stage_paths

__all__ = ["images", "small_cnns", "targets_for"]

_SEEDS = st.integers(0, 2**32 - 1)
_IMAGE_KINDS = ("uniform", "normal", "constant", "blocky")


def _positive(value: object, call: str, argument: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise fail(call, argument, f"got {describe(value)}", f"pass an int >= {low}")
    return value


def images(
    *,
    channels: int = 3,
    min_size: int = 8,
    max_size: int = 24,
    batch: int | st.SearchStrategy[int] | None = None,
) -> st.SearchStrategy[Tensor]:
    """Float32 images ``[C, H, W]``, or batches ``[B, C, H, W]`` when `batch` is given.

    ``H`` and ``W`` are drawn independently from ``min_size..max_size``; `batch` is an ``int`` or
    a strategy of ``int`` s. The pixels come from a drawn seed and are one of: uniform in
    ``[0, 1)``, standard normal clipped to ``[-3, 3]``, a constant in ``[-1, 1]``, or blocky
    (4x4 blocks of uniform noise, which makes ties for max pools). All values are finite.

    >>> from hypothesis import given
    >>> from occlens import testing
    >>> @given(testing.images(channels=1, min_size=5, max_size=6, batch=2))
    ... def test(x):
    ...     assert x.shape[:2] == (2, 1) and 5 <= x.shape[2] <= 6 and x.isfinite().all()
    >>> test()
    """
    call = "images"
    _positive(channels, call, "channels")
    _positive(min_size, call, "min_size")
    _positive(max_size, call, "max_size")
    if max_size < min_size:
        raise fail(
            call,
            "max_size",
            f"{max_size} is below min_size={min_size}",
            "pass min_size <= max_size",
        )
    if isinstance(batch, st.SearchStrategy) or batch is None:
        batches = batch
    else:
        batches = st.just(_positive(batch, call, "batch"))
    return _images(channels, min_size, max_size, batches)


@st.composite
def _images(draw, channels: int, min_size: int, max_size: int, batches) -> Tensor:
    height = draw(st.integers(min_size, max_size))
    width = draw(st.integers(min_size, max_size))
    shape: tuple[int, ...] = (channels, height, width)
    if batches is not None:
        shape = (_positive(draw(batches), "images", "batch"), *shape)
    kind = draw(st.sampled_from(_IMAGE_KINDS))
    rng = torch.Generator().manual_seed(draw(_SEEDS))
    if kind == "uniform":
        return torch.rand(shape, generator=rng, dtype=torch.float32)
    if kind == "normal":
        return torch.randn(shape, generator=rng, dtype=torch.float32).clamp(-3.0, 3.0)
    if kind == "constant":
        return torch.full(shape, draw(st.floats(-1.0, 1.0, width=32)), dtype=torch.float32)
    low = (*shape[:-2], -(-height // 4), -(-width // 4))
    blocks = torch.rand(low, generator=rng, dtype=torch.float32)
    blocky = blocks.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)
    return blocky[..., :height, :width].contiguous()


def small_cnns(
    *,
    in_channels: int = 3,
    min_input: int = 8,
    num_classes: int = 3,
    max_stages: int = 4,
    max_channels: int = 6,
    residual: bool = True,
    pools: bool = True,
    batchnorm: bool = True,
    relus: Sequence[str] = RELU_SPELLINGS,
) -> st.SearchStrategy[SmallCNN]:
    """Random `SmallCNN` s, valid for every input of at least ``min_input x min_input``.

    A net has 1..`max_stages` stages: convs (kernel 1-5, stride 1-2, padding 0-2 but at most
    ``dilation * (kernel - 1)``, dilation 1-2, optional batch norm), max/average pools (kernel 2-3,
    stride 1-2, some with padding or ``ceil_mode``) when `pools`, and residual blocks (identity
    or 1x1 projection shortcut, ``+`` or ``+=``) when `residual`. Each ReLU takes a spelling from
    `relus` (default: all of `RELU_SPELLINGS`). The weights come from a drawn seed; the model is
    in eval mode. ``occlens.layer(model, "features")`` gives its feature map, and
    ``model.receptive_box(y, x, (H, W))`` the input box each unit can see.

    >>> import torch
    >>> from hypothesis import given, settings
    >>> from occlens import testing
    >>> @settings(max_examples=5, deadline=None)
    ... @given(testing.small_cnns(min_input=6), testing.images(min_size=6, max_size=9, batch=2))
    ... def test(model, x):
    ...     assert model(x).shape == (2, 3)
    >>> test()
    """
    call = "small_cnns"
    _positive(in_channels, call, "in_channels")
    _positive(min_input, call, "min_input")
    _positive(num_classes, call, "num_classes")
    _positive(max_stages, call, "max_stages")
    _positive(max_channels, call, "max_channels")
    spellings = tuple(relus) if isinstance(relus, Sequence) and not isinstance(relus, str) else ()
    if not spellings or any(s not in RELU_SPELLINGS for s in spellings):
        raise fail(
            call, "relus", f"got {describe(relus)}", f"pass a non-empty subset of {RELU_SPELLINGS}"
        )
    kinds = ("conv", *(("pool",) if pools else ()), *(("residual",) if residual else ()))
    options = (in_channels, min_input, num_classes, max_stages, max_channels, batchnorm, spellings)
    return _small_cnns(kinds, *options)


@st.composite
def _small_cnns(
    draw, kinds, in_channels, min_input, num_classes, max_stages, max_channels, bn, spellings
) -> SmallCNN:
    stages: list[Stage] = []
    channels, size = in_channels, min_input
    for _ in range(draw(st.integers(1, max_stages))):
        kind = draw(st.sampled_from(kinds))
        out = draw(st.integers(1, max_channels))
        if kind == "conv":
            stage: Stage = _conv(draw, out, size, bn and draw(st.booleans()), spellings)
        elif kind == "pool":
            stage = _pool(draw, size)
        else:
            stage = _residual(draw, out, channels, bn and draw(st.booleans()), spellings)
        stages.append(stage)
        size = output_size(stage_paths(stage)[0], size)
        if not isinstance(stage, PoolStage):
            channels = stage.out_channels
    seed = draw(_SEEDS)
    return SmallCNN(stages, in_channels=in_channels, num_classes=num_classes, key=seed)


def _conv(draw, out: int, size: int, batchnorm: bool, spellings) -> ConvStage:
    """A conv that fits an input of length `size`, its padding at most its reach."""
    dilation = draw(st.integers(1, 2))
    # A kernel fits when some allowed padding (<= 2 and <= its reach) makes the input long enough.
    fits = [
        k for k in range(1, 6) if size + 2 * min(2, dilation * (k - 1)) >= dilation * (k - 1) + 1
    ]
    kernel = draw(st.sampled_from(fits))
    reach = dilation * (kernel - 1)
    low = max(0, -(-(reach + 1 - size) // 2))
    padding = draw(st.integers(low, min(2, reach)))
    stride = draw(st.integers(1, 2))
    relu = draw(st.sampled_from(spellings))
    return ConvStage(out, kernel, stride, padding, dilation, batchnorm, relu)


def _pool(draw, size: int) -> PoolStage:
    """A pool that fits an input of length `size`; PyTorch allows padding up to kernel // 2."""
    kernel = draw(st.integers(2, 3))
    low = max(0, -(-(kernel - size) // 2))
    padding = draw(st.integers(low, kernel // 2))
    stride = draw(st.integers(1, 2))
    return PoolStage(
        draw(st.sampled_from(("max", "avg"))), kernel, stride, padding, draw(st.booleans())
    )


def _residual(draw, out: int, channels: int, batchnorm: bool, spellings) -> ResidualStage:
    kernel = draw(st.sampled_from((3, 1, 5)))
    stride = draw(st.integers(1, 2))
    dilation = draw(st.integers(1, 2))
    kernel2 = draw(st.sampled_from((3, 1)))
    out = channels if draw(st.booleans()) else out  # identity shortcuts need equal channels
    needs = stride != 1 or out != channels
    projection = needs or draw(st.booleans())
    inner = [s for s in spellings if s != "shared"]
    if "shared" in spellings and (not inner or draw(st.booleans())):
        relu: str | tuple[str, str] = "shared"
    else:
        relu = (draw(st.sampled_from(inner)), draw(st.sampled_from(inner)))
    add = draw(st.booleans())
    return ResidualStage(out, kernel, stride, dilation, kernel2, projection, batchnorm, relu, add)


def targets_for(
    output_shape: Sequence[int], *, shorthand: bool = False
) -> st.SearchStrategy[TargetBase | int | Tensor]:
    """Targets from `occlens.targets` that are valid for a model output of `output_shape`.

    ``[B, K]`` scores give `logit` and `prob`; ``[B, C, H, W]`` feature maps give `channel`
    (``"mean"``, ``"max"``, ``"sum"``), `unit` and `peak`. Indices are a shared ``int`` or one
    per sample (a ``LongTensor[B]``). With ``shorthand=True``, ``[B, K]`` also gives plain ``int``
    s and ``LongTensor[B]`` s, which occlens reads as `logit`.

    >>> import torch
    >>> from hypothesis import given
    >>> from occlens import testing
    >>> output = torch.randn(2, 4, 5, 5)
    >>> @given(testing.targets_for(output.shape))
    ... def test(target):
    ...     assert target(output).shape == (2,)
    >>> test()
    """
    shape = tuple(output_shape) if isinstance(output_shape, Sequence) else None
    if (
        shape is None
        or len(shape) not in (2, 4)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    ):
        raise fail(
            "targets_for",
            "output_shape",
            f"got {describe(output_shape)}",
            "pass the shape of a model output, [B, K] or [B, C, H, W], with sizes >= 1",
        )
    batch = shape[0]

    def index(size: int) -> st.SearchStrategy:
        per_sample = st.lists(st.integers(0, size - 1), min_size=batch, max_size=batch)
        return st.integers(0, size - 1) | per_sample.map(torch.tensor)

    if len(shape) == 2:
        k = shape[1]
        found: st.SearchStrategy = st.builds(T.logit, index(k)) | st.builds(T.prob, index(k))
        return found | index(k) if shorthand else found
    _, c, h, w = shape
    reduces = st.sampled_from(("mean", "max", "sum"))
    return (
        st.builds(T.channel, index(c), reduces)
        | st.builds(T.unit, index(c), index(h), index(w))
        | st.builds(T.peak, index(c))
    )
