"""Sliding-window occlusion, vectorised with ``torch.func.vmap`` over occluder positions.

For each image the engine evaluates ``1 + P`` rows: row 0 is the clean image, rows 1..P the
occluded ones, in chunks of equal size (the last one padded with clean rows). Every model call
therefore has the same batch size, and the clean score comes from the same kind of call as the
occluded ones: an occluder that cannot reach a unit gives a delta of exactly zero, bit for bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.func import vmap

from ._batching import quiet_vmap
from ._checks import clean_forward, image_batch, optional_positive_int, positive_pair
from ._errors import OcclensError, describe, fail
from ._fills import FillPlan, plan_fill
from ._grid import AGGREGATES, EDGES, Grid, axis, check_choice
from ._grid import aggregate as aggregate_deltas
from ._keys import generator
from ._memory import ForwardWork, auto_chunk, default_budget
from ._progress import progress as progress_bar
from ._targets import TargetBase, as_target
from ._types import Key, ModelFn, TargetLike

__all__ = ["occlusion"]

log = logging.getLogger("occlens")

CALL = "occlusion"
_NOISE_BLOCK = 64  # occluders per noise draw; fixed, so the stream never depends on chunk_size
ENGINES = ("auto", "batched", "incremental")
DECISION_BUDGET = 1 << 30  # bytes per call that engine="auto" assumes (`decision_chunk`)
LOGGED_OCCLUDERS = 64  # occluded images from which auto's clean pass logs its layers


def occlusion(
    model_fn: ModelFn,
    x: Tensor,
    target: TargetLike,
    *,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    fill: object = 0.0,
    edge: str = "fit",
    aggregate: str = "mean",
    box: tuple[int, int, int, int] | None = None,
    absolute: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    key: Key | None = None,
    progress: bool | None = None,
    engine: str = "auto",
) -> Tensor:
    """Occlusion map: how much the target score drops when a window of the image is covered.

    For each occluder position the delta is ``score(clean) - score(occluded)``; positive where
    covering the pixels lowers the score. The options reproduce the reference tools:

    * `window`, `stride`: ``int`` or ``(h, w)`` in pixels; `stride` defaults to `window`.
      DNNBrain orders both as ``(w, h)``: swap them when porting its settings.
    * `edge`: ``"fit"`` uses only windows that fit, ``floor((H - h) / s) + 1`` per axis (DNNBrain,
      xplique); ``"cover"`` adds a clipped last window, ``ceil((H - h) / s) + 1`` (Captum).
    * `aggregate`: ``"mean"`` over the windows covering each pixel (Captum), ``"sum"`` (xplique),
      ``"grid"`` one value per position (DNNBrain's discrepancy map), ``"center"`` each delta at its
      window's centre pixel only (the RF-mapping script).
    * `fill`: a number, a tensor (``[C]``, ``[C, 1, 1]``, ``[C, H, W]`` or ``[B, C, H, W]``),
      ``"mean"``, ``fills.uniform(lo, hi)`` (needs `key`), ``fills.blur(sigma)``, or a function
      ``(image [C, H, W], mask [H, W] bool, generator | None) -> image [C, H, W]``.
    * `box`: ``(y0, x0, y1, x1)``, half-open, keeps only occluders inside it (a unit's RF box).
    * `absolute`: take ``|delta|`` per occluder before aggregating (the RF-mapping script does).

    `target` is an int class, a ``LongTensor[B]`` (one per image) or a target from
    `occlens.targets`; `peak` targets are resolved on the clean image. `chunk_size` bounds the
    images per model call; by default it is chosen so that one call stays within
    `memory_budget` bytes and, on the CPU, near the caches. The same `key` gives bit-identical
    noise for every `chunk_size`, and bit-identical maps for every `chunk_size` of 2 or more
    where the backend rounds a row the same at every batch size (single-image calls take other
    CPU kernels; Intel MKL on AVX-512 CPUs needs ``MKL_CBWR=AUTO,STRICT`` in the environment).
    Elsewhere chunk sizes agree to float rounding.
    `progress` shows a progress bar (``None``: for long runs on a terminal).

    `engine`: ``"batched"`` re-runs the whole model on every occluded image; ``"incremental"``
    traces the model (an ``nn.Module``) with ``torch.fx`` and recomputes each layer only where
    the occluder changes it (Krypton's incremental inference), and for a unit target only
    inside the unit's receptive field; ``"auto"`` (the default) runs the incremental engine
    where its cost model predicts it is at least 10% faster, and goes straight to the batched
    engine when the run is too short to repay tracing the model, unless a log of the clean
    pass's layers already shows the incremental engine winning. It decides from the FLOPs,
    bytes, operators and layers of the clean pass, never from timings, `chunk_size` or
    `memory_budget`, so the same call always runs the same engine and gives the same bits
    (`occlens.explain_engine` shows the choice and why). Both are exact: they agree to float
    rounding (folding batch norm into the convolution before it changes the last bits).
    A model the incremental engine cannot run exactly (it does not trace, a layer is in
    training mode, a fill function) is run by the batched engine, with the reason logged at
    debug level on the ``"occlens"`` logger.

    Shapes: ``x [C, H, W] -> [H, W]`` and ``x [B, C, H, W] -> [B, H, W]``; with
    ``aggregate="grid"``, ``[n_rows, n_cols]`` / ``[B, n_rows, n_cols]``.

    >>> import torch, occlens as ol
    >>> model = lambda x: x[:, :, :2, :2].sum(dim=(1, 2, 3))[:, None]  # looks at the top-left
    >>> heat = ol.occlusion(model, torch.ones(3, 4, 4), 0, window=2, stride=2)
    >>> heat
    tensor([[12., 12.,  0.,  0.],
            [12., 12.,  0.,  0.],
            [ 0.,  0.,  0.,  0.],
            [ 0.,  0.,  0.,  0.]])
    >>> ol.occlusion(model, torch.ones(3, 4, 4), 0, window=2, stride=2, aggregate="grid")
    tensor([[12.,  0.],
            [ 0.,  0.]])
    """
    batch, single = image_batch(x, CALL)
    n = batch.shape[0]
    grid = _grid(batch, window, stride, edge, aggregate, box)
    plan = plan_fill(fill, batch, CALL)
    rng_state = occluder_rng_state(plan, key, CALL)
    optional_positive_int(chunk_size, CALL, "chunk_size")
    optional_positive_int(memory_budget, CALL, "memory_budget")
    _check_flags(absolute, progress)
    check_choice(engine, ENGINES, CALL, "engine")
    measure = chunk_size is None or engine == "auto"
    clean, work = clean_forward(
        model_fn, batch, CALL, measure=measure, layers=wants_layer_log(engine, batch, grid)
    )
    goal = as_target(target, CALL)
    goal.check(clean, CALL)
    goal = goal.resolve(clean)
    rows = len(grid) + 1
    chunk = chunk_size or _auto_chunk(work.bytes // n, batch, rows, memory_budget)
    with torch.no_grad(), progress_bar(n * rows, "occlusion", progress) as advance:
        deltas = None
        if engine != "batched":
            deltas = _incremental(
                model_fn, batch, clean, goal, plan, grid, chunk_size, rng_state, engine, advance,
                work, decision_chunk(work, batch, rows),
            )  # fmt: skip
        if deltas is None:
            deltas = torch.empty(n, len(grid), dtype=clean.dtype, device=clean.device)
            for row in range(n):
                scores = _scores(
                    model_fn, batch[row], goal.select(row), plan, row, grid, chunk, rng_state,
                    advance,
                )  # fmt: skip
                deltas[row] = scores[0] - scores[1:]
    if absolute:
        deltas = deltas.abs()
    heat = aggregate_deltas(deltas, grid, aggregate)
    return heat[0] if single else heat


def _incremental(
    model_fn, batch, clean, goal, plan, grid, chunk_size, rng_state, engine, advance, work, chunk
) -> Tensor | None:
    """Deltas from the incremental engine, or None where the batched engine must run."""
    from ._incremental import run_incremental

    return run_incremental(
        model_fn, batch, clean, goal, plan, grid, chunk_size,
        noise_streams(plan, rng_state, batch, grid), engine, advance, work, chunk,
    )  # fmt: skip


def occluder_rng_state(plan: FillPlan, key: Key | None, call: str) -> Tensor | None:
    """The generator state that occluder noise and fill functions start from; None if unused."""
    if not (plan.is_random or key is not None):
        return None
    return generator(key, call, "fills.uniform" if plan.is_random else "key").get_state()


def noise_streams(
    plan: FillPlan, rng_state: Tensor | None, batch: Tensor, grid: Grid
) -> Callable[[], _NoiseStream] | None:
    """A maker of fresh occluder-noise streams, one per image row; None without noise."""
    noise = plan.noise
    if noise is None or rng_state is None:
        return None
    shape = (batch.shape[1], *grid.window)
    return lambda: _NoiseStream(rng_state, shape, noise.lo, noise.hi, batch)


def _grid(batch: Tensor, window, stride, edge, how, box) -> Grid:
    _, _, height, width = batch.shape
    win = positive_pair(window, CALL, "window")
    step = win if stride is None else positive_pair(stride, CALL, "stride")
    check_choice(edge, EDGES, CALL, "edge")
    check_choice(how, AGGREGATES, CALL, "aggregate")
    if box is None and (win[0] > height or win[1] > width):
        raise fail(
            CALL,
            "window",
            f"the window {win} is larger than the image {describe(batch)} (H={height}, W={width})",
            f"use a window of at most ({height}, {width})",
        )
    y0, x0, y1, x1 = _box(box, height, width)
    rows = axis(height, win[0], step[0], edge, y0, y1, box is not None)
    cols = axis(width, win[1], step[1], edge, x0, x1, box is not None)
    if rows is None or cols is None:
        raise fail(
            CALL,
            "window",
            f"no window of size {win} fits the box {box} inside the image {describe(batch)}",
            "use a smaller window, a larger box, or edge='cover'",
        )
    return Grid(rows, cols, win)


def _box(box, height: int, width: int) -> tuple[int, int, int, int]:
    if box is None:
        return 0, 0, height, width
    if (
        not isinstance(box, (tuple, list))
        or len(box) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)
    ):
        raise fail(
            CALL, "box", f"got {describe(box)}", "pass (y0, x0, y1, x1) as four ints, half-open"
        )
    y0, x0, y1, x1 = box
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise fail(
            CALL,
            "box",
            f"the box {tuple(box)} is empty or reaches outside the image (H={height}, W={width})",
            f"use 0 <= y0 < y1 <= {height} and 0 <= x0 < x1 <= {width} (clip RF boxes to it)",
        )
    return y0, x0, y1, x1


def _check_flags(absolute: object, progress: object) -> None:
    if not isinstance(absolute, bool):
        raise fail(CALL, "absolute", f"got {describe(absolute)}", "pass True or False")
    if progress is not None and not isinstance(progress, bool):
        raise fail(CALL, "progress", f"got {describe(progress)}", "pass True, False or None (auto)")


def _auto_chunk(activations: int, batch: Tensor, rows: int, budget: int | None) -> int:
    image_bytes = batch[0].nbytes
    if activations == 0:  # the forward pass could not be measured: assume a deep net
        activations = 64 * image_bytes
    # Each occluded image also exists as the mask, the fill and the composite.
    per_row = activations + 4 * image_bytes
    budget = budget or default_budget(batch.device)
    chunk = auto_chunk(activations, per_row, budget, batch.device, rows)
    # Spread rows evenly over the calls so that the padding of the last call stays small.
    return math.ceil(rows / math.ceil(rows / chunk))


def wants_layer_log(engine: str, images: Tensor, grid: Grid) -> bool:
    """Whether occlusion's clean pass should log the model's layers for ``"auto"``'s gate.

    The log costs about 14 us per operator (0.2 ms on the shapes model, 1.1 ms on ResNet18), paid
    even where the run ends batched; it is taken only where there are `LOGGED_OCCLUDERS`
    occluded images or more, so that it costs under 4% of the smallest models' batched runs.
    """
    return engine == "auto" and images.shape[0] * len(grid) >= LOGGED_OCCLUDERS


def decision_chunk(work: ForwardWork, batch: Tensor, rows: int) -> int:
    """The batched engine's images per call as ``engine="auto"`` assumes them: the automatic
    chunk under the default budget's 1 GiB cap, so that the choice of engine depends on the
    model, the images and the occluders only, never on `chunk_size`, `memory_budget` or the
    memory free at the time."""
    return _auto_chunk(work.bytes // batch.shape[0], batch, rows, DECISION_BUDGET)


def _window(height: int, width: int, bounds: Tensor, device: torch.device) -> Tensor:
    """``[H, W]`` bool mask of the window ``bounds = (y0, x0, y1, x1)``."""
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    rows = (ys >= bounds[0]) & (ys < bounds[2])
    cols = (xs >= bounds[1]) & (xs < bounds[3])
    return rows[:, None] & cols[None, :]


def _occlude(image: Tensor, fill: Tensor, bounds: Tensor) -> Tensor:
    """One occluded image: `fill` ([C, H, W]-broadcastable) inside ``bounds = (y0, x0, y1, x1)``."""
    _, height, width = image.shape
    return torch.where(_window(height, width, bounds, image.device), fill, image)


def _place(image: Tensor, patch: Tensor, bounds: Tensor) -> Tensor:
    """`_occlude` with a window-sized patch ``[C, h, w]`` whose top-left sits at ``(y0, x0)``."""
    _, height, width = image.shape
    _, ph, pw = patch.shape
    ys = (torch.arange(height, device=image.device) - bounds[0]).clamp(0, ph - 1)
    xs = (torch.arange(width, device=image.device) - bounds[1]).clamp(0, pw - 1)
    return _occlude(image, patch[:, ys][:, :, xs], bounds)


class _NoiseStream:
    """Occluder noise in draw order, in fixed blocks: the same numbers for any chunking."""

    def __init__(self, state: Tensor, shape: tuple[int, ...], lo: float, hi: float, like: Tensor):
        self.rng = torch.Generator()
        self.rng.set_state(state)
        self.shape, self.lo, self.hi, self.like = shape, lo, hi, like
        self.buffer = torch.empty(0, *shape, dtype=torch.float64)

    def take(self, count: int) -> Tensor:
        while self.buffer.shape[0] < count:
            block = torch.rand(_NOISE_BLOCK, *self.shape, generator=self.rng, dtype=torch.float64)
            self.buffer = torch.cat([self.buffer, self.lo + (self.hi - self.lo) * block])
        out, self.buffer = self.buffer[:count], self.buffer[count:]
        return out.to(dtype=self.like.dtype, device=self.like.device)


class _VmapUnsupported(Exception):
    pass


def _scores(
    model_fn: ModelFn,
    image: Tensor,
    goal: TargetBase,
    plan: FillPlan,
    row: int,
    grid: Grid,
    chunk: int,
    rng_state: Tensor | None,
    advance: Callable[[int], None],
) -> Tensor:
    """Scores of the clean image (index 0) and of every occluded image (1..P), ``[1 + P]``.

    Rows run through ``vmap`` in equal chunks. A model that ``vmap`` cannot run (``.item()``,
    data-dependent branches) is evaluated one image per call instead, with a logged warning:
    slower, and still exact, since every row, the clean one included, then takes the same path.
    """
    rows = len(grid) + 1

    def score(occluded: Tensor) -> Tensor:
        return goal(model_fn(occluded.unsqueeze(0)))[0]

    def vmapped(images: Tensor) -> Tensor:
        try:
            return quiet_vmap(score)(images)
        except OcclensError:
            raise
        except RuntimeError as error:
            raise _VmapUnsupported(str(error).splitlines()[0]) from error

    def one_by_one(images: Tensor) -> Tensor:
        try:
            return torch.stack([score(occluded) for occluded in images])
        except OcclensError:
            raise
        except (RuntimeError, TypeError, IndexError, ValueError) as error:
            raise fail(
                CALL,
                "model_fn",
                f"the model raised {type(error).__name__} on an occluded image "
                f"{describe(images[0])}: {str(error).splitlines()[0]}",
                "make the model accept any image of the clean image's shape",
            ) from error

    def run(evaluate: Callable[[Tensor], Tensor], size: int) -> Tensor:
        out = []
        for images, real in _occluded_chunks(image, plan, row, grid, size, rng_state):
            out.append(evaluate(images[:real] if size == 1 else images).double())
            advance(real)
        return torch.cat(out)[:rows]

    try:
        return run(vmapped, chunk)
    except _VmapUnsupported as error:
        log.warning(
            "occlens: torch.func.vmap cannot run this model (%s); evaluating one occluded image "
            "per call instead, which is slower. Remove .item() and data-dependent branches from "
            "the forward pass to vectorise.",
            error,
        )
        return run(one_by_one, 1)


def _occluded_chunks(
    image: Tensor, plan: FillPlan, row: int, grid: Grid, chunk: int, rng_state: Tensor | None
) -> Iterator[tuple[Tensor, int]]:
    """``(images [chunk, C, H, W], real rows)``: the clean image, then the occluded ones in order.

    The last chunk is padded with clean rows, so every chunk has the same size.
    """
    bounds = torch.cat([torch.zeros(1, 4, dtype=torch.long), grid.bounds()]).to(image.device)
    rows = bounds.shape[0]
    calls = math.ceil(rows / chunk)
    order = torch.zeros(calls * chunk, dtype=torch.long, device=image.device)
    order[:rows] = torch.arange(rows)
    noise = None
    if plan.noise is not None and rng_state is not None:
        shape = (image.shape[0], *grid.window)
        noise = _NoiseStream(rng_state, shape, plan.noise.lo, plan.noise.hi, image)
    rng = None
    if plan.function is not None and rng_state is not None:
        rng = torch.Generator()
        rng.set_state(rng_state)
    for start in range(0, calls * chunk, chunk):
        index = order[start : start + chunk]
        part = bounds[index]
        if plan.static is not None:
            images = vmap(_occlude, in_dims=(None, None, 0))(image, plan.image(row), part)
        elif noise is not None:
            occluders = index > 0
            patches = image.new_zeros(chunk, image.shape[0], *grid.window)
            patches[occluders] = noise.take(int(occluders.sum()))
            images = vmap(_place, in_dims=(None, 0, 0))(image, patches, part)
        else:
            images = _custom_fill(plan, image, part, index, rng)
        yield images, min(chunk, rows - start)


def _custom_fill(plan: FillPlan, image: Tensor, part: Tensor, index: Tensor, rng) -> Tensor:
    _, height, width = image.shape
    images = []
    for bounds, which in zip(part, index.tolist(), strict=True):
        if which == 0:
            images.append(image)
            continue
        filled = plan.function(image, _window(height, width, bounds, image.device), rng)  # type: ignore[misc]
        if not isinstance(filled, Tensor) or filled.shape != image.shape:
            raise fail(
                CALL,
                "fill",
                f"the fill function returned {describe(filled)} for an image {describe(image)}",
                "return the occluded image with the same shape [C, H, W]",
            )
        images.append(filled.to(image.dtype))
    return torch.stack(images)
