"""The incremental occlusion engine: each layer computed only where an occluder changes it.

The clean image runs through the model once. For a chunk of occluders, every patch node (see
`occlens._incremental_graph`) is computed on its patch only: a window layer gathers its read-in
region, the patch plus its halo, from the clean activation of its input (padded once) with the
input's patch written over it, and runs its kernel on all occluders of the chunk at once. At the
first layer that mixes all positions (flatten, linear, a global statistic, anything the rules do
not cover), patches are pasted into copies of the clean activation and the rest of the model runs
densely, under ``vmap``, one image per occluder as the batched engine does. A unit target at a
spatial layer is read straight from the last patch, and only the region its receptive field
needs is computed: occluders outside it are never evaluated and give exactly 0.

`occlusion(..., engine="incremental")` runs it; ``engine="auto"`` runs it where the cost model
(`plan`) predicts it is the faster exact engine. A model it cannot run exactly falls back to the
batched engine, with the reason logged at debug level on the ``"occlens"`` logger and returned
by `explain_engine`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from ._batching import quiet_vmap
from ._fills import FillPlan
from ._grid import Grid
from ._incremental_bound import patch_work
from ._incremental_geometry import Geometry, needed_regions, propagate
from ._incremental_graph import (
    Graph,
    GraphFailed,
    Step,
    Unsupported,
    Window,
    analyse,
    complete_dense,
    run_node,
)
from ._memory import ForwardWork
from ._targets import TargetBase, Unit

__all__ = [
    "EnginePlan",
    "Unsupported",
    "explain_engine",
    "incremental_deltas",
    "plan",
    "run_incremental",
]

log = logging.getLogger("occlens")

# Cost model: seconds per FLOP of a conv or matrix product, per byte gathered or pasted, per
# patch step and chunk (Python and dispatch), per graph node (tracing and the clean pass), per
# op of a batched chunk under vmap, and per parameter byte read by each chunk (the dense layers
# of AlexNet and VGG16 read hundreds of MB per call, whatever its batch). Fitted (least squares
# on the log of the time) to both engines' measured times on 35 runs, on a 2-core AVX-512 CPU:
# the shapes model, tiny_cnn, AlexNet, ResNet18 and VGG16 at 32-224 px, windows 4-32 (9-12321
# occluders). The fit predicts each engine's time to a factor of 1.18 (rms of the log) and
# picks an engine within 5% of the faster one on all 35; the constants before it were off by a
# factor of 1.9 and sent AlexNet at 64 px to the batched engine, 1.6x slower than the other.
# `benchmarks/cost_model.py` measures both engines on 26 runs, refits these and scores both.
_SECONDS_PER_FLOP = 1.0 / 284e9
_SECONDS_PER_BYTE = 1.0 / 11e9
_SECONDS_PER_STEP = 89e-6
_SECONDS_PER_NODE = 605e-6
_SECONDS_PER_OP = 162e-6
_SECONDS_PER_CHUNK_PARAMETER_BYTE = 1.0 / 8.5e9
_BATCHED_CHUNK = 32
# Planning: a trace and a clean pass of one image through the traced graph, slower per FLOP
# than a batch, which reads every parameter once; the dense linear layers wait for the
# decision (`analyse(defer_dense=True)`). Fitted to the measured planning time of the same runs
# (3.3-56 ms) within 25%.
_SECONDS_TO_TRACE = 2e-3
_SECONDS_PER_TRACED_OP = 220e-6
_SECONDS_PER_CLEAN_FLOP = 1.0 / 190e9
_SECONDS_PER_PARAMETER_BYTE = 1.0 / 25e9
_PLANNING_SHARE = 20  # auto plans only when the batched run would take 20x the planning
_MARGIN = 0.9  # auto picks the incremental engine only when predicted this much faster
_SURE = 0.95  # ... and plans a short run where the layer log predicts this much more
_CHUNK_BYTES = 24 << 20  # a chunk's largest read-in tensor


@dataclass(frozen=True)
class EnginePlan:
    """What ``engine="auto"`` would run, and why.

    `engine` is ``"incremental"`` or ``"batched"``; `reason` says why the batched engine was
    chosen (empty otherwise). `flops_full` and `flops_incremental` are the FLOPs per occluder of a
    full re-inference and of the incremental engine (patch layers plus the dense tail);
    `live` is how many occluders the incremental engine evaluates (the others give exactly 0);
    `cost_batched` and `cost_incremental` are the cost model's predicted seconds.
    """

    engine: str
    reason: str
    flops_full: float = 0.0
    flops_incremental: float = 0.0
    positions: int = 0
    live: int = 0
    cost_batched: float = 0.0
    cost_incremental: float = 0.0


@dataclass
class _Patch:
    """Values of a node on its patch, ``[N, C, h, w]``, whose top-left unit is ``(oy, ox)``."""

    values: Tensor
    oy: Tensor
    ox: Tensor


def _unit_of(goal: TargetBase) -> tuple[int, int, int] | None:
    if isinstance(goal, Unit) and all(isinstance(i, int) for i in (goal.channel, goal.y, goal.x)):
        return goal.channel, goal.y, goal.x  # type: ignore[return-value]
    return None


def _prepare(g: Graph, bounds: Tensor, goal: TargetBase, tau: float | None) -> Geometry:
    """The boxes of occluders `bounds` ``[P, 4]`` through `g`, for `goal`'s needed regions."""
    unit = _unit_of(goal)
    return propagate(g, bounds, needed_regions(g, None if unit is None else unit[1:]), tau)


@dataclass(frozen=True)
class _Work:
    """What each engine does for one image: the cost model's inputs."""

    positions: int
    live: int
    flops_full: float  # per occluder, a full re-inference
    flops_patch: float  # per live occluder, the incremental engine
    moved: float  # bytes gathered, written and pasted per live occluder
    activations: float  # bytes written by the layers of a full re-inference
    image_bytes: int
    steps: int  # patch nodes
    nodes: int  # graph nodes
    chunks: int  # calls of the incremental engine
    batched_chunk: int  # images per call of the batched engine
    parameters: int  # bytes of the model's parameters and buffers

    def batched(self) -> float:
        return _batched_seconds(
            self.positions,
            self.flops_full,
            self.image_bytes,
            self.activations,
            self.nodes,
            self.batched_chunk,
            self.parameters,
        )

    def incremental(self) -> float:
        return (
            self.live * (self.flops_patch * _SECONDS_PER_FLOP + self.moved * _SECONDS_PER_BYTE)
            + self.chunks * self.steps * _SECONDS_PER_STEP
            + self.chunks * self.parameters * _SECONDS_PER_CHUNK_PARAMETER_BYTE
            + self.nodes * _SECONDS_PER_NODE
            + self.flops_full * _SECONDS_PER_FLOP  # the clean pass
        )


def _batched_seconds(
    positions: int,
    flops: float,
    image_bytes: float,
    activations: float,
    ops: int,
    chunk: int,
    parameters: int,
) -> float:
    """The batched engine's predicted seconds for one image: the clean copy and `positions`
    occluded ones through the whole model (`flops`, `activations` bytes and `ops` operators an
    image), `chunk` per call."""
    chunks = math.ceil((positions + 1) / max(chunk, 1))
    per_image = flops * _SECONDS_PER_FLOP + (4 * image_bytes + 2 * activations) * _SECONDS_PER_BYTE
    return positions * per_image + chunks * (
        ops * _SECONDS_PER_OP + parameters * _SECONDS_PER_CHUNK_PARAMETER_BYTE
    )


def _parameter_bytes(model: torch.nn.Module, *, dense_linear: bool = True) -> int:
    """Bytes of the model's parameters and buffers; without the `nn.Linear` layers' where not
    `dense_linear` (what planning's clean pass reads, see `analyse(defer_dense=True)`)."""
    return _ModelSize.of(model).parameters if dense_linear else _ModelSize.of(model).traced


@dataclass(frozen=True)
class _ModelSize:
    """From one walk over the modules: bytes of all parameters and buffers, of those outside
    the `nn.Linear` layers, and the number of leaf modules."""

    parameters: int
    traced: int
    leaves: int

    @staticmethod
    def of(model: torch.nn.Module) -> _ModelSize:
        total = traced = leaves = 0
        for module in model.modules():  # the dicts directly: 4x faster, auto's gate reads this
            own = (*module._parameters.values(), *module._buffers.values())
            size = sum(t.nbytes for t in own if t is not None)
            total += size
            traced += 0 if type(module) is torch.nn.Linear else size
            leaves += all(child is None for child in module._modules.values())
        return _ModelSize(total, traced, leaves)


def _work(g: Graph, geo: Geometry, image: Tensor, chunk: int, batched_chunk: int) -> _Work:
    """The cost model's inputs, patch work averaged over the chunks the engine runs."""
    item = image.element_size()
    live = int(geo.live.sum())
    chunks = geo.chunks(chunk)
    share = torch.tensor([len(c) for c in chunks], dtype=torch.float64) / max(live, 1)
    flops = moved = activations = 0.0
    for node, (h, w) in geo.fitted_sizes(chunks).items():
        step = g.steps[node]
        h, w = h.double(), w.double()
        activations += step.channels * math.prod(step.size) * item
        flops += step.flops * float(share @ (h * w))
        moved += 2.0 * step.channels * item * float(share @ (h * w))
        if step.kind == "window" and step.window is not None:
            src = g.steps[step.sources[0]]
            reads = step.window.read(0, h) * step.window.read(1, w)
            moved += 2.0 * src.channels * item * float(share @ reads)
        elif step.kind == "merge":
            moved += 2.0 * step.channels * item * len(step.sources) * float(share @ (h * w))
    flops += g.dense_flops
    for node in g.boundary:
        if node in geo.size:
            moved += 2.0 * g.steps[node].channels * math.prod(g.steps[node].size) * item
    return _Work(
        positions=geo.live.numel(),
        live=live,
        flops_full=g.full_flops + g.dense_flops,
        flops_patch=flops,
        moved=moved,
        activations=activations,
        image_bytes=image.numel() * item,
        steps=len(geo.size),
        nodes=len(g.nodes),
        chunks=max(len(chunks), 1),
        batched_chunk=batched_chunk,
        parameters=_parameter_bytes(g.root),
    )


def _chunk_for(g: Graph, geo: Geometry, image: Tensor, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return chunk_size
    largest = 1
    for node, (h, w) in geo.size.items():
        step = g.steps[node]
        channels = g.steps[step.sources[0]].channels if step.sources else step.channels
        if step.kind == "window" and step.window is not None:
            h, w = step.window.read(0, h), step.window.read(1, w)
        largest = max(largest, h * w * channels)
    for node in g.boundary:
        largest = max(largest, g.steps[node].channels * math.prod(g.steps[node].size))
    return _chunk_of(largest, image.element_size())


def _chunk_of(largest: int, item: int) -> int:
    """Occluders per chunk whose largest read-in tensor has `largest` elements per occluder."""
    return int(min(256, max(4, _CHUNK_BYTES // (max(largest, 1) * item))))


def _planning_analysis(model_fn: object, image: Tensor) -> Graph:
    try:
        return analyse(model_fn, image, defer_dense=True)  # type: ignore[arg-type]
    except GraphFailed:  # the dense head could not take a stand-in: analyse it for real
        return analyse(model_fn, image)  # type: ignore[arg-type]


def plan(
    model_fn: object,
    image: Tensor,
    goal: TargetBase,
    grid: Grid,
    chunk_size: int | None = None,
    graph: Graph | None = None,
    batched_chunk: int = _BATCHED_CHUNK,
) -> tuple[EnginePlan, Graph | None]:
    """What ``engine="auto"`` runs for `image` ``[1, C, H, W]`` (the first of the batch), whose
    batched engine would take `batched_chunk` images per call.

    `graph` is `image`'s analysis, where the caller has it already; otherwise the analysis made
    here defers the dense linear layers (`analyse`), and `complete_dense` must run before the
    graph is.
    """
    try:
        g = graph if graph is not None else _planning_analysis(model_fn, image)
    except Unsupported as error:
        return EnginePlan("batched", str(error), positions=len(grid)), None
    return _decide(g, image, goal, grid, chunk_size, batched_chunk)[0], g


def _decide(
    g: Graph,
    image: Tensor,
    goal: TargetBase,
    grid: Grid,
    chunk_size: int | None,
    batched_chunk: int,
) -> tuple[EnginePlan, Geometry]:
    """`plan` on the analysis `g`; with the geometry, which the incremental engine reuses."""
    geo = _prepare(g, grid.bounds().to(image.device), goal, None)
    work = _work(g, geo, image, _chunk_for(g, geo, image, chunk_size), batched_chunk)
    batched, incremental = work.batched(), work.incremental()
    engine, reason = "incremental", ""
    if incremental > _MARGIN * batched:
        engine = "batched"
        reason = (
            f"the cost model predicts {incremental:.3g} s incremental vs {batched:.3g} s batched"
        )
    plan = EnginePlan(
        engine,
        reason,
        work.flops_full,
        work.flops_patch,
        len(grid),
        work.live,
        batched,
        incremental,
    )
    return plan, geo


# ---------------------------------------------------------------- gathering


def _rows(start: Tensor, count: int) -> Tensor:
    return start[:, None] + torch.arange(count, device=start.device)


def _crop(source: Tensor, oy: Tensor, ox: Tensor, h: int, w: int) -> Tensor:
    """``[N, C, h, w]``: the window at ``(oy[n], ox[n])`` of `source` ``[C, H, W]``."""
    rows, cols = _rows(oy, h), _rows(ox, w)
    return source[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)


class _Clean:
    """Clean activations, padded and laid out channels-last, cached per padding."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.cache: dict[tuple, tuple[Tensor, int]] = {}

    def padded(self, node: fx.Node, pads: tuple[int, int, int, int], value: float):
        key = (node, pads, value)
        if key not in self.cache:
            clean = self.g.clean[node]
            top, bottom, left, right = pads
            padded = F.pad(clean[None], (left, right, top, bottom), value=value)[0]
            width = padded.shape[2]
            self.cache[key] = (
                padded.permute(1, 2, 0).reshape(-1, padded.shape[0]).contiguous(),
                width,
            )
        return self.cache[key]


def _read(
    patch: _Patch,
    flat: Tensor,
    width: int,
    pads: tuple[int, int],
    start_y: Tensor,
    start_x: Tensor,
    size: tuple[int, int],
) -> Tensor:
    """``[N, C, R, Rw]``: the occluded map (clean `flat` with the patch over it) read at
    ``(start_y, start_x)`` in padded coordinates, `pads` = (top, left).

    The clean window is gathered with one ``index_select`` and the patch copied over it with one
    ``index_copy_``, both over rows of C channels (channels-last).
    """
    n, channels, h, w = patch.values.shape
    rows, cols = _rows(start_y, size[0]), _rows(start_x, size[1])
    index = (rows[:, :, None] * width + cols[:, None, :]).reshape(-1)
    out = flat.index_select(0, index)
    py = _rows(patch.oy + pads[0] - start_y, h)  # the window row of each patch row
    px = _rows(patch.ox + pads[1] - start_x, w)
    ok = ((py >= 0) & (py < size[0]))[:, :, None] & ((px >= 0) & (px < size[1]))[:, None, :]
    base = (torch.arange(n, device=py.device) * (size[0] * size[1]))[:, None, None]
    target = (base + py[:, :, None] * size[1] + px[:, None, :]).reshape(-1)
    values = patch.values.permute(0, 2, 3, 1).reshape(-1, channels)
    if bool(ok.all()):
        out.index_copy_(0, target, values)
    else:
        keep = ok.reshape(-1).nonzero()[:, 0]
        out.index_copy_(0, target[keep], values.index_select(0, keep))
    return out.view(n, size[0], size[1], channels).permute(0, 3, 1, 2)


def _paste(clean: Tensor, patch: _Patch) -> Tensor:
    """``[N, C, H, W]``: copies of `clean` ``[C, H, W]`` with each occluder's patch written in."""
    n, _, h, w = patch.values.shape
    if (h, w) == tuple(clean.shape[1:]):
        return patch.values
    out = clean.expand(n, *clean.shape).clone()
    rows, cols = _rows(patch.oy, h), _rows(patch.ox, w)
    who = torch.arange(n, device=rows.device)[:, None, None]
    out[who, :, rows[:, :, None], cols[:, None, :]] = patch.values.permute(0, 2, 3, 1)
    return out


# ---------------------------------------------------------------- one chunk


class _Runner:
    """Runs chunks of occluders of one image through the patch nodes and the dense tail."""

    def __init__(
        self, g: Graph, geo: Geometry, goal: TargetBase, image: Tensor, fill: Callable
    ) -> None:
        self.g, self.geo, self.goal, self.image, self.fill = g, geo, goal, image, fill
        self.clean = _Clean(g)
        self.order = [n for n in g.nodes if n in geo.size]
        last: dict[fx.Node, int] = {}
        for i, node in enumerate(self.order):
            for source in g.steps[node].sources:
                last[source] = i
        self.last = last
        self.unit = _unit_of(goal) if g.kinds[g.output] == "patch" else None
        self.divisors: dict[fx.Node, Tensor] = {}

    def patches(self, geo: Geometry, bounds: Tensor, index: Tensor) -> dict[fx.Node, _Patch]:
        state: dict[fx.Node, _Patch] = {}
        keep = set(self.g.boundary)
        for i, node in enumerate(self.order):
            step = self.g.steps[node]
            h, w = geo.size[node]
            oy, ox = geo.oy[node], geo.ox[node]
            if step.kind == "input":
                values = self.fill(oy, ox, h, w, bounds, index)
            elif step.kind == "pointwise":
                source = step.sources[0]
                owned = self.g.steps[source].kind in ("window", "merge") and source not in keep
                if step.inplace is not None and owned and self.last.get(source) == i:
                    values = step.inplace(state[source].values)
                else:
                    values = step.apply(state[source].values)  # type: ignore[misc]
            elif step.kind == "window":
                values = self._window(step, state[step.sources[0]], oy, ox, h, w)
            else:
                values = self._merge(step, state, oy, ox, h, w)
            state[node] = _Patch(values, oy, ox)
            for source in step.sources:
                if self.last.get(source) == i and source not in keep:
                    del state[source]
        return state

    def _window(self, step: Step, src: _Patch, oy, ox, h, w) -> Tensor:
        win: Window = step.window  # type: ignore[assignment]
        source = step.sources[0]
        pads = (win.lo[0], win.hi[0], win.lo[1], win.hi[1])
        flat, width = self.clean.padded(source, pads, step.pad_value)
        size = (win.read(0, h), win.read(1, w))
        start_y, start_x = oy * win.s[0], ox * win.s[1]
        full = tuple(self.g.steps[source].size)
        sh, sw = src.values.shape[2:]
        padded_size = (full[0] + pads[0] + pads[1], full[1] + pads[2] + pads[3])
        if (sh, sw) == full and size == padded_size:
            u = F.pad(src.values, (pads[2], pads[3], pads[0], pads[1]), value=step.pad_value)
        else:
            u = _read(src, flat, width, (win.lo[0], win.lo[1]), start_y, start_x, size)
        out = step.apply(u)  # type: ignore[misc]
        if step.divisor is not None:
            out = out / _crop(step.divisor[None], oy, ox, h, w)
        return out

    def _merge(self, step: Step, state, oy, ox, h, w) -> Tensor:
        parts = []
        for source in step.sources:
            src = state[source]
            if (
                src.values.shape[2:] == (h, w)
                and torch.equal(src.oy, oy)
                and torch.equal(src.ox, ox)
            ):
                parts.append(src.values)
                continue
            flat, width = self.clean.padded(source, (0, 0, 0, 0), 0.0)
            parts.append(_read(src, flat, width, (0, 0), oy, ox, (h, w)))
        return step.apply(*parts)  # type: ignore[misc]

    def scores(self, state: dict[fx.Node, _Patch]) -> Tensor:
        g = self.g
        if self.unit is not None:
            channel, y, x = self.unit
            out = state[g.output]
            h, w = out.values.shape[2:]
            ry, rx = y - out.oy, x - out.ox
            inside = (ry >= 0) & (ry < h) & (rx >= 0) & (rx < w)
            values = out.values[:, channel]
            picked = values[torch.arange(len(ry)), ry.clamp(0, h - 1), rx.clamp(0, w - 1)]
            clean = g.clean[g.output][channel, y, x]  # type: ignore[index]
            return torch.where(inside, picked, clean)
        pasted = [
            _paste(g.clean[n], state[n]).contiguous()[:, None]  # type: ignore[arg-type]
            for n in g.boundary
        ]
        goal, boundary, dense, root = self.goal, g.boundary, g.dense, g.root

        def tail(*values: Tensor) -> Tensor:
            env: dict[fx.Node, object] = dict(zip(boundary, values, strict=True))
            lookup = _Lookup(env, g.clean)
            for node in dense:
                env[node] = run_node(node, lookup, root)
            return goal(env[g.output])[0]  # type: ignore[arg-type]

        try:
            return quiet_vmap(tail)(*pasted)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise Unsupported(f"vmap cannot run the model's dense part: {first}") from error


class _Lookup(dict):
    """Values of the chunk, then the clean constants."""

    def __init__(self, env: dict, clean: dict) -> None:
        super().__init__()
        self.env, self.clean = env, clean

    def __getitem__(self, node):  # type: ignore[override]
        if node in self.env:
            return self.env[node]
        return self.clean[node]


# ---------------------------------------------------------------- fills


def _static_fill(image: Tensor, fill: Tensor) -> Callable:
    """Patch values of the input for a fixed fill image (a number, per channel, an image)."""
    full = fill.expand_as(image).contiguous()

    def values(oy, ox, h, w, bounds: Tensor, index: Tensor) -> Tensor:
        clean = _crop(image, oy, ox, h, w)
        filled = _crop(full, oy, ox, h, w)
        return torch.where(_inside(oy, ox, h, w, bounds), filled, clean)

    return values


def _inside(oy, ox, h, w, bounds: Tensor) -> Tensor:
    rows, cols = _rows(oy, h), _rows(ox, w)
    ry = (rows >= bounds[:, 0:1]) & (rows < bounds[:, 2:3])
    rx = (cols >= bounds[:, 1:2]) & (cols < bounds[:, 3:4])
    return (ry[:, :, None] & rx[:, None, :])[:, None]


class _NoiseByIndex:
    """Noise of occluders by index, taken from the batched engine's stream in occluder order.

    Indices must come in increasing order across calls (the chunks of live occluders do).
    """

    def __init__(self, stream) -> None:
        self.stream = stream
        self.start = 0
        self.buffer: Tensor | None = None

    def __call__(self, index: Tensor) -> Tensor:
        have = 0 if self.buffer is None else self.buffer.shape[0]
        upto = int(index[-1]) + 1
        if upto > self.start + have:
            more = self.stream.take(upto - self.start - have)
            self.buffer = more if self.buffer is None else torch.cat([self.buffer, more])
        lo = int(index[0])
        buffer = self.buffer[lo - self.start :]  # type: ignore[index]
        self.buffer, self.start = buffer, lo
        return buffer[index - lo]


def _noise_fill(image: Tensor, stream, window: tuple[int, int]) -> Callable:
    """Patch values for fresh noise per occluder, drawn in occluder order as the batched engine."""
    noise_for = _NoiseByIndex(stream)

    def values(oy, ox, h, w, bounds: Tensor, index: Tensor) -> Tensor:
        noise = noise_for(index)  # [N, C, wh, ww], top-left at (y0, x0)
        ry = (_rows(oy, h) - bounds[:, 0:1]).clamp(0, window[0] - 1)
        rx = (_rows(ox, w) - bounds[:, 1:2]).clamp(0, window[1] - 1)
        who = torch.arange(len(index))[:, None, None]
        placed = noise[who, :, ry[:, :, None], rx[:, None, :]].permute(0, 3, 1, 2)
        clean = _crop(image, oy, ox, h, w)
        return torch.where(_inside(oy, ox, h, w, bounds), placed, clean)

    return values


# ---------------------------------------------------------------- entry point


def incremental_deltas(
    g: Graph,
    image: Tensor,
    goal: TargetBase,
    fill: FillPlan,
    row: int,
    grid: Grid,
    chunk_size: int | None,
    noise,
    advance: Callable[[int], None],
    tau: float | None = None,
    which: Tensor | None = None,
    geometry: Geometry | None = None,
) -> Tensor:
    """Deltas ``score(clean) - score(occluded)`` of every occluder of `grid`, float64 ``[P]``.

    `g` is the analysed model for `image` ``[1, C, H, W]``; `noise` the batched engine's noise
    stream for uniform fills (None otherwise). With `which` (sorted indices into the grid), only
    those occluders are evaluated, and ``[len(which)]`` deltas are returned. `tau` turns on
    projective-field thresholding (approximate). `geometry`, the exact geometry of the whole
    grid for this goal where the caller has it (`_decide`), saves propagating the boxes again.
    Raises `Unsupported` when the dense part cannot be vectorised.
    """
    bounds = grid.bounds().to(image.device)
    ids = torch.arange(len(grid)) if which is None else which
    bounds = bounds[ids]
    geo = geometry if geometry is not None else _prepare(g, bounds, goal, tau)
    chunk = _chunk_for(g, geo, image, chunk_size)
    if fill.static is not None:
        values = _static_fill(image[0], fill.image(row).to(image.dtype))
    elif noise is not None:
        values = _noise_fill(image[0], noise, grid.window)
    else:
        raise Unsupported("a fill function can change pixels outside the window")
    runner = _Runner(g, geo, goal, image, values)
    with torch.no_grad():
        clean_out = g.clean[g.output]
        if g.kinds[g.output] == "patch":
            clean_out = clean_out[None]  # type: ignore[index]
        clean_score = goal(clean_out)[0].double()  # type: ignore[arg-type]
        deltas = torch.zeros(len(ids), dtype=torch.float64, device=image.device)
        advance(1 + len(ids) - int(geo.live.sum()))
        for index in geo.chunks(chunk, in_order=noise is not None):
            part = geo.select(index)
            state = runner.patches(part, bounds[index], ids[index])
            deltas[index] = clean_score - runner.scores(state).double()
            advance(len(index))
    return deltas


def run_incremental(
    model_fn: object,
    batch: Tensor,
    clean: Tensor,
    goal: TargetBase,
    fill: FillPlan,
    grid: Grid,
    chunk_size: int | None,
    noise_for_row: Callable[[], object] | None,
    engine: str,
    advance: Callable[[int], None],
    work: ForwardWork | None = None,
    chunk: int = _BATCHED_CHUNK,
) -> Tensor | None:
    """Deltas ``[B, P]`` by the incremental engine, or None where the batched engine must run.

    With ``engine="auto"`` the cost model decides; either way a model the engine cannot run
    exactly gives None, with the reason logged at debug level. `work`, what the clean forward
    pass of `batch` did, and `chunk`, the batched engine's images per call as the decision
    assumes them (`occlens._occlusion.decision_chunk`), let ``"auto"`` skip planning for runs
    so short that tracing the model would cost more than it could save. The decision assumes
    the automatic chunks of both engines, so `chunk_size` never changes the engine.
    """
    try:
        if fill.static is None and fill.noise is None:
            raise Unsupported("a fill function can change pixels outside the window")
        if engine == "auto":
            too_short = _too_short_to_plan(model_fn, batch, grid, work, chunk)
            if too_short:
                log.debug("occlens: occlusion runs the batched engine: %s", too_short)
                return None
        out = torch.empty(batch.shape[0], len(grid), dtype=clean.dtype, device=clean.device)
        g = geo = None
        for row in range(batch.shape[0]):
            image = batch[row : row + 1]
            target = goal.select(row)
            if row == 0 and engine == "auto":
                g = _planning_analysis(model_fn, image)
                decision, geo = _decide(g, image, target, grid, None, chunk)
                if decision.engine != "incremental":
                    log.debug("occlens: occlusion runs the batched engine: %s", decision.reason)
                    return None
                complete_dense(g)
            else:  # the first image's trace serves the others
                g, geo = analyse(model_fn, image, like=g), None  # type: ignore[arg-type]
            _check_clean(g, clean[row : row + 1])
            noise = noise_for_row() if noise_for_row is not None else None
            deltas = incremental_deltas(
                g, image, target, fill, row, grid, chunk_size, noise, advance, geometry=geo
            )
            out[row] = deltas.to(out.dtype)
        return out
    except Unsupported as error:
        log.debug("occlens: the incremental engine falls back to the batched engine: %s", error)
        return None


def _too_short_to_plan(
    model_fn: object,
    images: Tensor,
    grid: Grid,
    work: ForwardWork | None,
    chunk: int,
) -> str:
    """Why planning would not pay for itself here, or "" where it may.

    Planning costs a trace and a clean pass. ``"auto"`` plans where the whole batched run is
    predicted to take at least `_PLANNING_SHARE` times that, so it never loses more than
    1/`_PLANNING_SHARE` of the batched time to a plan that ends batched, or where the clean
    pass's layer log (`occlens._incremental_bound`, taken where `wants_layer_log` says) shows
    that the plan ends incremental: its estimate is at least 0.97 of the plan's (the tests check
    it on the reference architectures and generated conv nets), so a log estimate under `_SURE`
    of the plan's own bound leaves the plan no room to choose batched and waste the trace, which
    on a short run can cost 40% of the batched time. Everything is predicted from counted
    work (FLOPs, bytes, operators, layers), never from timings, so the same call always runs the
    same engine and gives the same numbers.
    """
    if not isinstance(model_fn, torch.nn.Module):
        return ""  # planning gives up at once, before tracing
    if work is None or not work.measured:
        return ""
    count = images.shape[0]
    flops, activations = work.flops / count, work.bytes / count
    size = _ModelSize.of(model_fn)
    batched = count * _batched_seconds(
        len(grid), flops, images[0].nbytes, activations, work.ops, chunk, size.parameters
    )
    planning = (
        _SECONDS_TO_TRACE
        + work.ops * _SECONDS_PER_TRACED_OP
        + flops * _SECONDS_PER_CLEAN_FLOP
        + size.traced * _SECONDS_PER_PARAMETER_BYTE
    )
    if batched >= _PLANNING_SHARE * planning:
        return ""
    if _logged_incremental(images, grid, work, chunk, size, _SURE * _MARGIN * batched):
        return ""
    return (
        f"the batched run is predicted at {batched:.2g} s, too short to pay for planning "
        f"({planning:.2g} s)"
    )


def _logged_incremental(
    images: Tensor,
    grid: Grid,
    work: ForwardWork,
    chunk: int,
    size: _ModelSize,
    limit: float,
) -> bool:
    """Whether the incremental engine's predicted seconds for `images`, from the clean pass's
    layer log, are at most `limit`. The log counts at least a graph node per leaf module (a
    dropout logs nothing); where the nodes alone pass `limit`, the patches are not worked out."""
    count = images.shape[0]
    nodes = max(len(work.layers), size.leaves) + 2
    if not work.layers or count * nodes * _SECONDS_PER_NODE > limit:
        return False
    estimate = _logged_work(work, images, grid, chunk, size)
    if estimate is None:
        return False
    return count * estimate.incremental() <= limit


def _logged_work(
    work: ForwardWork, images: Tensor, grid: Grid, chunk: int, size: _ModelSize
) -> _Work | None:
    """The cost model's inputs for one of `images` as the clean pass's layer log predicts them
    (no trace), or None where `patch_work` cannot follow the log."""
    patch = patch_work(
        work.layers,
        list(zip(grid.rows.starts, grid.rows.ends, strict=True)),
        list(zip(grid.cols.starts, grid.cols.ends, strict=True)),
    )
    if patch is None:
        return None
    return _Work(
        positions=len(grid),
        live=len(grid),
        flops_full=patch.flops_full,
        flops_patch=patch.flops,
        moved=patch.moved,
        activations=work.bytes / images.shape[0],
        image_bytes=images[0].nbytes,
        steps=patch.steps,
        nodes=max(patch.nodes, len(work.layers) + 2, size.leaves + 2),
        chunks=math.ceil(len(grid) / _chunk_of(patch.largest, images.element_size())),
        batched_chunk=chunk,
        parameters=size.parameters,
    )


def _check_clean(g: Graph, expected: Tensor) -> None:
    """The traced graph must reproduce the model's own output on the clean image."""
    ours = g.clean[g.output]
    if g.kinds[g.output] == "patch":
        ours = ours[None]  # type: ignore[index]
    if not isinstance(ours, Tensor) or ours.shape != expected.shape:
        raise Unsupported("the traced graph's output does not match the model's")
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    if not torch.allclose(ours, expected, rtol=1e-4, atol=1e-5 * max(scale, 1e-30)):
        raise Unsupported("the traced graph disagrees with the model on the clean image")


def explain_engine(
    model_fn: object,
    x: Tensor,
    target: object,
    *,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    fill: object = 0.0,
    edge: str = "fit",
    aggregate: str = "mean",
    box: tuple[int, int, int, int] | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    **_: object,
) -> EnginePlan:
    """Which engine ``occlusion(..., engine="auto")`` runs for these arguments, and why.

    Takes `occlusion`'s arguments (the first image of a batch decides) and returns an
    `EnginePlan`: the engine, the reason for the batched engine, FLOPs per occluder of both,
    how many occluders the incremental engine evaluates, and the cost model's predictions.
    `chunk_size` and `memory_budget` are checked as `occlusion` checks them, but never change
    the choice: it assumes both engines' automatic chunks under a fixed 1 GiB budget.

    >>> import torch, occlens as ol
    >>> x = torch.rand(3, 224, 224)
    >>> plan = ol.explain_engine(ol.testing.resnet18(), x, 0, window=16, stride=4)
    >>> plan.engine, plan.flops_incremental < plan.flops_full
    ('incremental', True)
    >>> ol.explain_engine(lambda t: t.mean((2, 3)), torch.rand(3, 8, 8), 0, window=2).reason
    'model_fn is not an nn.Module, so torch.fx cannot trace it'
    """
    from ._checks import clean_forward, image_batch, optional_positive_int
    from ._errors import fail
    from ._fills import plan_fill
    from ._occlusion import CALL, _grid, decision_chunk, wants_layer_log
    from ._targets import as_target

    batch, _ = image_batch(x, "explain_engine")
    optional_positive_int(chunk_size, "explain_engine", "chunk_size")
    optional_positive_int(memory_budget, "explain_engine", "memory_budget")
    grid = _grid(batch, window, stride, edge, aggregate, box)
    filling = plan_fill(fill, batch, CALL)
    if filling.static is None and filling.noise is None:
        return EnginePlan(
            "batched", "a fill function can change pixels outside the window", positions=len(grid)
        )
    image = batch[:1]
    layers = wants_layer_log("auto", batch, grid)
    clean, work = clean_forward(model_fn, batch, "explain_engine", measure=True, layers=layers)
    chunk = decision_chunk(work, batch, len(grid) + 1)
    too_short = _too_short_to_plan(model_fn, batch, grid, work, chunk)
    goal = as_target(target, "explain_engine")
    goal.check(clean, "explain_engine")
    goal = goal.resolve(clean).select(0)
    try:
        graph = analyse(model_fn, image)  # type: ignore[arg-type]
    except GraphFailed as error:
        raise fail(
            "explain_engine",
            "model_fn",
            f"the model raised {type(error.__cause__).__name__} inside the traced graph: {error}",
            "check that the model runs on this input",
        ) from error
    except Unsupported as error:
        return EnginePlan("batched", str(error), positions=len(grid))
    decision, g = plan(model_fn, image, goal, grid, None, graph, chunk)
    if g is not None:
        try:
            _check_clean(g, clean[:1])
        except Unsupported as error:
            return EnginePlan("batched", str(error), positions=len(grid))
    if too_short and g is not None:  # the model could run incremental, but auto does not plan
        return dataclasses.replace(decision, engine="batched", reason=too_short)
    return decision
